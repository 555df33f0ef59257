"""Preemption and faults: SIGTERM saves and exits, SIGKILL loses nothing beyond the last
checkpoint, half-written checkpoints are ignored, non-finite training stops with the last good
checkpoint intact, bad data and configs are refused with the culprit named."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config, toy, toy_cli_flags

from jaxpref.main import run
from jaxpref.models import load_pretrained
from jaxpref.train.loop import NonFiniteError

STEPS = 24


def job_cmd(workdir, cache_dir, export_dir, *extra):
    return [sys.executable, "-m", "jaxpref.main", "--config=configs/dpo.py", f"--workdir={workdir}",
            *toy_cli_flags(cache_dir), "--config.data.num_pairs=128", "--config.batch_size=16",
            f"--config.num_steps={STEPS}", "--config.eval.num_prompts=16", "--config.eval.batch_size=16",
            "--config.log_every=1", "--config.checkpoint_every=5", f"--config.export_dir={export_dir}", *extra]


def wait_for_step(workdir, step, proc, timeout=300):
    """Blocks until metrics.jsonl reports ``step`` (or the process ends)."""
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return
        if os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            if lines and lines[-1]["step"] >= step:
                return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def params_of(export_dir):
    return jax.tree.leaves(load_pretrained(str(export_dir))[1])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sft_cache):
    """One uninterrupted run; its exported params are what every resumed run must reproduce."""
    base = tmp_path_factory.mktemp("reference")
    cache = sft_cache
    done = subprocess.run(job_cmd(base / "run", cache, base / "export"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return cache, params_of(base / "export")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_job_resumes_to_identical_parameters(tmp_path, reference_run, sig):
    cache, want = reference_run
    workdir, export = tmp_path / "run", tmp_path / "export"
    kill_at = int(np.random.default_rng().integers(7, STEPS - 5))  # a random step, not a checkpoint boundary
    proc = subprocess.Popen(job_cmd(workdir, cache, export), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(workdir, kill_at, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "run the same command again to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved and saved[-1] < STEPS
    if sig == signal.SIGTERM:  # SIGTERM saves the step it stopped at, not only the last periodic one
        assert saved[-1] >= kill_at
    resumed = subprocess.run(job_cmd(workdir, cache, export), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved[-1] and summary["steps"] == STEPS
    for a, b in zip(want, params_of(export)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_half_written_checkpoint_is_ignored(tmp_path, reference_run):
    cache, _ = reference_run
    cfg = toy(load_config("dpo"), cache)
    run(cfg, str(tmp_path))
    # A save killed midway leaves only orbax's temporary directory behind.
    partial = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 100)
    cfg = toy(load_config("dpo"), cache, num_steps=9)
    summary = run(cfg, str(tmp_path))
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 9


def test_nonfinite_training_stops_and_keeps_last_good_checkpoint(tmp_path, reference_run):
    cache, _ = reference_run
    # An absurd learning rate turns the params to inf after the first update: every later step is
    # non-finite and skipped, so the job stops at the next log point.
    cfg = toy(load_config("dpo"), cache, **{"optimizer.learning_rate": 1e30, "optimizer.max_grad_norm": 1e30,
                                           "optimizer.warmup_steps": 0})
    cfg.log_every = 2
    cfg.checkpoint_every = 1
    with pytest.raises(NonFiniteError, match="non-finite"):
        run(cfg, str(tmp_path))
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved, "the last good checkpoint must remain"


def test_malformed_dataset_line_is_named(tmp_path, reference_run):
    cache, _ = reference_run
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    cfg = toy(load_config("dpo"), cache)
    cfg.data.source = str(data)
    with pytest.raises(ValueError, match=r"pairs.jsonl.*line 2"):
        run(cfg, str(tmp_path / "run"))
