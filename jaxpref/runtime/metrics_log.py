"""Training logs: ``metrics.jsonl``, TensorBoard event files, and a progress line.

Only process 0 writes (multi-host runs call this on every process; the others are no-ops).
"""

from __future__ import annotations

import json
import logging
import os

import jax

from jaxpref.runtime.torch_free import torch_blocked

log = logging.getLogger("jaxpref")


class MetricsLogger:
    """Appends ``{"step": s, **metrics}`` lines to ``<workdir>/metrics.jsonl`` and TensorBoard."""

    def __init__(self, workdir: str, *, prefix: str = "train"):
        self.enabled = jax.process_index() == 0
        self.prefix = prefix
        self._path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = self._tensorboard()

    def _tensorboard(self, purge_step: int | None = None):
        try:
            with torch_blocked():  # tensorboardX imports torch when it can; scalars need none of it
                from tensorboardX import SummaryWriter
        except ImportError:  # TensorBoard output is optional
            log.info("tensorboardX not installed: writing metrics.jsonl only")
            return None
        return SummaryWriter(os.path.join(os.path.dirname(self._path), "tensorboard"), purge_step=purge_step)

    def truncate(self, step: int) -> None:
        """Drops what was logged after ``step`` (a run resumed from that step's checkpoint logs
        those steps again): rows of ``metrics.jsonl`` with a larger step, and TensorBoard events
        (``purge_step``)."""
        if not self.enabled:
            return
        rows = [r for r in read_metrics(os.path.dirname(self._path)) if r["step"] <= step]
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, self._path)
        if self._tb is not None:
            self._tb.close()
            self._tb = self._tensorboard(purge_step=step + 1)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "phase": self.prefix, **{k: float(v) for k, v in metrics.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{self.prefix}/{k}", float(v), int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of ``<workdir>/metrics.jsonl`` (a line cut short by a kill is skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
