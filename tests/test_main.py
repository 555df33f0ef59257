"""End-to-end jobs on the built-in task at toy sizes: outputs, resume, CLI flags, config errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config, toy, toy_cli_flags

from jaxpref.config import ConfigError
from jaxpref.main import run
from jaxpref.models import load_pretrained


def test_dpo_job_writes_summary_metrics_plot_and_export(tmp_path, sft_cache):
    cfg = toy(load_config("dpo"), sft_cache, export_dir=str(tmp_path / "export"))
    summary = run(cfg, str(tmp_path / "run"))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("method", "steps", "win_rate_vs_sft", "mean_reward", "sft_mean_reward", "kl_vs_sft",
                "train_tokens_per_second"):
        assert key in on_disk, key
    assert on_disk["steps"] == 6 and on_disk["num_prompts"] == 32
    assert on_disk["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1} and on_disk["devices"] == on_disk["processes"] == 1
    # Exactly what DPO reads: its own hyper-parameters and TRL's DPO options (f-divergence, LD, WPO).
    assert on_disk["loss_hparams"] == {"beta": 0.1, "label_smoothing": 0.0, "f_divergence_type": "reverse_kl",
                                       "f_alpha_divergence_coef": 0.5, "ld_alpha": 1.0, "use_weighting": False}
    assert on_disk["loss"] == "dpo" and on_disk["loss_weights"] == ""
    assert 0.0 <= summary["win_rate_vs_sft"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["tokens_per_second"] > 0 for r in rows)
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert os.listdir(tmp_path / "run" / "tensorboard")
    model, params = load_pretrained(str(tmp_path / "export"))
    assert model.config.vocab_size == 28
    # The SFT policy was cached: a second job reuses it.
    again = run(toy(load_config("ipo"), sft_cache), str(tmp_path / "run2"))
    assert again["sft"]["sft_cached"] is True


@pytest.mark.parametrize("name", ["tr_dpo"])  # the reference is part of the restored state
def test_killed_run_resumes_from_checkpoint_with_identical_result(tmp_path, sft_cache, name):
    straight = toy(load_config(name), sft_cache, export_dir=str(tmp_path / "a_export"))
    run(straight, str(tmp_path / "a"))
    # Second run: stop after the step-3 checkpoint (as a kill would), then relaunch the same job.
    first = toy(load_config(name), sft_cache)
    workdir = tmp_path / "b"
    run(first, str(workdir))
    ckpts = workdir / "checkpoints"
    shutil.rmtree(ckpts / "6")  # lose everything after step 3
    resumed = toy(load_config(name), sft_cache, export_dir=str(tmp_path / "b_export"))
    summary = run(resumed, str(workdir))
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    a = load_pretrained(str(tmp_path / "a_export"))[1]
    b = load_pretrained(str(tmp_path / "b_export"))[1]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


def test_bad_config_values_fail_before_compiling(tmp_path, sft_cache):
    for key, value, match in [("beta", 0.0, "config.beta"), ("ref_update_alpha", 1.5, "config.ref_update_alpha"),
                              ("loss", "dpoo", "config.loss"), ("batch_size", 0, "config.batch_size"),
                              ("model.scan_unroll", -3, "config.model.scan_unroll"),
                              ("optimizer.learning_rate", 1e39, "config.optimizer.learning_rate: must be in"),
                              ("delta", 2.0, "config.delta: set to 2.0, but the job's loss \\(dpo\\) does not read"),
                              ("loss", "sppo", "config.loss: the offline job cannot train with 'sppo'"),
                              ("job", "dpo", "config.job: unknown job 'dpo'"),
                              # late or missing checks found by a review (issue [15], item 6):
                              ("optimizer.name", "adam", "config.optimizer.name: must be one of 'adamw'"),
                              ("beta", float("inf"), "config.beta: must be finite"),
                              ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate: must be"),
                              ("eval.num_prompts", 0, "config.eval.num_prompts: must be >= 1"),
                              ("eval.max_new_tokens", 0, "config.eval.max_new_tokens: must be >= 1"),
                              ("model.hidden_size", 0, "config.model.hidden_size: must be >= 1"),
                              ("sft.steps", 0, "config.sft.steps: must be >= 1"),
                              ("optimizer.warmup_steps", -5, "config.optimizer.warmup_steps: must be >= 0"),
                              ("optimizer.weight_decay", -1.0, "config.optimizer.weight_decay: must be >= 0"),
                              ("eval.top_k", -3, "config.eval.top_k: must be >= 0"),
                              ("optimizer.max_grad_norm", float("inf"), "config.optimizer.max_grad_norm: must be"),
                              ("max_consecutive_skips", 0, "config.max_consecutive_skips: must be >= 1")]:
        cfg = toy(load_config("dpo"), sft_cache, **{key: value})
        with pytest.raises(ConfigError, match=match):
            run(cfg, str(tmp_path / "bad"))
    for key, value, match in [("active.strategies", "random,bald", "config.active.strategies"),
                              ("active.certainty", "mean", "config.active.certainty"),
                              ("loss", "selm", "config.loss: the active_dpo job cannot train with 'selm'")]:
        cfg = toy(load_config("active_dpo"), sft_cache, **{key: value})
        with pytest.raises(ConfigError, match=match):
            run(cfg, str(tmp_path / "bad_active"))


def test_cli_overrides_and_typo_rejection(tmp_path, sft_cache):
    env = {**os.environ, "JAXPREF_CACHE_DIR": str(tmp_path / "cache")}
    base = [sys.executable, "-m", "jaxpref.main", "--config=configs/slic.py", f"--workdir={tmp_path / 'cli'}",
            *toy_cli_flags(sft_cache), "--config.data.num_pairs=64", "--config.batch_size=16",
            "--config.num_steps=2", "--config.eval.num_prompts=16", "--config.eval.batch_size=16",
            "--config.log_every=1"]
    done = subprocess.run(base, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["method"] == "slic" and summary["steps"] == 2
    typo = subprocess.run(base + ["--config.bta=0.1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert typo.returncode != 0 and "bta" in typo.stderr


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + "good bad movie was very the a film great awful plot fine".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.mark.parametrize("config,rows", [
    ("dpo", [{"prompt": "the movie was", "chosen": "very good", "rejected": "bad"},
             {"prompt": "the plot was", "chosen": "great", "rejected": "awful plot"}]),
    ("kto", [{"prompt": "the movie was", "completion": "very good", "label": True},
             {"prompt": "the plot was", "completion": "awful", "label": False}]),
])
def test_job_on_own_hf_checkpoint_and_local_dataset(tmp_path, config, rows):
    from jaxpref.models import init_model, save_pretrained

    ckpt = tmp_path / "ckpt"
    model, params = init_model(dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                    num_kv_heads=2, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
                                    pad_token_id=0), seed=0)
    save_pretrained(model, params, str(ckpt))
    _word_tokenizer().save_pretrained(str(ckpt))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows * 40) + "\n")
    cfg = load_config(config)
    cfg.model.name, cfg.model.path = "hf", str(ckpt)
    cfg.data.source, cfg.data.max_length, cfg.data.max_prompt_length = str(data), 16, 8
    cfg.batch_size, cfg.num_steps, cfg.log_every = 8, 4, 2
    cfg.export_dir = str(tmp_path / "export")
    summary = run(cfg, str(tmp_path / "run"))
    assert summary["steps"] == 4 and summary["data"]["kept"] == 80
    if config == "dpo":
        assert 0.0 <= summary["held_out_reward_accuracy"] <= 1.0
    assert load_pretrained(str(tmp_path / "export"))[0].config.vocab_size == 16


def test_model_remat_reaches_the_policy_and_leaves_results_unchanged(sft_cache):
    from jaxpref.data.batches import collate_pairs
    from jaxpref.policy import resolve_policy
    from jaxpref.runtime import sharding
    from jaxpref.train.step import batch_groups, grouped_logps

    cfg = toy(load_config("dpo"), sft_cache)
    mesh, rules = sharding.make_mesh(cfg.mesh), sharding.resolve_rules(cfg.mesh.rules)
    plain = resolve_policy(cfg, mesh, rules)
    cfg.model.remat = "on"
    cfg.model.scan_unroll = 1
    remat = resolve_policy(cfg, mesh, rules)
    assert remat.model.remat is True and plain.model.remat is False  # auto: off for the toy model
    from jaxpref.policy import remat_of

    assert remat_of("auto", 576) and not remat_of("auto", 64) and not remat_of("off", 576) and remat_of("on", 64)
    assert remat_of("dots", 64) == "dots"
    assert remat.model.scan_unroll == 1 and plain.model.scan_unroll == 0
    pairs = plain.task.preference_dataset(cfg.seed, cfg.data.num_pairs)[:8]
    groups, _ = batch_groups(collate_pairs(pairs, pad_id=plain.pad_id, buckets=[32]))

    def loss(model, params):
        out = grouped_logps(model, params, groups, ("chosen", "rejected"))
        return out["chosen"].sum() - out["rejected"].sum()

    g_plain = jax.grad(lambda p: loss(plain.model, p))(plain.params)
    g_remat = jax.grad(lambda p: loss(remat.model, p))(remat.params)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(g_plain)) > 0
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
