"""Preemption and faults: SIGTERM saves and exits, SIGKILL loses nothing beyond the last
checkpoint, half-written checkpoints are ignored, non-finite training stops with the last good
checkpoint intact, bad data and configs are refused with the culprit named."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, load_config, toy, toy_cli_flags

from jaxpref.main import run
from jaxpref.models import load_pretrained
from jaxpref.runtime.metrics_log import read_metrics
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


def test_a_state_with_a_non_finite_value_is_never_saved(tmp_path):
    from jaxpref.runtime.checkpointing import Checkpointer

    ckpt = Checkpointer(str(tmp_path / "ck"))
    assert ckpt.save(1, {"w": np.ones(3, np.float32)}, {"step": 1}) is True
    assert ckpt.save(2, {"w": np.array([1.0, np.inf, 0.0], np.float32)}, {"step": 2}) is False
    assert ckpt.all_steps() == [1] and ckpt.read_meta() == {"step": 1}  # the metadata as saved
    ckpt.close()


@pytest.mark.parametrize("size", [3, 4096, 300_001])
@pytest.mark.parametrize("dtype", [np.float32, "bfloat16"])
def test_the_finiteness_check_sees_nan_and_infinity_in_arrays_of_any_size(size, dtype):
    """``all_finite`` (what a checkpoint save checks) flags one NaN or infinity anywhere: the
    earlier ``max |x| < inf`` missed NaN in float32 arrays of 4096 or more elements on XLA:CPU."""
    from jaxpref.runtime.checkpointing import all_finite, non_finite_leaves

    clean = np.linspace(-3e4, 3e4, size).astype(np.float32)
    assert bool(all_finite(jnp.asarray(clean, dtype)))
    for value in (np.nan, np.inf, -np.inf):
        for at in (0, size // 2, size - 1):
            x = clean.copy()
            x[at] = value
            assert not bool(all_finite(jnp.asarray(x, dtype))), (value, at)
    x = clean.copy()
    x[size // 3] = np.nan
    assert non_finite_leaves({"ok": jnp.asarray(clean), "bad": {"w": jnp.asarray(x, dtype)}}) == ["['bad']['w']"]


def saved_steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def test_a_diverging_run_leaves_no_poisoned_checkpoint(tmp_path, reference_run):
    """At lr 1e30 the first update is applied (params ~1e30, still finite) and every later step is
    non-finite, so it is skipped. The job stops after max_consecutive_skips and removes the
    checkpoints that hold those params (steps 1, 2, ...: saved before the failure showed), so the
    same workdir then trains normally at a sane learning rate instead of resuming into the failure."""
    from jaxpref.models import load_pretrained as load

    cache, _ = reference_run
    bad = {"optimizer.learning_rate": 1e30, "optimizer.max_grad_norm": 1e30, "optimizer.warmup_steps": 0,
           "max_consecutive_skips": 3, "checkpoint_every": 1, "log_every": 5, "keep_checkpoints": 10}
    with pytest.raises(NonFiniteError, match="3 steps in a row") as err:
        run(toy(load_config("dpo"), cache, **bad), str(tmp_path))
    assert "held the params of step 1" in str(err.value) and "no checkpoint is left" in str(err.value)
    assert saved_steps(tmp_path) == []
    summary = run(toy(load_config("dpo"), cache, export_dir=str(tmp_path / "export")), str(tmp_path))
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 6 and summary["skipped_steps"] == 0
    sft = jax.tree.leaves(load(summary["sft"]["sft_cache"])[1])
    assert all(np.isfinite(np.asarray(x)).all() for x in params_of(tmp_path / "export"))
    assert not all(np.allclose(a, b) for a, b in zip(sft, params_of(tmp_path / "export")))  # it trained


@pytest.mark.parametrize("log_every", [1, 5])
def test_skip_policy_does_not_depend_on_log_every(tmp_path, log_every):
    """Steps 2, 3 and 5 are non-finite: with max_consecutive_skips 2 the job stops at step 3 whatever
    log_every is; with 3 it runs to the end and counts 3 skipped steps; 'stop' stops at step 2."""
    from jaxpref.train.loop import run_steps

    def step_fn(state, groups, extras):
        bad = state + 1 in (2, 3, 5)
        return state + 1, {"loss": np.float32(1.0), "tokens": np.int32(1), "skipped": np.int32(bad)}

    def go(**kw):
        return run_steps(step_fn, 0, lambda s: ({}, {}), start=0, stop=8, logger=None, log_every=log_every, **kw)

    with pytest.raises(NonFiniteError, match="2 steps in a row \\(to step 3\\)"):
        go(max_consecutive_skips=2)
    state, stats = go(max_consecutive_skips=3)
    assert state == 8 and stats.skipped_steps == 3
    with pytest.raises(NonFiniteError, match="step 2 had a non-finite"):
        go(on_nonfinite="stop")


def test_checkpoint_writes_are_timed_apart_from_training():
    """Each write's time goes to ``checkpoint_seconds`` and none of it to ``train_seconds``."""
    import time

    from jaxpref.train.loop import run_steps

    class SlowCheckpointer:
        def __init__(self):
            self.saved = []

        def save(self, step, state, meta):
            time.sleep(0.3)
            self.saved.append(step)

    def step_fn(state, groups, extras):
        return state + 1, {"loss": np.float32(1.0), "tokens": np.int32(1), "skipped": np.int32(0)}

    ckpt = SlowCheckpointer()
    state, stats = run_steps(step_fn, 0, lambda s: ({}, {}), start=0, stop=6, logger=None, log_every=1,
                             checkpointer=ckpt, checkpoint_every=2)
    assert state == 6 and ckpt.saved == [2, 4, 6]
    assert 0.9 <= stats.checkpoint_seconds < 2.0
    assert stats.train_seconds < 0.3  # five instant steps timed; the writes are not in them


def test_malformed_dataset_line_is_named(tmp_path, reference_run):
    cache, _ = reference_run
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    cfg = toy(load_config("dpo"), cache)
    cfg.data.source = str(data)
    with pytest.raises(ValueError, match=r"pairs.jsonl.*line 2"):
        run(cfg, str(tmp_path / "run"))


# --- damaged checkpoints: integrity check and fallback ----------------------------------------


def _largest_data_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(path, offsets):
    data = bytearray(path.read_bytes())
    for i in offsets:
        data[i % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "data file truncated": lambda d: _largest_data_file(d).write_bytes(_largest_data_file(d).read_bytes()[:100]),
    "data file deleted": lambda d: _largest_data_file(d).unlink(),
    "manifest.ocdbt deleted": lambda d: (d / "state" / "manifest.ocdbt").unlink(),
    "_METADATA deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "meta/ deleted": lambda d: shutil.rmtree(d / "meta"),
    "state/ deleted": lambda d: shutil.rmtree(d / "state"),
    "one bit flipped": lambda d: _flip(_largest_data_file(d), [4321]),
    "256 bytes flipped": lambda d: _flip(_largest_data_file(d), np.random.default_rng(0).integers(0, 10**6, 256)),
}


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, sft_cache):
    """A finished toy DPO job with checkpoints at steps 3 and 6, and its job set-up (for templates)."""
    from jaxpref.main import setup

    base = tmp_path_factory.mktemp("checkpointed")
    cfg = toy(load_config("dpo"), sft_cache, export_dir=str(base / "export"))
    run(cfg, str(base / "run"))
    job = setup(toy(load_config("dpo"), sft_cache), str(base / "setup"))
    return base, job


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, checkpointed_run, damage, caplog):
    from jaxpref.runtime.checkpointing import Checkpointer

    base, job = checkpointed_run
    shutil.copytree(base / "run" / "checkpoints", tmp_path / "checkpoints")
    template = lambda meta: job.trainer.abstract_state(meta["with_reference"])  # noqa: E731
    pristine = Checkpointer(str(base / "run" / "checkpoints"))
    want = pristine.restore(template(pristine.read_meta(3)), 3)[0]
    pristine.close()
    DAMAGE[damage](tmp_path / "checkpoints" / "6")
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    with caplog.at_level("WARNING", logger="jaxpref"):
        step, state, meta = ckpt.restore_latest(template)
    ckpt.close()
    assert step == 3 and meta["step"] == 3
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), state, want)
    assert all(jax.tree.leaves(chex_equal))
    assert any("checkpoints/6 is damaged" in r.getMessage() and "falling back to step 3" in r.getMessage()
               for r in caplog.records)


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path, checkpointed_run):
    from jaxpref.runtime.checkpointing import Checkpointer, CheckpointError

    base, job = checkpointed_run
    shutil.copytree(base / "run" / "checkpoints", tmp_path / "checkpoints")
    for step in ("3", "6"):
        DAMAGE["meta/ deleted"](tmp_path / "checkpoints" / step)
    (tmp_path / "checkpoints" / "9").mkdir()  # a bare step folder
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*checkpoints: step 9: .*step 6: .*step 3"):
        ckpt.restore_latest(lambda meta: job.trainer.abstract_state(meta["with_reference"]))
    ckpt.close()


def test_a_job_resumes_past_a_damaged_checkpoint_to_the_same_params(tmp_path, checkpointed_run, sft_cache):
    """A flipped bit in the last checkpoint of a finished run: re-running with more steps resumes from
    the step before (the damage is detected, not loaded, and set aside) and ends exactly where the
    same resume ends when that checkpoint is simply missing."""
    base, _ = checkpointed_run
    shutil.copytree(base / "run", tmp_path / "a")  # the same resume with step 6 lost instead of damaged
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "6")
    run(toy(load_config("dpo"), sft_cache, num_steps=9, export_dir=str(tmp_path / "straight")), str(tmp_path / "a"))
    shutil.copytree(base / "run", tmp_path / "b")
    DAMAGE["one bit flipped"](tmp_path / "b" / "checkpoints" / "6")
    summary = run(toy(load_config("dpo"), sft_cache, num_steps=9, export_dir=str(tmp_path / "resumed")),
                  str(tmp_path / "b"))
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 9
    for a, b in zip(params_of(tmp_path / "straight"), params_of(tmp_path / "resumed")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_metrics(str(tmp_path / "b"))]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 9]  # resumed metrics cut back to step 3
    assert [p.name.split("-")[0] for p in (tmp_path / "b" / "checkpoints.damaged").iterdir()] == ["6"]


# --- one writer per workdir ---------------------------------------------------------------------


def test_a_second_job_on_a_busy_workdir_is_refused(tmp_path, reference_run):
    """Two real processes on one workdir: the second stops at once, naming the holder; the first
    finishes normally and releases the lock."""
    cache, _ = reference_run
    workdir = tmp_path / "run"
    first = subprocess.Popen(job_cmd(workdir, cache, tmp_path / "export"), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock = workdir / ".jaxpref.lock"
    t0 = time.time()
    while not lock.exists() and first.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    assert lock.exists(), first.stderr.read()[-2000:]
    assert json.loads(lock.read_text())["pid"] == first.pid
    second = subprocess.run(job_cmd(workdir, cache, tmp_path / "export2"), cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode != 0
    assert f"is in use by pid {first.pid} on " in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert not lock.exists()
    rows = read_metrics(str(workdir))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer: no interleaved rows


def test_a_stale_lock_is_taken_over(tmp_path, reference_run, caplog):
    import socket

    cache, _ = reference_run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".jaxpref.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                        "started": "yesterday"}))
    with caplog.at_level("WARNING", logger="jaxpref"):
        summary = run(toy(load_config("dpo"), cache, num_steps=2), str(tmp_path))
    assert summary["steps"] == 2 and not (tmp_path / ".jaxpref.lock").exists()
    assert any(f"pid {dead.pid}" in r.getMessage() and "taking it over" in r.getMessage() for r in caplog.records)


def test_several_processes_without_a_coordinator_are_refused(tmp_path, reference_run):
    from jaxpref.config import ConfigError

    cache, _ = reference_run
    cfg = toy(load_config("dpo"), cache, **{"distributed.num_processes": 2})
    with pytest.raises(ConfigError, match="config.distributed.num_processes: 2 processes need "
                                          "config.distributed.coordinator_address"):
        run(cfg, str(tmp_path))


def test_a_damaged_sft_cache_is_trained_again(tmp_path, caplog):
    cache = tmp_path / "cache"
    first = run(toy(load_config("dpo"), cache, num_steps=2), str(tmp_path / "a"))
    entry = first["sft"]["sft_cache"]
    with open(os.path.join(entry, "model.safetensors"), "r+b") as f:
        f.write(b"\xff" * 16)  # an invalid safetensors header
    with caplog.at_level("WARNING", logger="jaxpref"):
        again = run(toy(load_config("dpo"), cache, num_steps=2), str(tmp_path / "b"))
    assert again["sft"]["sft_cached"] is False and again["sft"]["sft_cache"] == entry
    assert any(entry in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert any(p.startswith(os.path.basename(entry) + ".damaged-") for p in os.listdir(os.path.dirname(entry)))


# --- signals ------------------------------------------------------------------------------------


SIGNALS_SCRIPT = """
import os, signal, sys, time
from jaxpref.train.loop import StopSignals
with StopSignals() as s:
    s.graceful = True  # as inside the step loop
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    assert s.requested == signal.SIGINT
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
sys.exit(3)  # not reached: the second signal exits at once
"""


def test_a_first_signal_is_acknowledged_and_a_second_exits_at_once():
    done = subprocess.run([sys.executable, "-c", SIGNALS_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 128 + signal.SIGINT, done.stderr
    assert "signal 2: stopping after the current step" in done.stderr
    assert "signal 2 again: exiting now; the last committed checkpoint is kept" in done.stderr


def test_a_signal_during_the_first_compilation_stops_the_job_at_once(tmp_path, reference_run):
    """SIGTERM early in the job (loading, the reference pass or the first step's compilation):
    acknowledged and stopped at once; nothing was trained, so no checkpoint; the same command then
    runs the job."""
    cache, want = reference_run
    workdir, export = tmp_path / "run", tmp_path / "export"
    proc = subprocess.Popen(job_cmd(workdir, cache, export), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = workdir / "rounds"  # does not exist for this job; wait for the reference pass's end instead
    t0 = time.time()
    while proc.poll() is None and not (workdir / "config.json").exists() and time.time() - t0 < 120:
        time.sleep(0.02)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert not log.exists()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "signal 15: stopping" in err and "run the same command again to resume" in err
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
    resumed = subprocess.run(job_cmd(workdir, cache, export), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(want, params_of(export)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


EXIT_DURING_COMPILATION = """
import sys, time
import jax, jax.numpy as jnp
import jaxpref.main as main
from jaxpref.runtime.host_memory import CompileAhead, CompileInterrupted
from jaxpref.train.loop import Preempted

def f(x):
    for i in range(300):
        x = jnp.sin(x @ x) + i
    return x

def run(cfg, workdir):
    step = CompileAhead(jax.jit(f))
    t0 = time.time()
    step.interrupt = lambda: time.time() - t0 > 0.3
    try:
        step(jnp.ones((64, 64)))
    except CompileInterrupted:
        raise Preempted(step=-1, signum=15, saved=False) from None

main.run = run
main.cli([sys.argv[0], "--config=configs/dpo.py"])
"""


def test_a_job_stopped_during_a_compilation_exits_with_the_signal_status():
    """The compilation abandoned by a stop still runs in its thread: the job leaves with status
    128 + 15 (finalizing the interpreter under that thread would abort it: SIGABRT)."""
    out = subprocess.run([sys.executable, "-c", EXIT_DURING_COMPILATION], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 128 + signal.SIGTERM, out.stderr[-2000:]
    assert "stopped by signal 15" in out.stderr


def test_a_signal_during_a_compilation_stops_without_waiting_for_it(tmp_path, reference_run):
    """The first SIGTERM arrives while the step is compiling (before step 1): the job stops right
    away with the resume message instead of finishing the compilation and a step first."""
    cache, _ = reference_run
    from jaxpref.runtime.host_memory import CompileAhead, CompileInterrupted

    class SlowLowered:
        def compile(self):
            time.sleep(5)

    class Jitted:
        def lower(self, *args):
            return SlowLowered()

    step = CompileAhead(Jitted())
    step.interrupt = lambda: time.time() - t0 > 0.3
    t0 = time.time()
    with pytest.raises(CompileInterrupted):
        step(0, np.zeros(3))
    assert time.time() - t0 < 3  # did not wait for the 5 s compilation
