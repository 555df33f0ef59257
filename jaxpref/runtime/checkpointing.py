"""Orbax checkpoints of the train state plus a small JSON of run metadata.

Each save writes ``<dir>/<step>/`` atomically (orbax commits a step only when complete), so a
kill during a save leaves the previous checkpoint usable. Restores keep dtypes and shardings of
the abstract state they are given.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves/restores ``(state, meta)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes the state and metadata for ``step`` and waits until it is committed."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON metadata of ``step`` (default: latest), without restoring the state; None if
        there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``step`` (default: latest) into the structure/shardings of ``abstract_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return out.state, dict(out.meta)

    def close(self) -> None:
        self._manager.close()
