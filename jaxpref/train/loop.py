"""The step loop shared by every job: feed batches, log, checkpoint, count throughput.

Metrics stay on device between log points (no host sync per step); at each log point they
are averaged, written to ``metrics.jsonl``/TensorBoard and shown on the progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxpref.runtime.checkpointing import Checkpointer
from jaxpref.runtime.host_memory import CompileAhead, CompileInterrupted
from jaxpref.runtime.metrics_log import MetricsLogger

log = logging.getLogger("jaxpref")

BatchFn = Callable[[int], tuple[dict, dict]]


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the current step's checkpoint is saved (``saved``), or
    without one when no step ran since the last checkpoint."""

    def __init__(self, step: int, signum: int, saved: bool = True):
        what = "a checkpoint was saved" if saved else "nothing was trained since the last checkpoint"
        where = f" after step {step}" if step >= 0 else ""
        super().__init__(f"stopped by signal {signum}{where}; {what}, run the same command again to resume")
        self.step, self.signum, self.saved = step, signum, saved


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses/gradients beyond what the config tolerates."""


class StopSignals:
    """Context manager for SIGTERM/SIGINT (preemptible TPU/spot VMs, Ctrl-C), held by the job.

    The first signal is acknowledged at once on stderr. Inside the step loop (``graceful``) it
    sets ``requested``: the loop stops after the current step (or at once, during a compilation),
    saves a checkpoint and raises ``Preempted``. Outside it (loading, sampling a round, the final
    evaluation: nothing was trained since the last checkpoint) the process exits at once
    (``os._exit(128 + signum)`` after the ``on_exit`` callbacks, e.g. releasing the workdir lock):
    raising from a signal handler in arbitrary library code is not safe. A second signal exits
    immediately the same way. ``StopSignals.current`` is the innermost one entered.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    _stack: list[StopSignals] = []

    def __init__(self, on_exit: Callable[[], None] | None = None):
        self.requested: int | None = None
        self.graceful = False
        self.on_exit = on_exit
        self._previous = {}

    def _exit(self, signum: int, message: str) -> None:
        os.write(2, message.encode())
        if self.on_exit is not None:
            try:
                self.on_exit()
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
        os._exit(128 + signum)

    @classmethod
    def current(cls) -> StopSignals | None:
        return cls._stack[-1] if cls._stack else None

    def _handle(self, signum, frame):
        if self.requested is not None:
            self._exit(signum, f"\nsignal {signum} again: exiting now; the last committed checkpoint is kept\n")
        self.requested = signum
        if self.graceful:
            os.write(2, f"\nsignal {signum}: stopping after the current step and saving a checkpoint "
                        "(send it again to exit at once)\n".encode())
            return
        self._exit(signum, f"\nsignal {signum}: stopping now; nothing was trained since the last checkpoint, run "
                           "the same command again to resume\n")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        StopSignals._stack.append(self)
        return self

    def __exit__(self, *exc):
        StopSignals._stack.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclasses.dataclass
class LoopStats:
    """Totals over the steps run, excluding the interval that held the first compile and the
    time later compiles of new batch shapes took (``compile_seconds``, all compiles)."""

    train_seconds: float = 0.0
    compile_seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # writing checkpoints (not in train_seconds either)
    tokens_seen: float = 0.0  # every step's tokens, the first interval's included
    train_tokens: float = 0.0
    train_steps: int = 0
    skipped_steps: int = 0
    last_metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float | None:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else None



def run_steps(
    step_fn: Callable,
    state: Any,
    batch_at: BatchFn,
    *,
    start: int,
    stop: int,
    logger: MetricsLogger | None,
    log_every: int,
    checkpointer: Checkpointer | None = None,
    checkpoint_every: int = 0,
    meta: Callable[[int, LoopStats], dict] | None = None,
    desc: str = "train",
    on_nonfinite: str = "skip",
    max_consecutive_skips: int = 20,
    to_save: Callable[[Any, int], Any] | None = None,
) -> tuple[Any, LoopStats]:
    """Runs global steps ``[start, stop)``: ``state, metrics = step_fn(state, *batch_at(step))``.

    Saves a checkpoint every ``checkpoint_every`` steps and at ``stop`` when a checkpointer
    is given (``checkpoint_every=0``: only at ``stop``), with metadata ``meta(step, stats)``.
    ``logger=None`` writes no metrics (progress lines only). ``to_save(state, step)``: what of the
    state a checkpoint at global ``step`` holds (default: all of it).

    Steps with a non-finite loss, gradient or update leave the state unchanged (the step
    function does that) and are counted. ``on_nonfinite="stop"`` raises ``NonFiniteError`` for the
    first such step; ``"skip"`` raises it once ``max_consecutive_skips`` steps in a row were
    skipped. Either way the decision depends only on the steps, not on ``log_every``: the flags
    are read at every log point and before every checkpoint, so no checkpoint is written after
    the condition is met and the last good checkpoint stays the latest.

    A jitted ``step_fn`` is compiled ahead of its first run per batch shape
    (``jaxpref.runtime.host_memory.CompileAhead``), in a worker thread, so that a SIGTERM/SIGINT
    during a long compilation is handled at once (``StopSignals``).
    """
    if hasattr(step_fn, "lower"):
        step_fn = CompileAhead(step_fn)
    stats = LoopStats()
    bar = tqdm(range(start, stop), initial=start, total=stop, desc=desc, mininterval=2.0,
               disable=jax.process_index() != 0)
    skips = _SkipPolicy(desc, on_nonfinite, max_consecutive_skips, start)
    job_signals = StopSignals.current()
    with contextlib.nullcontext(job_signals) if job_signals else StopSignals() as stop_signals:
        stop_signals.graceful = True
        if isinstance(step_fn, CompileAhead):
            step_fn.interrupt = lambda: stop_signals.requested is not None
        try:
            state = _loop(step_fn, state, batch_at, bar, stats, stop_signals, skips, start=start, stop=stop,
                          logger=logger, log_every=log_every, checkpointer=checkpointer,
                          checkpoint_every=checkpoint_every, meta=meta, desc=desc, to_save=to_save)
        except NonFiniteError as err:
            suspect = getattr(err, "suspect_from", None)
            if checkpointer is not None and suspect is not None:
                _drop_checkpoints_from(checkpointer, suspect, err)
            raise
        finally:
            stop_signals.graceful = False
            if isinstance(step_fn, CompileAhead):
                step_fn.interrupt = None
    bar.close()
    return state, stats


def _drop_checkpoints_from(checkpointer: Checkpointer, step: int, err: NonFiniteError) -> None:
    """Removes the checkpoints of ``step`` and later (their params keep producing non-finite steps,
    so a re-run must not resume from them) and says so in ``err``'s message."""
    dropped = [s for s in checkpointer.all_steps() if s >= step]
    for s in dropped:
        checkpointer.delete(s)
    kept = checkpointer.all_steps()
    note = (f"; the checkpoints of steps {dropped} held the params of step {step}, which produced them, and were "
            "removed" if dropped else "")
    err.args = (err.args[0] + note + (f"; the latest good checkpoint is step {kept[-1]}" if kept else
                                      "; no checkpoint is left: a re-run starts from the beginning"),)


class _SkipPolicy:
    """Reads the steps' ``skipped`` flags in step order and raises ``NonFiniteError`` per the policy.

    ``last_applied``: the last step whose update was applied (the loop's start counts as one).
    When ``max_consecutive`` steps in a row are skipped, the params that update produced are what
    keeps failing, so ``suspect_from`` names it: checkpoints from that step on hold those params.
    """

    def __init__(self, desc: str, on_nonfinite: str, max_consecutive: int, start: int):
        self.desc, self.stop_at_first, self.max_consecutive = desc, on_nonfinite == "stop", max_consecutive
        self.run, self.last_applied = 0, start

    def check(self, flags, last_step: int) -> None:
        first = last_step - len(flags) + 1
        for i, flag in enumerate(flags):
            step = first + i
            self.run = self.run + 1 if flag else 0
            if not flag:
                self.last_applied = step
            if flag and self.stop_at_first:
                raise NonFiniteError(f"{self.desc}: step {step} had a non-finite loss, gradient or update "
                                     "(on_nonfinite='stop'); the last good checkpoint is kept")
            if self.run >= self.max_consecutive:
                err = NonFiniteError(f"{self.desc}: {self.run} steps in a row (to step {step}) had a non-finite "
                                     "loss, gradient or update and were skipped")
                err.suspect_from = self.last_applied
                raise err


def _loop(step_fn, state, batch_at, bar, stats, stop_signals, skips, *, start, stop, logger, log_every, checkpointer,
          checkpoint_every, meta, desc, to_save=None):
    pending: list[dict] = []
    checked = 0  # pending rows whose skipped flags were already read
    t_interval = time.perf_counter()
    compiled = False
    compiling = lambda: getattr(step_fn, "compile_seconds", 0.0)  # noqa: E731 - CompileAhead's total
    compile_mark, compile_start = compiling(), compiling()

    def save(done):
        checkpointer.save(done, to_save(state, done) if to_save else state,
                          {**(meta(done, stats) if meta else {}), "step": done})

    for step in bar:
        try:
            state, metrics = step_fn(state, *batch_at(step))
        except CompileInterrupted:  # a stop signal during a compilation: the state is still the last one
            saved = checkpointer is not None and step > start
            if saved:
                save(step)
            raise Preempted(step, stop_signals.requested, saved) from None
        pending.append(metrics)
        done = step + 1
        if done % log_every == 0 or done == stop:
            rows = jax.device_get(pending)
            skips.check([int(r.get("skipped", 0)) for r in rows[checked:]], done)
            pending, checked = [], 0
            avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            tokens = float(np.sum([r["tokens"] for r in rows]))
            stats.tokens_seen += tokens
            stats.skipped_steps += int(np.sum([r.get("skipped", 0) for r in rows]))
            dt = max(time.perf_counter() - t_interval, 1e-9)
            in_compile, compile_mark = compiling() - compile_mark, compiling()
            stats.compile_seconds = compiling() - compile_start
            if compiled:  # the first interval includes compilation; later ones lose their compiles
                stats.train_seconds += max(dt - in_compile, 1e-9)
                stats.train_tokens += tokens
                stats.train_steps += len(rows)
            compiled = True
            avg["tokens_per_second"] = tokens / max(dt - in_compile, 1e-9)
            del avg["tokens"]
            if logger is not None:
                logger.write(done, avg)
            stats.last_metrics = avg
            bar.set_postfix(loss=f"{avg['loss']:.4f}", tok_s=f"{avg['tokens_per_second']:.0f}")
            acc = f" reward_acc {avg['reward_accuracy']:.3f}" if "reward_accuracy" in avg else ""
            log.info("%s step %d/%d loss %.4f%s tokens/s %.0f", desc, done, stop, avg["loss"], acc,
                     avg["tokens_per_second"])
            t_interval = time.perf_counter()
        at_checkpoint = checkpoint_every and done % checkpoint_every == 0
        wants_save = checkpointer is not None and (at_checkpoint or done == stop
                                                   or stop_signals.requested is not None)
        if wants_save:
            if pending[checked:]:  # every flag up to this step is read before a checkpoint of it
                skips.check([int(f) for f in jax.device_get([r["skipped"] for r in pending[checked:]])], done)
                checked = len(pending)
            t_save = time.perf_counter()
            save(done)
            saving = time.perf_counter() - t_save
            t_interval += saving  # checkpoint time is not training time
            stats.checkpoint_seconds += saving
        if stop_signals.requested is not None:
            raise Preempted(done, stop_signals.requested, checkpointer is not None)
    return state
