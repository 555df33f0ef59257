"""The step loop shared by every job: feed batches, log, checkpoint, count throughput.

Metrics stay on device between log points (no host sync per step); at each log point they
are averaged, written to ``metrics.jsonl``/TensorBoard and shown on the progress bar.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from jaxpref.runtime.checkpointing import Checkpointer
from jaxpref.runtime.host_memory import CompileAhead
from jaxpref.runtime.metrics_log import MetricsLogger

log = logging.getLogger("jaxpref")

BatchFn = Callable[[int], tuple[dict, dict]]


class Preempted(Exception):
    """Raised after a SIGTERM/SIGINT once the current step's checkpoint is saved."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped by signal {signum} after step {step}; a checkpoint was saved, "
                         "run the same command again to resume")
        self.step, self.signum = step, signum


class NonFiniteError(RuntimeError):
    """Training produced non-finite losses/gradients beyond what the config tolerates."""


class StopSignals:
    """Context manager: SIGTERM/SIGINT set ``requested`` instead of killing the process, so the
    loop can finish its step, save a checkpoint and exit cleanly (preemptible TPU/spot VMs)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclasses.dataclass
class LoopStats:
    """Totals over the steps run, excluding the interval that held the first compile."""

    train_seconds: float = 0.0
    train_tokens: float = 0.0
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
) -> tuple[Any, LoopStats]:
    """Runs global steps ``[start, stop)``: ``state, metrics = step_fn(state, *batch_at(step))``.

    Saves a checkpoint every ``checkpoint_every`` steps and at ``stop`` when a checkpointer
    is given (``checkpoint_every=0``: only at ``stop``), with metadata ``meta(step, stats)``.
    ``logger=None`` writes no metrics (progress lines only). Steps with a non-finite loss or
    gradient leave the state unchanged (the step function does that); they are counted, and
    ``NonFiniteError`` is raised at the next log point when ``on_nonfinite="stop"`` or when
    every step since the last log point was skipped — before any checkpoint of those steps,
    so the last good checkpoint stays the latest. A jitted ``step_fn`` is compiled ahead of
    its first run per batch shape (``jaxpref.runtime.host_memory.CompileAhead``).
    """
    if hasattr(step_fn, "lower"):
        step_fn = CompileAhead(step_fn)
    stats = LoopStats()
    bar = tqdm(range(start, stop), initial=start, total=stop, desc=desc, mininterval=2.0,
               disable=jax.process_index() != 0)
    with StopSignals() as stop_signals:
        state = _loop(step_fn, state, batch_at, bar, stats, stop_signals, start=start, stop=stop, logger=logger,
                      log_every=log_every, checkpointer=checkpointer, checkpoint_every=checkpoint_every,
                      meta=meta, desc=desc, on_nonfinite=on_nonfinite)
    bar.close()
    return state, stats


def _loop(step_fn, state, batch_at, bar, stats, stop_signals, *, start, stop, logger, log_every, checkpointer,
          checkpoint_every, meta, desc, on_nonfinite):
    pending: list[dict] = []
    t_interval = time.perf_counter()
    compiled = False
    for step in bar:
        state, metrics = step_fn(state, *batch_at(step))
        pending.append(metrics)
        done = step + 1
        if done % log_every == 0 or done == stop:
            rows = jax.device_get(pending)
            pending = []
            avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            tokens = float(np.sum([r["tokens"] for r in rows]))
            skipped = int(np.sum([r.get("skipped", 0) for r in rows]))
            stats.skipped_steps += skipped
            if skipped and (on_nonfinite == "stop" or skipped == len(rows)):
                raise NonFiniteError(f"{desc}: {skipped} of the last {len(rows)} steps (up to step {done}) had a "
                                     f"non-finite loss or gradient; the last good checkpoint is kept")
            dt = max(time.perf_counter() - t_interval, 1e-9)
            if compiled:  # the first interval includes compilation
                stats.train_seconds += dt
                stats.train_tokens += tokens
            compiled = True
            avg["tokens_per_second"] = tokens / dt
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
        if checkpointer is not None and (at_checkpoint or done == stop):
            t_save = time.perf_counter()
            checkpointer.save(done, state, {**(meta(done, stats) if meta else {}), "step": done})
            t_interval += time.perf_counter() - t_save  # checkpoint time is not training time
        if stop_signals.requested is not None:
            if checkpointer is not None and not (at_checkpoint or done == stop):
                checkpointer.save(done, state, {**(meta(done, stats) if meta else {}), "step": done})
            raise Preempted(done, stop_signals.requested)
    return state
