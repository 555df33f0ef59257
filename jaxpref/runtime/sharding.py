"""Device mesh, logical-axis sharding rules, global batches and sharded jitted steps.

The mesh has three named axes (flax lm1b / MaxText naming):

- ``data``: pure data parallelism; params and optimizer state are replicated along it.
- ``fsdp``: the batch is split along it *and* params/optimizer state are split along it
  (ZeRO-3 style; XLA all-gathers each weight before use and reduce-scatters its gradient).
- ``tensor``: Megatron-style tensor parallelism over heads, MLP width and vocabulary.

Which param dim goes to which mesh axis is plain data: a list of ``(logical_name,
mesh_axis_or_None)`` pairs over the logical names of ``jaxpref.models.logical_axes``
(``vocab, embed, mlp, q_heads, kv_heads, head_dim, layers``). A dim whose size the mesh axis
does not divide is replicated instead (logged at DEBUG), so any rules fit any model.

Batches ``[B, ...]`` are split along dim 0 over ``('data', 'fsdp')``. With several processes
each one holds a contiguous slice of the global batch (``BatchStream`` with
``process_index/process_count``); ``global_batch`` assembles the slices into global arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxpref.config import ConfigError
from jaxpref.models import logical_axes

log = logging.getLogger("jaxpref")

PyTree = Any
Rules = list[tuple[str, str | None]]

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

RULE_PRESETS: dict[str, Rules] = {
    # Params split along the hidden size over `fsdp`; nothing over `tensor`.
    "fsdp": [
        ("vocab", None), ("embed", "fsdp"), ("mlp", None), ("q_heads", None), ("kv_heads", None),
        ("layers", None), ("head_dim", None),
    ],
    # Megatron: heads, MLP width and vocabulary over `tensor`; the hidden size replicated.
    "tensor": [
        ("vocab", "tensor"), ("embed", None), ("mlp", "tensor"), ("q_heads", "tensor"), ("kv_heads", "tensor"),
        ("layers", None), ("head_dim", None),
    ],
    # Both: every matrix is split over fsdp x tensor.
    "fsdp_tensor": [
        ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("q_heads", "tensor"), ("kv_heads", "tensor"),
        ("layers", None), ("head_dim", None),
    ],
}


# --- Mesh -------------------------------------------------------------------------------------


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves ``{'data': d, 'fsdp': f, 'tensor': t}`` (one may be -1) to sizes for ``num_devices``.

    Raises ``ConfigError`` naming ``config.mesh.<axis>`` when a size is invalid or the
    product does not equal ``num_devices``.
    """
    sizes = {}
    for name in MESH_AXES:
        size = int(axes[name])
        if size == 0 or size < -1:
            raise ConfigError(f"config.mesh.{name}: must be a positive size or -1, got {size}")
        sizes[name] = size
    fill = [n for n in MESH_AXES if sizes[n] == -1]
    if len(fill) > 1:
        raise ConfigError(f"config.mesh.{fill[1]}: only one mesh axis may be -1 (also {fill[0]})")
    known = int(np.prod([s for s in sizes.values() if s != -1]))
    if fill:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh.{fill[0]}: -1 cannot fill {num_devices} devices, the other axes "
                f"multiply to {known}, which does not divide it"
            )
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        product = " * ".join(f"{n}={sizes[n]}" for n in MESH_AXES)
        raise ConfigError(
            f"config.mesh.data/fsdp/tensor: {product} = {known} does not match jax.device_count() = {num_devices}"
        )
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp', 'tensor')`` mesh with Auto axis types over ``devices`` (default: all).

    ``axes`` maps each axis name to its size; one may be -1 (fill the rest). Auto axes let
    XLA propagate shardings and ``with_sharding_constraint`` work inside jitted code.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(axes, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


# --- Logical axis rules -----------------------------------------------------------------------


def resolve_rules(rules: str | Sequence[Sequence[str | None]]) -> Rules:
    """A preset name of ``RULE_PRESETS`` or a list of ``(logical_name, mesh_axis | None)`` pairs.

    Raises ``ConfigError`` (``config.mesh.rules``) on an unknown preset, a mesh axis not in
    ``MESH_AXES``, or a logical name listed twice.
    """
    if isinstance(rules, str):
        if rules not in RULE_PRESETS:
            raise ConfigError(f"config.mesh.rules: unknown preset {rules!r}; known: {sorted(RULE_PRESETS)}")
        return list(RULE_PRESETS[rules])
    out: Rules = []
    for pair in rules:
        logical, axis = pair
        if axis is not None and axis not in MESH_AXES:
            raise ConfigError(f"config.mesh.rules: {logical!r} maps to unknown mesh axis {axis!r}; known: {MESH_AXES}")
        if any(logical == seen for seen, _ in out):
            raise ConfigError(f"config.mesh.rules: logical axis {logical!r} is listed twice")
        out.append((str(logical), axis))
    return out


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules, *, where: str = ""
) -> PartitionSpec:
    """The ``PartitionSpec`` of an array with logical dim ``names`` and ``shape`` on ``mesh``.

    A dim is replicated when its name has no rule (or maps to None), when its mesh axis was
    already used by an earlier dim, or when the mesh axis size does not divide it.
    """
    table = dict(rules)
    spec: list[str | None] = []
    for name, size in zip(names, shape, strict=True):
        axis = table.get(name) if name is not None else None
        if axis is not None and axis in spec:
            log.debug("sharding %s: dim %r replicated, mesh axis %r already used", where, name, axis)
            axis = None
        if axis is not None and size % mesh.shape[axis]:
            log.debug("sharding %s: dim %r (size %d) replicated, not divisible by mesh axis %r (size %d)",
                      where, name, size, axis, mesh.shape[axis])
            axis = None
        spec.append(axis)
    return PartitionSpec(*spec)


def param_shardings(params: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """``NamedSharding`` of every leaf of a model's params (arrays or ``ShapeDtypeStruct``s)."""
    names = logical_axes(params)

    def sharding_of(path, leaf, leaf_names):
        spec = logical_to_spec(leaf_names, leaf.shape, mesh, rules, where=jax.tree_util.keystr(path))
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding_of, params, names)


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
    """``ShapeDtypeStruct``s of ``abstract`` carrying ``shardings`` (for sharded restores)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def describe(mesh: Mesh) -> dict:
    """``{"mesh": {axis: size}, "devices": n, "processes": n, "platform": ...}`` for summaries."""
    return {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "devices": int(mesh.devices.size),
            "processes": jax.process_count(), "platform": jax.devices()[0].platform}


# --- Batches ----------------------------------------------------------------------------------


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Dim 0 (the batch) split over ``('data', 'fsdp')``; other dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _check_process_rows(batch: NamedSharding, local_rows: int) -> None:
    """Checks that this process's devices hold exactly rows ``[i * local_rows, (i + 1) * local_rows)``."""
    global_rows = local_rows * jax.process_count()
    index_map = batch.addressable_devices_indices_map((global_rows,))
    rows = [range(global_rows)[index[0]] for index in index_map.values()]
    held = (min(r.start for r in rows), max(r.stop for r in rows))
    want = (jax.process_index() * local_rows, (jax.process_index() + 1) * local_rows)
    if held != want:
        raise ConfigError(
            f"config.mesh: process {jax.process_index()} owns batch rows {held} on this mesh but holds rows "
            f"{want}; data * fsdp must be a multiple of the process count ({jax.process_count()})"
        )


def global_batch(local: PyTree, mesh: Mesh) -> PyTree:
    """Global ``[B, ...]`` arrays from this process's ``[B / process_count, ...]`` host arrays.

    Process ``i`` must pass rows ``[i * B / P, (i + 1) * B / P)`` of the global batch (what
    ``BatchStream(process_index=i, process_count=P)`` yields). ``B`` must be divisible by
    ``data * fsdp``; raises ``ConfigError`` naming ``config.batch_size`` otherwise.
    """
    batch = batch_sharding(mesh)
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    leaves = jax.tree.leaves(local)
    if not leaves:
        return local
    local_rows = np.shape(leaves[0])[0]
    if (local_rows * jax.process_count()) % batch_devices:
        raise ConfigError(
            f"config.batch_size: the global batch {local_rows * jax.process_count()} is not divisible by "
            f"data * fsdp = {batch_devices}"
        )
    _check_process_rows(batch, local_rows)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch, np.asarray(x)), local)


# --- Step -------------------------------------------------------------------------------------


def jit_train_step(
    step: Callable, state_shardings: PyTree, mesh: Mesh, compiler_options: dict[str, str] | None = None,
    frozen_shardings: PyTree | None = None,
) -> Callable:
    """``jax.jit`` of ``step(state, groups, extras) -> (state, metrics)`` for ``mesh``.

    ``groups``/``extras`` leaves are ``[B, ...]`` global arrays split over the batch axes
    (``global_batch``); the state keeps ``state_shardings`` and is donated; metrics come
    back replicated. ``compiler_options``: XLA options (``compiler_options.train_compiler_options``).
    ``frozen_shardings``: the step is ``step(state, groups, extras, frozen)`` with read-only params
    (LoRA's base, a frozen reference: ``train.step.make_train_step``) laid out so (read, not donated).
    """
    batch = batch_sharding(mesh)
    extra = () if frozen_shardings is None else (frozen_shardings,)
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch, batch, *extra),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=compiler_options,
    )


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of (possibly sharded, multi-process) global arrays, on every process.

    With several processes this is a collective (every process must call it, e.g. before
    process 0 exports the params): each array is gathered fully replicated
    (``multihost_utils.process_allgather``), then read locally.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


# --- Host work split over processes -----------------------------------------------------------


def process_share(num_rows: int) -> tuple[int, int]:
    """``(lo, hi)``: the contiguous rows of a global batch of ``num_rows`` this process feeds
    (``num_rows`` divisible by the process count), as ``global_batch`` expects them."""
    per = num_rows // jax.process_count()
    return jax.process_index() * per, (jax.process_index() + 1) * per


def gather_host_rows(fn: Callable[[int, int], np.ndarray], num_rows: int) -> np.ndarray:
    """Runs a host function on this process's share of ``num_rows`` rows, returns all rows.

    ``fn(lo, hi)`` returns the ``[hi - lo]`` results of rows ``[lo, hi)`` (e.g. judge rewards of
    those responses). Each process computes ``ceil(num_rows / P)`` rows, the results are
    gathered, and every process gets the same ``[num_rows]`` numpy array.
    """
    count = jax.process_count()
    if count == 1:
        return np.asarray(fn(0, num_rows))
    from jax.experimental import multihost_utils

    per = -(-num_rows // count)
    lo, hi = min(jax.process_index() * per, num_rows), min((jax.process_index() + 1) * per, num_rows)
    local = np.asarray(fn(lo, hi), np.float64) if hi > lo else np.zeros((0,), np.float64)
    padded = np.zeros((per,), np.float64)
    padded[: hi - lo] = local
    return np.asarray(multihost_utils.process_allgather(padded)).reshape(-1)[:num_rows]


def kv_cache_sharding(mesh: Mesh, num_kv_heads: int) -> NamedSharding:
    """``[B, K, S, D]`` cache buffers: the batch over ``('data', 'fsdp')``, KV heads over
    ``tensor`` when it divides them (as the K/V projections are split), the rest replicated."""
    heads = "tensor" if num_kv_heads % mesh.shape["tensor"] == 0 else None
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, heads, None, None))
