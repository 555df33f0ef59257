"""Train state, reference updates and the fused train step on a tiny model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TINY_LM

from jaxpref.data.batches import PairExample, collate_pairs, collate_unpaired, pairs_to_unpaired
from jaxpref.losses import dpo_loss, sequence_logps
from jaxpref.models import forward, init_model
from jaxpref.objectives import HYPERPARAMETERS, OBJECTIVES, default_hparams, get_objective
from jaxpref.runtime.compiler_options import CPU_NARROW_MODEL_OPTIONS, NARROW_HIDDEN_SIZE, train_compiler_options
from jaxpref.tasks.synthetic import EchoTask
from jaxpref.train.state import create_train_state, update_reference
from jaxpref.train.step import batch_groups, grouped_logps, make_train_step

TASK = EchoTask()
CFG = {"vocab_size": TASK.vocab_size, **TINY_LM}


def dpo_step(model, tx, loss="dpo", *, ref_update_every=0, ref_update_alpha=1.0, **hparams):
    """The unjitted train step of ``loss`` with its default hyper-parameters and ``hparams``."""
    objective = get_objective(loss)
    return make_train_step(model, objective, default_hparams(objective, **hparams), tx,
                           ref_update_every=ref_update_every, ref_update_alpha=ref_update_alpha)


def _batch(pairs, n=16):
    return batch_groups(collate_pairs(pairs[:n], pad_id=0, buckets=[24]))


def test_reference_update_soft_after_tau_steps_matches_formula():
    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    tx = optax.sgd(0.5)
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    old_ref = jax.tree.map(jnp.copy, state.ref_params)
    alpha, tau = 0.6, 3
    for i in range(1, 7):
        grads = {"w": jnp.full((2, 3), float(i))}
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
        before = jax.tree.map(jnp.copy, state.ref_params)
        state = update_reference(state, every=tau, alpha=alpha)
        if i % tau == 0:
            want = alpha * np.asarray(state.params["w"]) + (1 - alpha) * np.asarray(old_ref["w"])
            np.testing.assert_allclose(state.ref_params["w"], want, rtol=1e-6)
            old_ref = jax.tree.map(jnp.copy, state.ref_params)
        else:  # between updates the reference is untouched
            np.testing.assert_array_equal(state.ref_params["w"], before["w"])


def test_reference_update_hard_copies_and_zero_disables():
    params = {"w": jnp.ones(3)}
    state = create_train_state(params, optax.sgd(1.0), rng=jax.random.PRNGKey(0), with_reference=True)
    state = state.replace(step=jnp.int32(4), params={"w": jnp.full(3, 7.0)})
    np.testing.assert_array_equal(update_reference(state, every=2, alpha=1.0).ref_params["w"], 7.0)
    np.testing.assert_array_equal(update_reference(state, every=0, alpha=1.0).ref_params["w"], 1.0)
    with pytest.raises(ValueError, match="alpha"):
        update_reference(state, every=2, alpha=1.5)


def test_grouped_logps_is_one_forward_and_equals_separate_forwards(tiny, pairs):
    model, params = tiny
    groups, _ = _batch(pairs)
    fused = grouped_logps(model, params, groups, ("chosen", "rejected"))
    for name in ("chosen", "rejected"):
        g = groups[name]
        alone = sequence_logps(forward(model, params, g.ids, g.attention_mask), g.ids, g.completion_mask)
        np.testing.assert_allclose(fused[name], alone, rtol=1e-5, atol=1e-5)


def test_dpo_step_loss_equals_loss_function_at_init(tiny, pairs):
    model, params = tiny
    groups, extras = _batch(pairs)
    tx = optax.adamw(1e-3)
    step = jax.jit(dpo_step(model, tx, beta=0.1))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    _, metrics = step(state, groups, extras)
    lp = grouped_logps(model, params, groups, ("chosen", "rejected"))
    want = np.mean(dpo_loss(lp["chosen"], lp["rejected"], lp["chosen"], lp["rejected"], beta=0.1)[0])
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], np.log(2.0), rtol=1e-5)  # policy == reference


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge", "slic", "kto_pair", "sppo_hard"])
def test_training_lowers_loss_and_raises_reward_accuracy(tiny, pairs, loss):
    model, params = tiny
    groups, extras = _batch(pairs, 32)
    tx = optax.adam(3e-3)
    step = jax.jit(dpo_step(model, tx, loss=loss, beta=0.5, delta=1.0))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    ref_before = jax.tree.map(np.asarray, state.ref_params)
    history = []
    for _ in range(25):
        state, m = step(state, groups, extras)
        history.append(jax.device_get(m))
    assert history[-1]["loss"] < history[0]["loss"]
    if loss != "slic":
        assert history[-1]["reward_accuracy"] > history[0]["reward_accuracy"] or history[-1]["reward_accuracy"] == 1.0
    # A frozen reference is bit-identical after training.
    chex.assert_trees_all_equal(ref_before, jax.tree.map(np.asarray, state.ref_params))


def test_kto_step_trains_on_unpaired_batch(tiny, pairs):
    model, params = tiny
    batch = collate_unpaired(pairs_to_unpaired(pairs[:16]), pad_id=0, buckets=[24])
    groups, extras = batch_groups(batch)
    tx = optax.adam(3e-3)
    step = jax.jit(dpo_step(model, tx, loss="kto", beta=0.5))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    losses = []
    for _ in range(15):
        state, m = step(state, groups, extras)
        losses.append(float(m["loss"]))
    np.testing.assert_allclose(losses[0], 0.5, rtol=1e-5)  # h = 0, z0 = 0: 1 - sigmoid(0)
    assert losses[-1] < losses[0]


def test_precomputed_reference_gives_the_same_step(tiny, pairs):
    model, params = tiny
    groups, extras = _batch(pairs)
    tx = optax.sgd(1e-2)  # linear in the gradient, so equal gradients give equal params
    step = jax.jit(dpo_step(model, tx, beta=0.1))
    with_ref = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    without = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=False)
    ref = grouped_logps(model, params, groups, ("chosen", "rejected"))
    s1, m1 = step(with_ref, groups, extras)
    s2, m2 = step(without, groups, {"ref_chosen": ref["chosen"], "ref_rejected": ref["rejected"]})
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-6, atol=1e-7)


def test_cpu_compiler_options_are_applied_and_keep_the_step(tiny, pairs):
    """The train steps' CPU options for narrow models (``jaxpref.compiler_options``) reach XLA
    and change only float rounding; wide models keep XLA's defaults."""
    if jax.default_backend() != "cpu":
        pytest.skip("CPU compiler options")
    model, params = tiny
    options = train_compiler_options(model.config.hidden_size)
    assert options == CPU_NARROW_MODEL_OPTIONS  # the CPU backend of this jaxlib accepts them
    assert train_compiler_options(NARROW_HIDDEN_SIZE) == {}
    groups, extras = _batch(pairs)
    tx = optax.sgd(1e-2)
    step = dpo_step(model, tx, beta=0.1)
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    default = jax.jit(step).lower(state, groups, extras).compile()
    tuned = jax.jit(step, compiler_options=options).lower(state, groups, extras).compile()
    assert "ynn_fusion" in default.as_text() and "ynn_fusion" not in tuned.as_text()
    (s1, m1), (s2, m2) = default(state, groups, extras), tuned(state, groups, extras)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-7)


def test_trust_region_step_updates_reference_every_tau(tiny, pairs):
    model, params = tiny
    groups, extras = _batch(pairs)
    tx = optax.adam(1e-2)
    alpha, tau = 0.6, 2
    step = jax.jit(dpo_step(model, tx, beta=0.1, ref_update_every=tau, ref_update_alpha=alpha))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    old_ref = jax.tree.map(np.asarray, state.ref_params)
    state, _ = step(state, groups, extras)  # step 1: no update
    chex.assert_trees_all_equal(old_ref, jax.tree.map(np.asarray, state.ref_params))
    state, _ = step(state, groups, extras)  # step 2: ref = alpha * policy + (1 - alpha) * old
    want = jax.tree.map(lambda p, r: alpha * np.asarray(p) + (1 - alpha) * r, state.params, old_ref)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, state.ref_params), want, rtol=1e-6, atol=1e-7)


def test_nonfinite_step_is_skipped(tiny, pairs):
    model, params = tiny
    groups, _ = _batch(pairs)
    tx = optax.adam(1e-3)
    step = jax.jit(dpo_step(model, tx, beta=0.1))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=False)
    bad = {"ref_chosen": jnp.full((16,), jnp.nan), "ref_rejected": jnp.zeros((16,))}
    new, m = step(state, groups, bad)
    assert int(m["skipped"]) == 1 and int(new.step) == 1
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, new.params), jax.tree.map(np.asarray, params))


def test_step_compiles_once(tiny, pairs):
    model, params = tiny
    groups, extras = _batch(pairs)
    tx = optax.adam(1e-3)
    traces = []

    def counted(state, groups, extras):
        traces.append(1)
        return dpo_step(model, tx, beta=0.1)(state, groups, extras)

    step = jax.jit(counted)
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    for _ in range(3):
        state, _ = step(state, groups, extras)
    assert len(traces) == 1


def test_every_objective_declares_known_groups():
    for name, obj in OBJECTIVES.items():
        assert set(obj.groups) <= {"chosen", "rejected", "sample", "completion", "kl"}, name
        assert set(obj.hparams) <= set(HYPERPARAMETERS), name
    with pytest.raises(ValueError, match="unknown loss"):
        get_objective("nope")


def test_echo_task_oracle_hand_checked():
    p = [1, 4, 5, 6, 3]  # words 4, 5, 6
    assert TASK.reward(p, [4, 5, 6, 2]) == pytest.approx(1.0)
    assert TASK.reward(p, [4, 9, 6, 2]) == pytest.approx(2 / 3)
    assert TASK.reward(p, [4, 5, 2]) == pytest.approx(1.0 - 0.2)
    assert TASK.preference_prob(p, [4, 5, 6, 2], [4, 5, 2]) == pytest.approx(1 / (1 + np.exp(-2.0)))
    pairs = TASK.preference_dataset(seed=1, n=200)
    assert all(isinstance(e, PairExample) and e.chosen != e.rejected for e in pairs)
    r_c = TASK.rewards([e.prompt for e in pairs], [e.chosen for e in pairs])
    r_r = TASK.rewards([e.prompt for e in pairs], [e.rejected for e in pairs])
    assert np.mean(r_c > r_r) > 0.7  # BT labels agree with the oracle most of the time


def test_compile_ahead_matches_jit_and_reuses_executables():
    from jaxpref.runtime.host_memory import CompileAhead, release_free_heap

    calls = []

    def step(state, x, extras):
        calls.append(x.shape)  # traced once per new signature
        return state + x.sum() * extras["w"], {"loss": x.mean()}

    jitted = jax.jit(step, donate_argnums=0)
    wrapped = CompileAhead(jitted)
    x4, x8 = jnp.arange(4.0), jnp.arange(8.0)
    s1, m1 = wrapped(jnp.float32(1.0), x4, {"w": jnp.float32(2.0)})
    assert float(s1) == 1.0 + 12.0 and float(m1["loss"]) == 1.5
    s2, _ = wrapped(s1, x4 + 1, {"w": jnp.float32(2.0)})  # s1 is donated
    assert float(s2) == 13.0 + 20.0
    s3, _ = wrapped(s2, x8, {"w": jnp.float32(2.0)})
    assert float(s3) == 33.0 + 56.0
    assert calls == [(4,), (8,)] and len(wrapped._executables) == 2
    assert isinstance(release_free_heap(), bool)


def test_compile_ahead_keeps_at_most_max_executables_and_frees_dropped_ones():
    """The least recently used shape is dropped first, and nothing else keeps its executable alive
    (jax.jit's own caches are cleared after each compilation): a dropped shape compiles again."""
    import gc
    import weakref

    from jaxpref.runtime.host_memory import CompileAhead

    traced = []

    def step(state, x):
        traced.append(x.shape[0])
        return state + x.sum(), {"loss": x.mean()}

    wrapped = CompileAhead(jax.jit(step), max_executables=2)
    state = jnp.float32(0.0)
    for n in (2, 3, 2, 4):  # 2 is used again before 4 arrives, so 3 is the one dropped
        state, _ = wrapped(state, jnp.ones(n))
    assert float(state) == 11.0
    assert traced == [2, 3, 4] and wrapped.compilations == 3
    assert [key[1][0][0] for key in wrapped._executables] == [(2,), (4,)]
    dropped = weakref.ref(wrapped._executables[next(iter(wrapped._executables))]._executable)
    state, _ = wrapped(state, jnp.ones(3))  # drops shape 2, compiles 3 again
    gc.collect()
    assert dropped() is None, "a dropped executable is still referenced (by jax.jit's caches?)"
    assert traced == [2, 3, 4, 3] and wrapped.compilations == 4 and float(state) == 14.0
    with pytest.raises(ValueError, match="max_executables"):
        CompileAhead(jax.jit(step), max_executables=0)


def _random_pairs(rng, n, vocab, *, max_prompt, max_completion):
    """Pairs with varied prompt (including empty) and completion lengths."""
    def tokens(lo, hi):
        return rng.integers(2, vocab, size=int(rng.integers(lo, hi + 1))).tolist()

    return [PairExample(tokens(0 if i == 0 else 1, max_prompt), tokens(1, max_completion), tokens(1, max_completion))
            for i in range(n)]


@pytest.mark.parametrize("model_type,padding_free", [("llama", False), ("mistral_window", False), ("qwen2", False),
                                                    ("llama", True), ("mistral_window", True)])
def test_shared_prompt_logps_equal_separate_sequences(model_type, padding_free):
    """Packing each pair behind one prompt (with gradients) gives the unpacked log-probs; so does
    padding-free packing of several pairs per row (each pair sees only itself)."""
    extra = dict(model_type="mistral", sliding_window=4) if model_type == "mistral_window" else {}
    if model_type == "qwen2":
        extra = dict(model_type="qwen2", tie_word_embeddings=False)
    model, params = init_model({**CFG, **extra}, seed=3)
    params = jax.tree.map(lambda x: x * 4.0, params)  # sharper distributions than at init
    rng = np.random.default_rng(0)
    pairs = _random_pairs(rng, 6, CFG["vocab_size"], max_prompt=9, max_completion=7)
    if padding_free:  # a long pair sets the row length; the short ones share rows
        pairs += _random_pairs(rng, 4, CFG["vocab_size"], max_prompt=3, max_completion=2)
        pairs[3] = PairExample(pairs[3].prompt + [5] * 8, pairs[3].chosen + [6] * 5, pairs[3].rejected)
    groups, _ = batch_groups(collate_pairs(pairs, pad_id=0, buckets=[48]), share_prompt=True,
                             padding_free=padding_free)
    packed = groups["shared_prompt"]
    assert packed.ids.shape[1] < 2 * 48  # the prompt is stored once
    if padding_free:
        assert packed.ids.shape[0] < len(pairs) and packed.segment.max() > 3  # some row holds 2+ pairs
        assert packed.pair_slots.shape == (len(pairs),)
    separate = {n: groups[n] for n in ("chosen", "rejected")}

    def total(p, g):
        logps = grouped_logps(model, p, g, ("chosen", "rejected"))
        return jnp.sum(logps["chosen"] * 1.3 - logps["rejected"]), logps

    (want, want_logps), want_grads = jax.value_and_grad(total, has_aux=True)(params, separate)
    (got, got_logps), got_grads = jax.value_and_grad(total, has_aux=True)(params, groups)
    for name in ("chosen", "rejected"):
        np.testing.assert_allclose(got_logps[name], want_logps[name], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # float32 sums in another order: allow 1e-5 of each leaf's largest entry (entries reach ~30 here;
    # a fresh-clone CI run once saw 1.7e-5 on a 0.006 entry). A packing error is of order 1.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, float(jnp.max(
        jnp.abs(b))))), got_grads, want_grads)


@pytest.mark.parametrize("layout", ["separate", "shared_prompt", "full_chosen", "lora"])
@pytest.mark.parametrize("tied", [True, False])
def test_chunked_lm_head_gives_the_full_logits_values_and_gradients(layout, tied):
    """``logits_chunk``: the LM head runs a few positions at a time (never ``[B, T, V]``) with the
    same log-probs and gradients, for separate rows, packed pairs, ORPO's full-sequence NLL and a
    LoRA model (gradients of the adapters)."""
    from jaxpref.models import lora
    from jaxpref.train.step import Scoring

    model, params = init_model({**CFG, "tie_word_embeddings": tied}, seed=3)
    params = jax.tree.map(lambda x: x * 4.0, params)
    pairs = _random_pairs(np.random.default_rng(1), 6, CFG["vocab_size"], max_prompt=9, max_completion=7)
    groups, _ = batch_groups(collate_pairs(pairs, pad_id=0, buckets=[24]), share_prompt=layout == "shared_prompt")
    scoring = Scoring(full_chosen=True) if layout == "full_chosen" else Scoring()
    names = ("chosen", "rejected")
    trained, base = params, None
    if layout == "lora":
        spec = lora.LoraSpec(2, 4.0, targets=("q", "v", "down"))
        model = lora.lora_model(model, spec)
        trained = jax.tree.map(lambda x: x + 0.1, lora.init_adapters(params, spec, jax.random.PRNGKey(0)))
        base = params

    def total(p, m):
        full = p if base is None else lora.combine(base, p)
        logps = grouped_logps(m, full, groups, names, scoring)
        extra = logps.get("full_chosen", 0.0)
        return jnp.sum(logps["chosen"] * 1.3 - logps["rejected"] + 0.5 * extra), logps

    (want, want_logps), want_grads = jax.value_and_grad(total, has_aux=True)(trained, model.clone(logits_chunk=-1))
    assert model.clone(logits_chunk=-1).logits_chunk == -1
    (got, got_logps), got_grads = jax.value_and_grad(total, has_aux=True)(trained, model.clone(logits_chunk=5))
    for name in want_logps:
        np.testing.assert_allclose(got_logps[name], want_logps[name], rtol=1e-5, atol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(jnp.max(
        jnp.abs(b))))), got_grads, want_grads)
    assert float(jnp.abs(want_grads["layers"]["attn"]["q" if layout == "lora" else "k"][
        "kernel_lora_b" if layout == "lora" else "kernel"]).max()) > 0


def test_chunked_lm_head_never_builds_the_full_logits():
    """The compiled gradient's largest temporary shrinks when the head is chunked: the
    ``[B, T, V]`` logits (and their softmax) are what dominates a wide-vocabulary model."""
    model, params = init_model({**CFG, "vocab_size": 4096, "hidden_size": 16, "num_layers": 1}, seed=0)
    pairs = _random_pairs(np.random.default_rng(2), 8, 4096, max_prompt=40, max_completion=60)
    groups, _ = batch_groups(collate_pairs(pairs, pad_id=0, buckets=[128]))

    def temp_bytes(m):
        f = jax.jit(jax.grad(lambda p: jnp.sum(grouped_logps(m, p, groups, ("chosen", "rejected"))["chosen"])))
        return f.lower(params).compile().memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(model.clone(logits_chunk=-1)), temp_bytes(model.clone(logits_chunk=16))
    logits_bytes = 2 * 8 * 128 * 4096 * 4  # chosen + rejected rows, float32
    assert full > logits_bytes and chunked < full - logits_bytes


def test_pack_shared_prompt_layout_and_errors():
    from jaxpref.data.batches import pack_shared_prompt, packed_length

    batch = collate_pairs([PairExample([5, 6], [7, 8, 9], [10])], pad_id=0, buckets=[8])
    packed = pack_shared_prompt(batch)
    assert packed.ids[0, :6].tolist() == [5, 6, 7, 8, 9, 10]
    assert packed.positions[0, :6].tolist() == [0, 1, 2, 3, 4, 2]  # rejected restarts after the prompt
    assert packed.segment[0, :7].tolist() == [1, 1, 2, 2, 2, 3, 0]
    # chosen 7, 8, 9 predicted from indices 1, 2, 3; rejected 10 from the prompt's last token (1)
    assert packed.target_ids[0, :5].tolist() == [7, 8, 9, 10, 0]
    assert packed.source_index[0, :4].tolist() == [1, 2, 3, 1]
    assert packed.target_segment[0, :5].tolist() == [2, 2, 2, 3, 0]
    assert [packed_length(n) for n in (1, 17, 25, 33, 49, 97)] == [16, 24, 32, 48, 64, 128]
    assert [packed_length(n) for n in (129, 161, 200, 225, 1788, 1793)] == [160, 192, 224, 256, 1792, 2048]
    bad = batch._replace(rejected_ids=batch.rejected_ids.copy())
    bad.rejected_ids[0, 0] = 99
    with pytest.raises(ValueError, match="row 0"):
        pack_shared_prompt(bad)


def test_padding_free_layout_rows_and_sizes():
    from jaxpref.data.batches import pack_bins, pack_shared_prompt, packed_sizes

    assert pack_bins([5, 9, 3, 7, 2], 10) == [[1], [2, 3], [0, 4]]  # longest first, first fit
    with pytest.raises(ValueError, match="does not fit"):
        pack_bins([11], 10)
    pairs = [PairExample([5, 6], [7, 8, 9], [10]), PairExample([11], [12], [13, 14])]
    batch = collate_pairs(pairs, pad_id=0, buckets=[8])
    packed = pack_shared_prompt(batch, multi=True, sizes=(16, 8, 2))  # room for both in row 0
    assert packed.ids.shape == (2, 16) and not packed.segment[1].any()  # row 1: padding (row_multiple)
    assert packed.ids[0, :11].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0]
    assert packed.positions[0, :10].tolist() == [0, 1, 2, 3, 4, 2, 0, 1, 1, 2]  # the second pair restarts
    assert packed.segment[0, :11].tolist() == [1, 1, 2, 2, 2, 3, 4, 5, 6, 6, 0]
    assert packed.target_ids[0, :7].tolist() == [7, 8, 9, 10, 12, 13, 14]
    assert packed.source_index[0, :7].tolist() == [1, 2, 3, 1, 6, 6, 8]
    assert packed.target_pair[0, :7].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert packed_sizes(pairs, multi=True) == (16, 16, 1)
    assert packed_sizes(pairs * 2, multi=True, slices=2, row_multiple=2) == (16, 16, 2)
    with pytest.raises(ValueError, match="rows"):
        pack_shared_prompt(collate_pairs(pairs * 3, pad_id=0, buckets=[8]), multi=True, sizes=(8, 8, 2))


def test_packed_shapes_agree_across_processes():
    """Each process packs its slice of the global batch with the global batch's sizes."""
    from jaxpref.data import BatchStream
    from jaxpref.data.batches import pack_shared_prompt, packed_sizes

    pairs = _random_pairs(np.random.default_rng(1), 16, CFG["vocab_size"], max_prompt=12, max_completion=9)
    for padding_free in (False, True):
        streams = [BatchStream(pairs, batch_size=8, pad_id=0, buckets=[32], process_index=i, process_count=2,
                               padding_free=padding_free, row_multiple=2) for i in (0, 1)]
        for step in range(3):
            sizes = streams[0].packed_sizes(step)
            assert sizes == streams[1].packed_sizes(step)
            packed = [batch_groups(s.batch_at(step), share_prompt=True, packed_sizes=sizes, padding_free=padding_free,
                                   first_pair=s.first_pair)[0]["shared_prompt"] for s in streams]
            assert {p.ids.shape for p in packed} == {(sizes[2] if padding_free else 4, sizes[0])}
            # pair indices are global: process 1 packs pairs 4..7 of the global batch
            for k, p in enumerate(packed):
                assert set(p.target_pair[p.target_segment > 0].tolist()) == set(range(4 * k, 4 * k + 4))
            assert not padding_free or sizes[2] % 2 == 0
    batch = collate_pairs(pairs[:4], pad_id=0, buckets=[32])
    length, width = packed_sizes(pairs[:4])
    with pytest.raises(ValueError, match="does not fit"):
        pack_shared_prompt(batch, sizes=(length, 1))


@pytest.mark.parametrize("total,warmup,end", [(300, 20, 0.1), (600, 20, 0.0), (5, 20, 0.1), (1, 0, 0.1), (40, 0, 0.5)])
def test_warmup_cosine_schedule_matches_optax(total, warmup, end):
    """The schedule read from the optimizer state equals optax's warmup_cosine_decay_schedule."""
    from jaxpref.train.optim import warmup_cosine_lr

    w = min(warmup, max(total - 1, 0))
    want = optax.warmup_cosine_decay_schedule(0.0, 3e-4, w, max(total, w + 1), end_value=end * 3e-4)
    counts = np.arange(0, total + 3)
    got = jax.jit(lambda c: warmup_cosine_lr(c, total, peak=3e-4, warmup_steps=warmup, end_fraction=end))(counts)
    np.testing.assert_allclose(got, [float(want(c)) for c in counts], rtol=1e-5, atol=1e-12)


def test_one_compiled_step_serves_rounds_of_any_length():
    """The schedule's length is optimizer state: rounds of 3 and 7 steps run one executable, and
    each follows its own schedule (AdamW updates scale with the learning rate)."""
    import ml_collections

    from jaxpref.train.optim import extend_schedule, make_optimizer, start_schedule

    ocfg = ml_collections.ConfigDict(dict(name="sgd", learning_rate=1.0, warmup_steps=0, weight_decay=0.0,
                                          max_grad_norm=float("inf"), final_lr_fraction=0.0))
    tx = make_optimizer(ocfg)
    params = {"w": jnp.ones(2)}
    update = jax.jit(lambda s: tx.update({"w": jnp.ones(2)}, s, params))
    for total in (3, 7):
        state = start_schedule(tx.init(params), total)
        lrs = []
        for _ in range(total):
            updates, state = update(state)
            lrs.append(-float(updates["w"][0]))
        want = optax.cosine_decay_schedule(1.0, total)
        np.testing.assert_allclose(lrs, [float(want(c)) for c in range(total)], rtol=1e-6, atol=1e-7)
    assert update._cache_size() == 1
    longer = extend_schedule(state, 14)  # count 7 kept, length 14: halfway down the longer cosine
    updates, _ = update(longer)
    np.testing.assert_allclose(-float(updates["w"][0]), float(optax.cosine_decay_schedule(1.0, 14)(7)), rtol=1e-6)
