"""The own-model / own-data path as a TRL user meets it (issue [14]): KTO's KL rows on real
lengths, resume only with a matching config, one-line CLI errors and --print_config, epochs and
gradient accumulation, held-out data from a test split, short runs, generation."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxpref.main import run
from tests.helpers import load_config
from tests.test_main import _word_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "good bad movie was very the a film great awful plot fine".split()


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    from jaxpref.models import init_model, save_pretrained

    path = tmp_path_factory.mktemp("ckpt")
    model, params = init_model(dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                    num_kv_heads=2, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1,
                                    pad_token_id=0), seed=0)
    save_pretrained(model, params, str(path))
    _word_tokenizer().save_pretrained(str(path))
    return str(path)


def words(rng, n):
    return " ".join(rng.choice(WORDS, n))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pair_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"prompt": words(rng, 3), "chosen": "very good", "rejected": "awful plot"} for _ in range(n)]


def own_cfg(name, hf_ckpt, source, **kw):
    cfg = load_config(name)
    cfg.model.name, cfg.model.path = "hf", hf_ckpt
    cfg.data.source, cfg.data.max_length, cfg.data.max_prompt_length = source, 16, 8
    cfg.batch_size, cfg.num_steps, cfg.log_every, cfg.checkpoint_every = 8, 4, 2, 2
    for k, v in kw.items():
        node = cfg
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return cfg


def test_kto_kl_rows_fit_the_largest_bucket_on_lengths_straddling_the_limits(tmp_path, hf_ckpt):
    from jaxpref.data.batches import UnpairedExample, collate_unpaired

    rng = np.random.default_rng(0)
    limit = 16
    examples = []
    for _ in range(64):  # prompts of 1-8 tokens, completions filling the rest of the limit or less
        p = int(rng.integers(1, 9))
        examples.append(UnpairedExample(list(range(3, 3 + p)), [5] * int(rng.integers(1, limit - p + 1)),
                                        bool(rng.integers(2))))
    for start in range(0, 64, 8):
        batch = collate_unpaired(examples[start:start + 8], pad_id=0, buckets=(8, limit))
        assert batch.ids.shape[1] <= limit and batch.kl_ids.shape[1] <= limit
        assert batch.kl_attention_mask.sum(1).min() > 0
    # The job that crashed: long prompts and completions on the KTO loss trains.
    rows = [{"prompt": words(rng, int(rng.integers(2, 12))), "completion": words(rng, int(rng.integers(1, 16))),
             "label": bool(i % 2)} for i in range(80)]
    cfg = own_cfg("kto", hf_ckpt, write_rows(tmp_path / "kto.jsonl", rows))
    summary = run(cfg, str(tmp_path / "run"))
    assert summary["steps"] == 4
    assert summary["held_out_examples"] == 4 and 0 <= summary["held_out_reward_auc"] <= 1  # KTO's held-out metric
    lo, hi = summary["held_out_reward_auc_ci95"]
    assert lo <= summary["held_out_reward_auc"] <= hi


def test_resume_with_a_changed_config_is_refused_and_overwrite_starts_over(tmp_path, hf_ckpt):
    from jaxpref.config import ConfigError

    source = write_rows(tmp_path / "d.jsonl", pair_rows(80))
    work = str(tmp_path / "run")
    run(own_cfg("dpo", hf_ckpt, source), work)
    before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"beta: 0.1 -> 0.5.*--config.overwrite=True"):
        run(own_cfg("dpo", hf_ckpt, source, beta=0.5), work)
    assert (tmp_path / "run" / "config.json").read_text() == before  # the record still matches the results
    more = run(own_cfg("dpo", hf_ckpt, source, num_steps=6, log_every=1), work)  # a resumable key may change
    assert more["resumed_from_step"] == 4 and more["steps"] == 6
    fresh = run(own_cfg("dpo", hf_ckpt, source, beta=0.5, overwrite=True), work)
    assert fresh["resumed_from_step"] == 0 and fresh["loss_hparams"]["beta"] == 0.5


def test_epochs_eval_split_and_short_run_reference(tmp_path, hf_ckpt, monkeypatch, caplog):
    import jaxpref.train.rounds as rounds

    folder = tmp_path / "data"
    folder.mkdir()
    write_rows(folder / "train.jsonl", pair_rows(80))
    write_rows(folder / "test.jsonl", pair_rows(12, seed=1))
    scored = []
    real = rounds.reference_logps_of
    monkeypatch.setattr(rounds, "reference_logps_of", lambda m, p, data, *a, **k: scored.append(len(data))
                        or real(m, p, data, *a, **k))
    summary = run(own_cfg("dpo", hf_ckpt, str(folder), num_epochs=0.5, ref_cache=False), str(tmp_path / "run"))
    assert summary["steps"] == 5  # ceil(0.5 * 80 / 8)
    assert summary["held_out_pairs"] == 12 and "test" in summary["held_out_from"]
    lo, hi = summary["held_out_reward_accuracy_ci95"]
    assert 0 <= lo <= summary["held_out_reward_accuracy"] <= hi <= 1
    assert scored == [40]  # half an epoch: the reference scored only the 5 batches' rows
    caplog.clear()
    with caplog.at_level("WARNING", logger="jaxpref"):
        run(own_cfg("dpo", hf_ckpt, str(folder), num_steps=60), str(tmp_path / "long"))
    assert any("epochs of 80 examples" in r.message for r in caplog.records)


def test_gradient_accumulation_equals_the_large_batch_gradient():
    import optax

    from jaxpref.data.batches import PairExample, collate_pairs
    from jaxpref.models import init_model
    from jaxpref.objectives import get_objective, hparams_of
    from jaxpref.train.state import create_train_state
    from jaxpref.train.step import batch_groups, make_train_step

    model, params = init_model(dict(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                                    num_kv_heads=2), seed=0)
    rng = np.random.default_rng(0)
    ex = [PairExample(list(rng.integers(3, 16, rng.integers(1, 5))), list(rng.integers(3, 16, rng.integers(1, 6))),
                      list(rng.integers(3, 16, rng.integers(1, 6)))) for _ in range(8)]
    groups, extras = batch_groups(collate_pairs(ex, pad_id=0, buckets=(16,)))
    objective = get_objective("dpo")
    cfg = load_config("dpo")
    tx = optax.sgd(1.0)  # the update is minus the gradient
    out = {}
    for accum in (1, 2, 4):
        step = jax.jit(make_train_step(model, objective, hparams_of(cfg, objective), tx, grad_accum_steps=accum))
        state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
        state = state.replace(ref_params=jax.tree.map(lambda x: x * 0.9, params))
        new, metrics = step(state, groups, extras)
        out[accum] = (new.params, float(metrics["loss"]), float(metrics["reward_accuracy"]))
    for accum in (2, 4):
        assert abs(out[accum][1] - out[1][1]) < 1e-6 and out[accum][2] == out[1][2]
        for a, b in zip(jax.tree.leaves(out[accum][0]), jax.tree.leaves(out[1][0])):
            np.testing.assert_allclose(a, b, atol=2e-6, rtol=0)


def test_checkpoints_hold_no_frozen_reference_and_optionally_no_optimizer(tmp_path, hf_ckpt):
    from jaxpref.runtime.checkpointing import CheckpointError

    source = write_rows(tmp_path / "d.jsonl", pair_rows(80))
    work = str(tmp_path / "run")
    run(own_cfg("dpo", hf_ckpt, source, precompute_ref_logps=False), work)
    meta = json.loads(open(os.path.join(work, "checkpoints", "4", "meta", "metadata")).read())
    # the frozen reference is the start params, read by the step: neither in the state nor saved
    assert not meta["with_reference"] and meta["saved"] == {"reference": False, "optimizer": True, "loss_state": True}
    assert run(own_cfg("dpo", hf_ckpt, source, precompute_ref_logps=False, num_steps=6), work)["steps"] == 6
    slim = str(tmp_path / "slim")
    run(own_cfg("dpo", hf_ckpt, source, save_optimizer_state=False), slim)
    size = lambda d: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)  # noqa: E731
    assert size(os.path.join(slim, "checkpoints", "4")) < 0.6 * size(os.path.join(work, "checkpoints", "6"))
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        run(own_cfg("dpo", hf_ckpt, source, save_optimizer_state=False, num_steps=6), slim)


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jaxpref.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_errors_are_one_line_and_print_config_lists_every_key(tmp_path, hf_ckpt):
    shown = cli("train", "--config=configs/dpo.py", "--print_config")
    assert shown.returncode == 0
    assert "optimizer.learning_rate = 0.0003" in shown.stdout and "# peak learning rate" in shown.stdout
    assert "num_epochs = 0.0" in shown.stdout and "grad_accum_steps = 1" in shown.stdout
    for args, expected in [
        (["--config=configs/dpo.py", "--config.betta=0.1"], 'Did you mean "beta"'),
        ([], "--config is required"),
        (["--config=configs/nope.py"], "No such file"),
    ]:
        done = cli("train", *args)
        assert done.returncode != 0 and expected in done.stderr and "Traceback" not in done.stderr, done.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = write_rows(tmp_path / "bad.jsonl", [{"prompt": "the", "chosen": "", "rejected": ""}] * 4)
    for source in (str(empty), bad):
        done = cli("train", "--config=configs/dpo.py", "--config.model.name=hf", f"--config.model.path={hf_ckpt}",
                   f"--config.data.source={source}", f"--workdir={tmp_path / 'w'}")
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "config.data.source" in done.stderr or source in done.stderr, done.stderr[-2000:]


def test_generate_command_and_helper(tmp_path, hf_ckpt):
    import jaxpref
    from jaxpref.models import load_pretrained, load_tokenizer

    model, params = load_pretrained(hf_ckpt)
    tok = load_tokenizer(hf_ckpt)
    texts = jaxpref.generate_text(model, params, tok, ["the movie was", "the plot"], max_new_tokens=5,
                                  temperature=0.0)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    again = jaxpref.generate_text(model, params, tok, ["the movie was"], max_new_tokens=5, temperature=0.0)
    assert again[0] == texts[0]  # greedy: deterministic, independent of the batch
    two = jaxpref.generate_text(model, params, tok, ["a film"], max_new_tokens=4, num_samples=2)
    assert len(two) == 1 and len(two[0]) == 2
    out = tmp_path / "out.jsonl"
    done = cli("generate", f"--model={hf_ckpt}", "--prompt=the movie was", "--prompt=a film", "--max_new_tokens=5",
               "--temperature=0", f"--output={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["the movie was", "a film"] and rows[0]["completion"] == texts[0]
    assert cli("generate", f"--model={hf_ckpt}").returncode != 0


def test_readme_own_data_walkthrough_replays(tmp_path, hf_ckpt):
    """The README's "Your own model and data" commands, run as written on small files."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Your own model and data"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    data = tmp_path / "data"
    data.mkdir()
    write_rows(data / "train.jsonl", pair_rows(64))
    write_rows(data / "test.jsonl", pair_rows(8, seed=1))
    script = (block.replace("/path/to/checkpoint", hf_ckpt).replace("data/", f"{data}/")
              .replace("runs/my_dpo", str(tmp_path / "my_dpo")))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "my_dpo" / "summary.json").read_text())
    assert summary["steps"] == 4  # 2 epochs of 64 pairs at batch 32
    assert summary["held_out_pairs"] == 8 and "test" in summary["held_out_from"]
    assert "grad_accum_steps = 1" in done.stdout  # --print_config
    assert "### prompt: Write a haiku about JAX." in done.stdout  # jaxpref generate on the export
