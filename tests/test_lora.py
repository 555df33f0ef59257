"""LoRA (``jaxpref.models.lora``, through qwix): adapters that start as the identity, merging that
equals the adapted model, PEFT folders that ``peft`` loads onto the HF base with the same logits,
and jobs that train only the adapters with the base as the reference."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, set_field

from jaxpref.config import ConfigError, validate_config
from jaxpref.models import count_params, forward, init_model, lora

TINY = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=4, model_type="llama", tie_word_embeddings=False)
IDS = jnp.array([[1, 5, 7, 9, 3, 11], [2, 8, 8, 30, 4, 6]])


def perturbed(adapters, scale=0.05, seed=2):
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("targets", ["all", "q_proj,v_proj", "o,down"])
def test_fresh_adapters_are_the_identity_and_merging_equals_the_adapted_model(targets):
    model, params = init_model(TINY, seed=0)
    spec = lora.LoraSpec(4, 8.0, targets=lora.parse_targets(targets))
    adapted = lora.lora_model(model, spec)
    adapters = lora.init_adapters(params, spec, jax.random.PRNGKey(1))
    base = forward(model, params, IDS)
    np.testing.assert_array_equal(forward(adapted, lora.combine(params, adapters), IDS), base)
    full = lora.combine(params, perturbed(adapters))
    out = forward(adapted, full, IDS)
    assert float(jnp.abs(out - base).max()) > 1e-2
    np.testing.assert_allclose(forward(model, lora.merge(full, spec), IDS), out, atol=1e-5)
    # The formula written out for one projection: kernel + (alpha / r) A B, reshaped to the kernel.
    got, want = lora.split(full)
    q = want["layers"]["attn"]
    if "q" in spec.targets:
        a, b = got["layers"]["attn"]["q"]["kernel_lora_a"], got["layers"]["attn"]["q"]["kernel_lora_b"]
        expect = q["q"]["kernel"] + 2.0 * np.einsum("lir,lro->lio", a, b).reshape(q["q"]["kernel"].shape)
        np.testing.assert_allclose(lora.merge(full, spec)["layers"]["attn"]["q"]["kernel"], expect, atol=1e-6)
    assert count_params(got) == sum(
        4 * (a[1] + b[2]) * a[0] for a, b in lora.adapter_shapes(params, spec).values())


def test_peft_adapter_round_trip_and_bad_folders(tmp_path):
    model, params = init_model(TINY, seed=0)
    spec = lora.LoraSpec(2, 4.0, 0.1, ("q", "v", "up"))
    adapters = perturbed(lora.init_adapters(params, spec, jax.random.PRNGKey(3)))
    lora.write_peft_adapter(tmp_path / "ad", adapters, spec)
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4.0 and cfg["target_modules"] == ["q_proj", "up_proj", "v_proj"]
    spec2, back = lora.read_peft_adapter(tmp_path / "ad", params)
    assert spec2 == spec
    for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(x), y)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        lora.read_peft_adapter(tmp_path / "missing", params)
    cfg["use_dora"] = True
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        lora.read_peft_adapter(tmp_path / "ad", params)


def test_lora_config_errors_name_the_key():
    cfg = load_config("dpo")
    cfg.lora.rank, cfg.lora.targets = 4, "q,wo"
    with pytest.raises(ConfigError, match=r"config.lora.targets: unknown \['wo'\]"):
        validate_config(cfg)
    cfg = load_config("dpo")
    cfg.export_adapter_dir = "/tmp/x"
    with pytest.raises(ConfigError, match="config.export_adapter_dir: needs LoRA"):
        validate_config(cfg)
    cfg = load_config("reward_model")
    cfg.lora.rank = 4
    with pytest.raises(ConfigError, match="config.lora.rank: LoRA is for policy training"):
        validate_config(cfg)


# --- jobs ----------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """A random-init HF Llama with a character tokenizer, and a small preference dataset."""
    from test_own_online import TINY_HF, char_tokenizer

    root = tmp_path_factory.mktemp("lora")
    tok = char_tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **TINY_HF)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    words = ["cats", "dogs", "tea", "rain", "jazz", "maps", "kites", "soup"]
    rows = [{"prompt": f"I think {w} are", "chosen": " great!", "rejected": " bad."} for w in words for _ in range(2)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def hf_job(name, hf_files, **overrides):
    cfg = load_config(name)
    base = {"model.name": "hf", "model.path": str(hf_files / "policy"), "data.source": str(hf_files / "data"),
            "data.max_length": 32, "data.max_prompt_length": 16, "data.eval_fraction": 0.0, "batch_size": 4,
            "num_steps": 4, "log_every": 2, "checkpoint_every": 4, "optimizer.learning_rate": 1e-2,
            "lora.rank": 4, "lora.alpha": 8.0}
    for k, v in {**base, **overrides}.items():
        set_field(cfg, k, v)
    return cfg


def test_lora_dpo_exports_a_peft_adapter_that_matches_the_merged_export(hf_files, tmp_path):
    peft = pytest.importorskip("peft")
    from jaxpref.main import run

    cfg = hf_job("dpo", hf_files, export_dir=str(tmp_path / "merged"), export_adapter_dir=str(tmp_path / "adapter"))
    summary = run(cfg, str(tmp_path / "run"))
    assert summary["lora"]["trainable_params"] < 0.2 * summary["lora"]["base_params"]
    ids = torch.tensor([[1, 10, 12, 14, 5, 20, 22, 7]])
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_files / "policy").eval()
    with torch.no_grad():
        before = base(ids).logits.numpy()
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        with_adapter = adapted(ids).logits.numpy()
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        exported = merged(ids).logits.numpy()
    assert np.abs(with_adapter - before).max() > 1e-3  # training moved the adapters
    np.testing.assert_allclose(with_adapter, exported, atol=1e-4)
    # Training again from that adapter: the reference is the adapted model, not the bare base.
    again = hf_job("dpo", hf_files, **{"lora.rank": 0, "lora.init_from": str(tmp_path / "adapter"), "num_steps": 2})
    out = run(again, str(tmp_path / "again"))
    assert out["lora"]["rank"] == 4 and out["lora"]["targets"] == list(lora.TARGETS)


def test_tr_dpo_with_lora_keeps_one_copy_of_the_base_and_never_changes_it(hf_files, tmp_path):
    from jaxpref.main import setup
    from jaxpref.train.rounds import run_rounds

    cfg = hf_job("tr_dpo", hf_files, ref_update_every=2)
    job = setup(cfg, str(tmp_path / "tr"))
    before = jax.device_get(job.trainer.start_params)
    result = run_rounds(job.method, job.ctx, job.trainer)
    adapters, base = lora.split(result.params)
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(base))):
        np.testing.assert_array_equal(x, y)  # bit-identical after training
    state = job.trainer.abstract_state(with_reference=True)
    n_base, n_adapters = count_params(before), count_params(adapters)
    assert count_params(state.params) == count_params(state.ref_params) == n_adapters < 0.2 * n_base
    # The optimizer state holds AdamW's two moments of the adapters only (plus scalars).
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sum(int(np.prod(x.shape)) for x in moments) == 2 * n_adapters
    job.logger.close()
    job.checkpointer.close()


def test_online_rounds_with_lora_continue_the_adapters_and_resume(tmp_path):
    from helpers import tiny_online

    from jaxpref.main import run

    cfg = tiny_online("selm", tmp_path / "sft", **{"selm.rounds": 2, "lora.rank": 8, "lora.alpha": 16.0,
                                                   "optimizer.learning_rate": 3e-3})
    first = run(cfg, str(tmp_path / "selm"))
    assert len(first["rounds"]) == 2 and first["lora"]["rank"] == 8
    again = run(cfg, str(tmp_path / "selm"))  # resumes after the last round: same policy, same evaluation
    assert again["win_rate_vs_sft"] == first["win_rate_vs_sft"] and again["kl_vs_sft"] == first["kl_vs_sft"]


def test_online_rounds_from_loaded_adapters_sample_the_adapted_policy(monkeypatch, tmp_path):
    """With ``lora.init_from``, the job's starting policy is the base with those adapters: SPPO's
    first round samples from it (not from the bare base), so its sampler log-probs are the
    reference's and no reference pass runs."""
    from helpers import tiny_online

    from jaxpref.main import run
    from jaxpref.methods import sppo
    from jaxpref.train import rounds

    trained = tiny_online("sppo", tmp_path / "sft", **{"sppo.iterations": 1, "lora.rank": 8, "lora.alpha": 16.0,
                                                       "optimizer.learning_rate": 3e-2,
                                                       "export_adapter_dir": str(tmp_path / "adapter")})
    run(trained, str(tmp_path / "first"))
    sampled_from, sampler_used = [], []
    real_make_round = sppo.make_round

    def make_round(ctx, index):
        sampled_from.append(ctx.params)
        return real_make_round(ctx, index)

    real_guard = rounds.Trainer._sampler_is_reference
    monkeypatch.setattr(sppo, "METHOD", dataclasses.replace(sppo.METHOD, make_round=make_round))
    monkeypatch.setattr(rounds.Trainer, "_sampler_is_reference",
                        lambda *a: sampler_used.append(real_guard(*a)) or sampler_used[-1])
    again = tiny_online("sppo", tmp_path / "sft", **{"sppo.iterations": 1, "lora.rank": 0,
                                                     "lora.init_from": str(tmp_path / "adapter")})
    run(again, str(tmp_path / "again"))
    assert lora.has_adapters(sampled_from[0])
    adapters, base = lora.split(sampled_from[0])
    _, loaded = lora.read_peft_adapter(tmp_path / "adapter", base)
    assert jax.tree.structure(adapters) == jax.tree.structure(loaded)
    for x, y in zip(jax.tree.leaves(adapters), jax.tree.leaves(loaded)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert any(float(np.abs(x).max()) > 0 for x in jax.tree.leaves(loaded))  # not a fresh (zero) adapter
    assert sampler_used == [True]


@pytest.mark.parametrize("param_dtype, rank", [("", 0), ("bfloat16", 0), ("", 4)])
def test_bf16_compute_keeps_float32_master_weights_unless_asked(tmp_path, param_dtype, rank):
    from helpers import toy

    from jaxpref.main import setup
    from jaxpref.train.rounds import run_rounds

    cfg = toy(load_config("dpo"), tmp_path / "sft", **{"model.dtype": "bfloat16", "model.param_dtype": param_dtype,
                                                       "num_steps": 3, "lora.rank": rank,
                                                       "precompute_ref_logps": rank == 0})
    job = setup(cfg, str(tmp_path / "run"))
    want = jnp.bfloat16 if param_dtype else jnp.float32  # LoRA adapters: float32 (the base as loaded)
    state = job.trainer.abstract_state(with_reference=rank > 0)
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(want)}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim > 0} == {np.dtype(want)}
    assert job.ctx.model.dtype == jnp.bfloat16
    result = run_rounds(job.method, job.ctx, job.trainer)
    assert result.stats[0].last_metrics["loss"] > 0 and np.isfinite(result.stats[0].last_metrics["loss"])
    job.logger.close()
    job.checkpointer.close()


def test_lora_dropout_keeps_the_model_settings_and_draws_masks_from_the_rng():
    """The train step wraps a dropout LoRA model to pass its rng: the wrapper still reports the
    model's settings (the chunked head stays on) and its masks follow the rng."""
    from jaxpref.models.llama import head_block_size
    from jaxpref.train.step import _WithRngs

    model, params = init_model(TINY, seed=0)
    spec = lora.LoraSpec(2, 4.0, 0.5)
    adapted = lora.lora_model(model.clone(logits_chunk=3), spec)
    wrapped = [_WithRngs(adapted, {"dropout": jax.random.PRNGKey(s)}) for s in (0, 0, 1)]
    assert head_block_size(wrapped[0]) == 3 and head_block_size(wrapped[0].clone(return_hidden=True)) == 3
    full = lora.combine(params, perturbed(lora.init_adapters(params, spec, jax.random.PRNGKey(1)), scale=0.5))
    a, b, c = (forward(m, full, IDS) for m in wrapped)
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-4


@pytest.mark.parametrize("use_lora,want", [(False, 0.1), (True, 1.0)])
def test_lora_learning_rate_replaces_the_full_models_with_lora_on(use_lora, want):
    """``optimizer.lora_learning_rate`` is the peak rate of a LoRA run only (one config, both kinds)."""
    import ml_collections

    from jaxpref.train.optim import make_optimizer, peak_learning_rate, start_schedule

    ocfg = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, lora_learning_rate=1.0, warmup_steps=0,
                                          weight_decay=0.0, max_grad_norm=float("inf"), final_lr_fraction=1.0))
    assert peak_learning_rate(ocfg, lora=use_lora) == want
    tx = make_optimizer(ocfg, lora=use_lora)
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, start_schedule(tx.init(params), 10), params)
    np.testing.assert_allclose(updates["w"], -want, rtol=1e-6)
    ocfg.lora_learning_rate = 0.0  # unset: LoRA trains at learning_rate too
    assert peak_learning_rate(ocfg, lora=True) == 0.1
