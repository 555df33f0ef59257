"""Precomputed reference log-probs on disk, reused by later and resumed runs.

A cache entry is ``<dir>/<key>.npz`` holding ``ref_<group>: [N] float32`` for the ``N``
examples it was computed for, in order. The key is a SHA-256 over everything the numbers
depend on:

- the reference weights: ``params_fingerprint`` (two 32-bit hashes per leaf, computed on the
  devices, so sharded and multi-host params are hashed without gathering them);
- the data: every token id of every example (``examples_digest``);
- how they are scored: the groups, shared-prompt packing and its sizes, the padding buckets,
  the batch size, the loss's scoring (LD-DPO weights), the model's compute dtype and LM-head chunk.

Changing any of them gives another key, so a stale entry is never read. An entry is written
atomically by process 0 (a temporary file and a rename); every process must see the folder
(a shared filesystem on multi-host jobs) or the entry is computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.runtime.cache_dirs import cache_dir

log = logging.getLogger("jaxpref")


def default_dir() -> str:
    """``$JAXPREF_REF_CACHE_DIR``, else ``$JAXPREF_CACHE_DIR/reference_logps``, else
    ``~/.cache/jaxpref/reference_logps``."""
    return cache_dir("reference_logps", "JAXPREF_REF_CACHE_DIR")


def _mix(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer (uint32 in, uint32 out, elementwise)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


@jax.jit
def _leaf_hashes(x: jax.Array) -> jax.Array:
    """``[2]`` uint32: two order-independent sums of mixed (bits, flat index) over ``x``'s elements.

    Sums of uint32 wrap modulo 2**32, so the result does not depend on how the reduction is split
    over devices; the flat index enters each term, so permuted weights hash differently.
    """
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
        bits = x.astype(jnp.uint32)
    index = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    out = []
    for seed in (0x9E3779B9, 0x7F4A7C15):
        out.append(jnp.sum(_mix(bits ^ _mix(index + jnp.uint32(seed))), dtype=jnp.uint32))
    return jnp.stack(out)


def params_fingerprint(params) -> str:
    """A hex digest of a params tree: its structure, shapes, dtypes and every weight's bits."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    h = hashlib.sha256(repr(treedef).encode())
    hashes = jax.device_get([_leaf_hashes(x) for _, x in leaves])
    for (path, x), digest in zip(leaves, hashes):
        h.update(f"{jax.tree_util.keystr(path)}|{x.shape}|{x.dtype}".encode())
        h.update(np.asarray(digest, np.uint32).tobytes())
    return h.hexdigest()


def examples_digest(examples: Sequence) -> str:
    """A hex digest of tokenized examples (``PairExample`` / ``UnpairedExample``), in order."""
    h = hashlib.sha256()
    for e in examples:
        for field in e:
            if field is None:
                h.update(b"N")
            elif isinstance(field, (bool, np.bool_)):
                h.update(b"T" if field else b"F")
            else:
                arr = np.asarray(field, np.int64)
                h.update(len(arr).to_bytes(8, "little"))
                h.update(arr.tobytes())
        h.update(b"|")
    return h.hexdigest()


def cache_key(*, params_digest: str, data_digest: str, settings: Mapping) -> str:
    """The entry name for these weights, data and scoring ``settings`` (JSON-able values)."""
    record = json.dumps({"params": params_digest, "data": data_digest, "settings": settings},
                        sort_keys=True, default=str)
    return hashlib.sha256(record.encode()).hexdigest()[:32]


def entry_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key}.npz")


def _everywhere(found: bool) -> bool:
    """True when every process found its entry (one answer for all: they compute together)."""
    if jax.process_count() == 1:
        return found
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([int(found)]))))


def load(directory: str, key: str, names: Sequence[str], count: int) -> dict[str, np.ndarray] | None:
    """The entry's ``{"ref_<name>": [count]}``, or None when it is missing or unreadable anywhere."""
    path = entry_path(directory, key)
    logps = None
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                logps = {f"ref_{n}": np.asarray(f[f"ref_{n}"], np.float32) for n in names}
            if any(v.shape != (count,) or not np.isfinite(v).all() for v in logps.values()):
                log.warning("reference cache %s does not fit this data: computing again", path)
                logps = None
        except Exception as err:  # noqa: BLE001 - a damaged entry is computed again, not fatal
            log.warning("reference cache %s is unreadable (%s): computing again", path, err)
            logps = None
    return logps if _everywhere(logps is not None) else None


def save(directory: str, key: str, logps: Mapping[str, np.ndarray], meta: Mapping) -> str:
    """Writes the entry (process 0; atomically) and returns its path."""
    path = entry_path(directory, key)
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **logps, meta=np.array(json.dumps(dict(meta), default=str)))
        os.replace(tmp, path)
    return path
