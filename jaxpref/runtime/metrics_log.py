"""Training logs: ``metrics.jsonl``, TensorBoard event files, and a progress line.

Only process 0 writes (multi-host runs call this on every process; the others are no-ops).
"""

from __future__ import annotations

import json
import logging
import os

import jax

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
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # TensorBoard output is optional
                log.info("tensorboardX not installed: writing metrics.jsonl only")

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
    """All rows of ``<workdir>/metrics.jsonl``."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
