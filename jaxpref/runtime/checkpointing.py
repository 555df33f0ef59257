"""Orbax checkpoints of the train state plus a JSON of run metadata, verified on restore.

Each save writes ``<dir>/<step>/`` atomically (orbax commits a step only when complete), so a
kill during a save leaves the previous checkpoint usable. Before a save, every array of the state
is fingerprinted on its devices (``fingerprint``: two wrapping uint32 sums of its bit pattern, one
plain and one position-weighted) and checked to be finite; a state with a non-finite value is
never written, and the fingerprints go into the metadata. A restore recomputes them over what it
read: a flipped bit, a truncated or missing file or a damaged metadata file makes that step fail,
and ``restore_latest`` falls back to the newest step that restores and verifies, with one warning
line naming the damaged step and why. Restores keep the dtypes and shardings of the abstract state
they are given.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxpref.runtime.host_memory import release_free_heap

log = logging.getLogger("jaxpref")


def sync_processes(name: str) -> None:
    """A barrier across the job's processes (a no-op for one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or a checkpoint that does not match what was saved."""


def _as_uint32(x: jax.Array) -> jax.Array:
    """``x``'s bit pattern as a flat uint32 array (8/16-bit values widened, 64-bit ones split)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    bits = x.dtype.itemsize * 8
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)


# Both reductions below are written so that XLA fuses them into one pass over each array with no
# temporary the size of the state (two separate sums materialised ``u * weights``; ``all(isfinite)``
# a boolean copy): a checkpoint of a 2 GiB state once cost 3 GiB of extra memory to fingerprint.


@jax.jit
def _fingerprints(tree) -> Any:
    def one(x):
        u = _as_uint32(jnp.asarray(x))
        weights = (jnp.arange(u.size, dtype=jnp.uint32) % jnp.uint32(2**31 - 1)) + jnp.uint32(1)
        zero = jnp.uint32(0)
        sums = jax.lax.reduce((u, u * weights), (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))
        return jnp.stack(sums)

    return jax.tree.map(one, tree)


def all_finite(x: jax.Array) -> jax.Array:
    """Scalar bool: no infinity and no NaN in ``x`` (floating, any shape; True when empty).

    ``x * 0`` is 0 for a finite element and NaN for an infinity or a NaN, and the sum carries the
    NaN; XLA fuses the product into the sum (no temporary). Not ``max |x| < inf``: on XLA:CPU the
    vectorised max of a float32 array of 4096 or more elements drops NaN operands, so a NaN param
    read as finite and could be checkpointed. Not ``all(isfinite(x))``, which writes a boolean copy
    of ``x`` first.
    """
    return jnp.isfinite(jnp.sum(x * jnp.zeros((), x.dtype)))


@jax.jit
def _finite(tree) -> Any:
    return jax.tree.map(lambda x: all_finite(x) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.array(True), tree)


def _paths(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def fingerprint(tree) -> dict[str, list[int]]:
    """``{leaf path: [sum, weighted sum]}`` of every array's bits (wrapping uint32), computed on
    the arrays' devices; one flipped bit changes the plain sum, a swap the weighted one."""
    values = jax.device_get(jax.tree.leaves(_fingerprints(tree)))
    return {path: [int(a), int(b)] for path, (a, b) in zip(_paths(tree), values)}


def non_finite_leaves(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` holding a NaN or an infinity."""
    flags = jax.device_get(jax.tree.leaves(_finite(tree)))
    return [path for path, ok in zip(_paths(tree), flags) if not bool(ok)]


# Bytes a save may have in flight (encoded for writing) at once, at least: orbax's default (96 GB)
# lets every array of the state be copied at once, so a save cost as much memory again as the
# state (+1.3 GiB for a 1.5 GiB one); with a bound it costs about this much.
SAVE_IN_FLIGHT_BYTES = 256 * 2**20


def save_in_flight_bytes(state) -> int:
    """The in-flight bound of a save of ``state``: ``SAVE_IN_FLIGHT_BYTES``, or room for two of its
    largest local arrays when they are bigger (orbax refuses an array above the bound)."""
    largest = max((s.data.nbytes for x in jax.tree.leaves(state) if isinstance(x, jax.Array)
                   for s in x.addressable_shards), default=0)
    return max(SAVE_IN_FLIGHT_BYTES, 2 * largest + 1)


class Checkpointer:
    """Saves/restores ``(state, meta)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.max_to_keep = max_to_keep
        self._in_flight = SAVE_IN_FLIGHT_BYTES
        self._manager = self._make_manager()

    def _make_manager(self) -> ocp.CheckpointManager:
        state = ocp.StandardCheckpointHandler(save_concurrent_gb=self._in_flight / 10**9)
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
            item_handlers={"state": state, "meta": ocp.JsonCheckpointHandler()},
        )

    def reload(self) -> None:
        """Re-reads the directory (after another process or a cleanup changed it)."""
        os.makedirs(self.directory, exist_ok=True)
        self._manager.reload()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> bool:
        """Writes the state and metadata for ``step`` and waits until it is committed.

        Returns False (and writes nothing) when the state holds a non-finite value.
        """
        bad = non_finite_leaves(state)
        if bad:
            log.error("not saving checkpoint %d: non-finite values in %s; the last good checkpoint (%s) is kept",
                      step, ", ".join(bad[:3]), self.latest_step())
            return False
        meta = {**meta, "fingerprints": fingerprint(state), "finite": True}
        needed = save_in_flight_bytes(state)
        if needed > self._in_flight:  # a bigger array than the bound allows: a manager with room for it
            self._manager.close()
            self._in_flight = needed
            self._manager = self._make_manager()
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._manager.wait_until_finished()
        release_free_heap()  # the write buffers, freed, back to the OS
        return True

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON metadata of ``step`` (default: latest), without restoring the state; None if
        there is no checkpoint. Raises (orbax's error) when the metadata cannot be read."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        meta = dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        meta.pop("fingerprints", None)
        meta.pop("finite", None)
        return meta

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``step`` (default: latest) into the structure/shardings of ``abstract_state``
        and checks it against the fingerprints saved with it (``CheckpointError`` if they differ).
        Returns ``(state, meta)``: the metadata as given to ``save``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        meta = dict(out.meta)
        saved = meta.pop("fingerprints", None)
        meta.pop("finite", None)
        if saved is not None:
            got = fingerprint(out.state)
            wrong = [p for p in saved if got.get(p) != saved[p]]
            if wrong or set(got) != set(saved):
                raise CheckpointError(f"checkpoint {step}: {len(wrong)} arrays differ from what was saved "
                                      f"(e.g. {(wrong or sorted(set(got) ^ set(saved)))[0]})")
        return out.state, meta

    def restore_latest(self, abstract_for: Callable[[dict], Any]) -> tuple[int, Any, dict] | None:
        """The newest step that restores and verifies: ``(step, state, meta)``, or None when there
        is no checkpoint at all. ``abstract_for(meta)`` gives the restore template of a step.

        A step whose metadata, data or fingerprints fail is skipped with one warning naming it and
        why; if every step fails, ``CheckpointError`` says so."""
        steps = self.all_steps()
        if not steps:
            return None
        problems, damaged = [], []
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
                state, meta = self.restore(abstract_for(meta), step)
            except Exception as err:  # noqa: BLE001 - any failure of a step means: try the previous one
                reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                problems.append(f"step {step}: {reason}")
                older = [s for s in steps if s < step]
                log.warning("checkpoint %s/%d is damaged (%s); %s", self.directory, step, reason,
                            f"falling back to step {older[-1]}" if older else "no older checkpoint")
                damaged.append(step)
                continue
            self._set_aside(damaged)
            return step, state, meta
        raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(problems)
                              + ". Move the folder away (or use another --workdir) to start afresh.")

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged step folders to ``<directory>.damaged/`` (kept for inspection, out of the way
        of the steps the resumed run saves again)."""
        if not steps:
            return
        if jax.process_index() == 0:
            aside = self.directory + ".damaged"
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                target = os.path.join(aside, f"{step}-{int(time.time())}")
                os.replace(os.path.join(self.directory, str(step)), target)
                log.warning("moved the damaged checkpoint %d to %s", step, target)
        sync_processes("jaxpref_checkpoint_set_aside")
        self._manager.reload()

    def delete(self, step: int) -> None:
        """Removes the checkpoint of ``step``."""
        self._manager.delete(step)

    def close(self) -> None:
        self._manager.close()
