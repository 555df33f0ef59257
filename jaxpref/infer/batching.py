"""Batched inference over a list of rows, on a device mesh and across processes.

Sampling, scoring, reference log-probs and reward-model judging all walk a list of rows in
global batches of ``batch_size``: the last batch is padded by repeating its final row (one
shape, one compilation), each process builds only its contiguous share of each batch's rows
(``runtime.sharding.process_share``), the shares form global ``[batch_size, ...]`` arrays split
over the mesh's batch axes, and the outputs come back to every process as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from jaxpref.runtime import sharding

PyTree = Any


def batch_starts(num_items: int, batch_size: int, desc: str):
    """``range(0, num_items, batch_size)``, shown as a progress bar named ``desc`` when there are
    several batches (on process 0 only)."""
    starts = range(0, num_items, batch_size)
    return tqdm(starts, desc=desc, unit="batch", mininterval=5.0, disable=len(starts) < 4 or jax.process_index() != 0)


def map_batches(
    fn: Callable[[PyTree, int], PyTree],
    num_rows: int,
    batch_size: int,
    make_rows: Callable[[np.ndarray, slice], PyTree],
    *,
    mesh: Mesh | None,
    desc: str = "",
) -> Iterator[tuple[int, int, PyTree]]:
    """Yields ``(start, n_real, outputs)`` for each global batch of rows ``[start, start + batch_size)``.

    ``make_rows(rows, share)`` builds host arrays (a pytree of ``[len(rows[share]), ...]``) for the
    rows ``rows[share]`` this process feeds; ``rows`` are the whole global batch's row indices
    (for shapes that must agree across processes). ``fn(inputs, start)`` runs on them (a jitted
    function; ``inputs`` are global arrays on ``mesh``, or host arrays without one). ``outputs`` are numpy arrays of all
    ``batch_size`` rows (the first ``n_real`` are real), on every process.
    """
    for start in batch_starts(num_rows, batch_size, desc):
        n_real = min(batch_size, num_rows - start)
        rows = np.minimum(np.arange(start, start + batch_size), num_rows - 1)  # repeat the last row
        if mesh is None:
            out = fn(jax.tree.map(np.asarray, make_rows(rows, slice(None))), start)
        else:
            lo, hi = sharding.process_share(batch_size)
            out = fn(sharding.global_batch(make_rows(rows, slice(lo, hi)), mesh), start)
        yield start, n_real, sharding.to_host(out)
