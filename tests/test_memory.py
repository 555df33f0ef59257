"""Memory economy of the train step and the checkpoints ([11]): the fused optimizer update, the LM
head by vocabulary blocks, the frozen reference read from the start params, bounded checkpoint
writes, and PyTorch kept out of the command line's process."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import ROOT, load_config, toy

from jaxpref.losses import token_logps
from jaxpref.models import lm_head
from jaxpref.models.lm_head import token_logps_by_vocab_block, vocab_block
from jaxpref.train.optim import apply_update, make_optimizer, start_schedule


def _ocfg(name="adamw", **kw):
    base = dict(name=name, learning_rate=0.05, warmup_steps=1, weight_decay=0.01, max_grad_norm=0.5,
                final_lr_fraction=0.1, lora_learning_rate=0.0)
    return ml_collections.ConfigDict({**base, **kw})


def _tree(rng, dtype=jnp.float32):
    return {"a": jnp.asarray(rng.normal(size=(3, 5)), dtype), "b": {"c": jnp.asarray(rng.normal(size=(7,)), dtype)}}


@pytest.mark.parametrize("name,clip,decay", [("adamw", 0.5, 0.01), ("adamw", float("inf"), 0.0),
                                             ("rmsprop", 0.5, 0.0), ("sgd", 2.0, 0.0)])
def test_fused_update_equals_optax_over_several_steps(name, clip, decay):
    """``Optimizer.apply`` (one fused pass per array) gives optax's update + ``apply_updates``."""
    tx = make_optimizer(_ocfg(name, max_grad_norm=clip, weight_decay=decay))
    rng = np.random.default_rng(0)
    params = _tree(rng)
    fused_p, fused_s = params, start_schedule(tx.init(params), 5)
    optax_p, optax_s = params, fused_s
    apply = jax.jit(lambda g, s, p: apply_update(tx, g, s, p, jnp.array(True)))
    for _ in range(4):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
        fused_p, fused_s, applied = apply(grads, fused_s, fused_p)
        updates, optax_s = tx.update(grads, optax_s, optax_p)
        optax_p = optax.apply_updates(optax_p, updates)
        assert bool(applied)
    for a, b in zip(jax.tree.leaves((fused_p, fused_s)), jax.tree.leaves((optax_p, optax_s))):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert jax.tree.structure(fused_s) == jax.tree.structure(optax_s)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_skipped_update_returns_params_and_moments_bit_for_bit(dtype):
    """Not ``ok``, a NaN gradient, or an update whose new params overflow (a huge learning rate):
    every array of params and optimizer state comes back unchanged, counts included."""
    rng = np.random.default_rng(1)
    params = _tree(rng, dtype)
    for name, lr, poison, ok in [("adamw", 0.05, False, False), ("adamw", 0.05, True, True),
                                 ("sgd", 1e36, False, True), ("rmsprop", 3e38, False, True)]:
        tx = make_optimizer(_ocfg(name, learning_rate=lr, max_grad_norm=float("inf"), warmup_steps=0))
        state = start_schedule(tx.init(params), 5)
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 1e3, dtype), params)
        # one real step first, so moments and counts are not all zero
        params1, state1, applied = tx.apply(grads, state, params, jnp.array(True))
        assert bool(applied) or lr > 1  # (the overflowing rates already skip it)
        if poison:
            grads = {**grads, "a": grads["a"].at[0, 0].set(jnp.nan)}
        new_p, new_s, applied = jax.jit(tx.apply)(grads, state1, params1, jnp.array(ok))
        assert not bool(applied)
        for a, b in zip(jax.tree.leaves((new_p, new_s)), jax.tree.leaves((params1, state1))):
            bits = lambda x: np.atleast_1d(np.asarray(x)).view(np.uint8)  # noqa: E731
            np.testing.assert_array_equal(bits(a), bits(b))


def test_fused_update_needs_no_temporary_the_size_of_the_params():
    """Compiled with the state donated, the fused update writes params and moments in place: its
    temporaries stay far below one params tree, where optax's chain with a finite-select holds
    several (the bound is what the train step's memory rests on)."""
    tx = make_optimizer(_ocfg())
    params = {f"w{i}": jax.ShapeDtypeStruct((256, 1024), jnp.float32) for i in range(8)}  # 8 MiB
    state = jax.eval_shape(tx.init, params)
    tree_bytes = 8 * 256 * 1024 * 4

    def temp(fn):
        return jax.jit(fn, donate_argnums=(0, 1)).lower(params, state, params).compile().memory_analysis(
        ).temp_size_in_bytes

    fused = temp(lambda p, s, g: apply_update(tx, g, s, p, jnp.array(True)))
    chain = temp(lambda p, s, g: apply_update(_plain(tx), g, s, p, jnp.array(True)))
    assert fused < 0.3 * tree_bytes < chain


def _plain(tx):
    """The same transformation as a bare optax one (the generic, unfused path of ``apply_update``)."""
    return optax.GradientTransformation(tx.init, tx.update)


@pytest.mark.parametrize("vocab,block,layout", [(50, 10, "ve"), (53, 10, "ve"), (64, 0, "ev"), (97, 7, "ev"),
                                                (40, 64, "ve")])
def test_lm_head_by_vocabulary_blocks_equals_the_full_logits(vocab, block, layout):
    """Values and both gradients (hidden states, head) of the blocked log-softmax equal the plain
    ``[N, V]`` computation, for blocks that divide the vocabulary and blocks that do not (padded,
    masked), and for tied (``ve``) and untied (``ev``) heads."""
    rng = np.random.default_rng(vocab)
    n, e = 13, 8
    h = jnp.asarray(rng.normal(size=(n, e)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(vocab, e) if layout == "ve" else (e, vocab)), jnp.float32)
    y = jnp.asarray(rng.integers(0, vocab, n))
    g = jnp.asarray(rng.normal(size=n), jnp.float32)
    plain = lambda h, w: jnp.sum(token_logps(jnp.einsum(f"ne,{layout}->nv", h, w), y) * g)  # noqa: E731
    blocked = lambda h, w: jnp.sum(token_logps_by_vocab_block(h, (w, layout), y, block) * g)  # noqa: E731
    want, want_g = jax.value_and_grad(plain, (0, 1))(h, w)
    got, got_g = jax.jit(jax.value_and_grad(blocked, (0, 1)))(h, w)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_g, want_g):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_vocab_block_prefers_a_divisor_near_the_logits_budget():
    budget = lm_head.BLOCK_LOGITS
    assert budget == 2**22
    assert vocab_block(49152, 1000) == 4096  # 2^22 / 1000 = 4194 -> the divisor 4096
    assert 49152 % vocab_block(49152, 3000) == 0 and vocab_block(49152, 3000) <= 2 * (budget // 3000)
    assert vocab_block(50257, 1000) == budget // 1000  # a prime vocabulary: padded blocks
    assert vocab_block(49152, 10**6) == lm_head.MIN_BLOCK  # many positions: not below the floor
    assert vocab_block(100, 10**9) == 100 and vocab_block(49152, 10, requested=300) == 300


def test_a_frozen_reference_is_the_start_params_not_a_copy_in_the_state(tmp_path, sft_cache):
    """DPO with the reference in the step: the state holds no reference (the step reads the start
    params, never donated), the start params are bit-identical after training, and the run resumes
    from a checkpoint to the same params as a straight run."""
    from jaxpref.main import run, setup
    from jaxpref.train.rounds import run_rounds

    cfg = toy(load_config("dpo"), sft_cache, precompute_ref_logps=False)
    job = setup(cfg, str(tmp_path / "a"))
    rnd = job.method.make_round(job.ctx, 0)
    plan = job.trainer.plan(rnd)
    assert plan["reference_arg"] and not plan["with_reference"]
    before = jax.device_get(job.trainer.start_params)
    result = run_rounds(job.method, job.ctx, job.trainer)
    job.logger.close()
    job.checkpointer.close()
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(job.trainer.start_params))):
        np.testing.assert_array_equal(x, y)
    # A trust-region reference stays in the state (it changes).
    tr = setup(toy(load_config("tr_dpo"), sft_cache), str(tmp_path / "tr"))
    tr_plan = tr.trainer.plan(tr.method.make_round(tr.ctx, 0))
    assert tr_plan["with_reference"] and not tr_plan["reference_arg"]
    tr.logger.close()
    tr.checkpointer.close()
    # Resume: drop the last checkpoint and run the same job again in that workdir.
    import shutil

    shutil.rmtree(tmp_path / "a" / "checkpoints" / "6")
    again = run(toy(load_config("dpo"), sft_cache, precompute_ref_logps=False), str(tmp_path / "a"))
    assert again["resumed_from_step"] == 3
    del result


def test_checkpoint_writes_are_bounded_and_checks_need_no_copy_of_the_state(tmp_path):
    """A save has at most ``save_in_flight_bytes`` encoded at once (room for two of the largest
    arrays), and the finiteness and fingerprint checks compile to reductions with no temporary
    the size of an array."""
    from jaxpref.runtime.checkpointing import (
        SAVE_IN_FLIGHT_BYTES,
        Checkpointer,
        _fingerprints,
        _finite,
        save_in_flight_bytes,
    )

    small = {"a": jnp.ones((4, 4)), "b": jnp.arange(3)}
    assert save_in_flight_bytes(small) == SAVE_IN_FLIGHT_BYTES
    big = jax.ShapeDtypeStruct((96, 1024, 1024), jnp.float32)  # 384 MiB
    for check in (_fingerprints, _finite):
        temp = check.lower({"x": big}).compile().memory_analysis().temp_size_in_bytes
        assert temp < 2**20
    ckpt = Checkpointer(str(tmp_path / "ck"))
    state = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 1024)), jnp.float32), "n": jnp.int32(3)}
    assert ckpt.save(1, state, {"note": "x"})
    restored, meta = ckpt.restore(jax.eval_shape(lambda: state))
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert meta["note"] == "x"
    ckpt.close()


def test_the_command_line_keeps_pytorch_out_of_the_process(tmp_path):
    """After ``keep_torch_out`` (what ``jaxpref train`` does first) a tokenizer loads and TensorBoard
    logging starts without importing torch, where torch is installed."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorboardX")
    from test_own_online import char_tokenizer

    char_tokenizer().save_pretrained(tmp_path / "tok")
    script = (
        "import sys\n"
        "from jaxpref.runtime.torch_free import keep_torch_out\n"
        "assert keep_torch_out()\n"
        "from jaxpref.models import load_tokenizer\n"
        f"t = load_tokenizer({str(tmp_path / 'tok')!r}); assert t('abc')['input_ids']\n"
        "from jaxpref.runtime.metrics_log import MetricsLogger\n"
        f"log = MetricsLogger({str(tmp_path / 'w')!r}); log.close()\n"
        "assert log._tb is not None\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_second_job_of_the_same_shapes_loads_its_compiled_steps(tmp_path, sft_cache):
    """``config.compile_cache``: the first job writes its compiled steps to the cache folder; a job
    in a fresh process with the same config finds them there (JAX's persistent cache)."""
    cache = tmp_path / "xla"
    flags = [f"--config.compile_cache_dir={cache}", f"--config.sft.cache_dir={sft_cache}",
             "--config.num_steps=2", "--config.data.num_pairs=64", "--config.batch_size=16",
             "--config.eval.num_prompts=16", "--config.eval.batch_size=16", "--config.sft.steps=30",
             "--config.sft.num_examples=512", "--config.sft.batch_size=32"]
    env = {k: v for k, v in os.environ.items() if k != "JAXPREF_COMPILE_CACHE"}
    env["PYTHONPATH"] = ROOT

    def job(name, **extra_env):
        out = subprocess.run([sys.executable, "-m", "jaxpref.main", "--config=configs/dpo.py",
                              f"--workdir={tmp_path / name}", *flags], capture_output=True, text=True,
                             env={**env, **extra_env}, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    first = job("a")
    assert f"compiled steps are cached in {cache}" in first
    entries = set(os.listdir(cache))
    assert any("step" in e for e in entries)
    second = job("b", JAX_DEBUG_LOG_MODULES="jax._src.compiler")  # JAX then logs each cache hit
    assert "Persistent compilation cache hit" in second and "step" in second.split("cache hit", 1)[1][:200]
    # The second job compiled no train step again. (Other compiles near the cache's 1 s threshold
    # may be stored by one job and not the other, depending on the machine's load.)
    steps = {e for e in entries if e.startswith("jit_step")}
    assert {e for e in os.listdir(cache) if e.startswith("jit_step")} == steps
