"""A tiny DPO job on a device mesh, for ``test_sharding.py`` and ``test_multihost.py``.

The fake CPU devices must be set before JAX starts, so the sharded runs happen in
subprocesses (the pytest process has one device):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharding_driver.py meshes --out=DIR
    XLA_FLAGS=--xla_force_host_platform_device_count=2 PYTHONPATH=tests \\
        launch/local.sh --module sharding_driver 2 multihost --out=DIR --mesh=1,2,2

Each writes ``DIR/<command>.json`` (the multi-process run from process 0, plus
``DIR/params.npz`` and an orbax checkpoint in ``DIR/checkpoints``). ``single_device_run``
is the unsharded one-process reference the tests compare against.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import numpy as np
import optax

from jaxpref.config import ConfigError
from jaxpref.data import BatchStream
from jaxpref.infer.sampling import SampleOutput, generate, left_pad
from jaxpref.models import init_model
from jaxpref.objectives import default_hparams, get_objective
from jaxpref.runtime import distributed, sharding
from jaxpref.runtime.checkpointing import Checkpointer
from jaxpref.tasks.synthetic import EOS, EchoTask
from jaxpref.train.state import TrainState, create_sharded_train_state, create_train_state, train_state_shardings
from jaxpref.train.step import batch_groups, make_train_step

TASK = EchoTask()
MODEL = dict(vocab_size=TASK.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
             num_kv_heads=2, model_type="llama", max_position_embeddings=64)
BATCH_SIZE, BUCKETS, STEPS, LEARNING_RATE = 16, (24,), 3, 1e-2
RULES = "fsdp_tensor"
# Cheaper XLA CPU compiles (about 2x), as XLA_FLAGS for subprocesses or jit compiler_options.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
FAST_COMPILE_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE_OPTIONS.items())
NEW_TOKENS = 6
# Losses match to 1e-5; params less tightly: AdamW divides each gradient by its own scale, so
# reduction-order noise in a near-zero gradient entry moves that param by up to ~1e-5 per step.
PARAM_ATOL = 1e-4


@functools.cache
def tiny_job():
    """``(model, params, tx, step)``: the tiny model, AdamW and the unjitted DPO step."""
    model, params = init_model(MODEL, seed=0)
    tx = optax.adamw(LEARNING_RATE)
    return model, params, tx, make_train_step(model, get_objective("dpo"), default_hparams(get_objective("dpo")), tx)


def batch_stream() -> BatchStream:
    """This process's slice of every global batch of the tiny job."""
    return BatchStream(TASK.preference_dataset(seed=0, n=64), batch_size=BATCH_SIZE, pad_id=0, buckets=BUCKETS,
                       process_index=jax.process_index(), process_count=jax.process_count(), padding_free=True)


def prompts() -> tuple[np.ndarray, np.ndarray]:
    """``[8, P]`` left-padded eval prompts."""
    return left_pad(TASK.eval_prompts(0, 8), pad_id=0)


def abstract_state(params, tx: optax.GradientTransformation) -> TrainState:
    """``jax.eval_shape`` of the tiny job's train state (policy, reference, AdamW)."""
    return jax.eval_shape(lambda p: create_train_state(p, tx, rng=jax.random.PRNGKey(0), with_reference=True), params)


def single_device_run(compiler_options: dict | None = None) -> dict:
    """The reference: ``STEPS`` plain ``jax.jit`` steps on the default device, no mesh.

    Returns ``{'losses': [STEPS], 'params': {keystr: array}}``.
    """
    _, params, tx, step = tiny_job()
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True)
    step_fn = jax.jit(step, compiler_options=compiler_options)
    stream = BatchStream(TASK.preference_dataset(seed=0, n=64), batch_size=BATCH_SIZE, pad_id=0, buckets=BUCKETS,
                         padding_free=True)
    losses = []
    for i in range(STEPS):
        state, metrics = step_fn(state, *packed_groups(stream, i))
        losses.append(float(metrics["loss"]))
    return {"losses": losses, "params": flat_numpy(state.params)}


def packed_groups(stream: BatchStream, step: int):
    """This process's ``(groups, extras)`` for ``step``, pairs packed behind their prompt, several
    per row, with the global batch's packed sizes (as ``jaxpref.main`` does by default)."""
    return batch_groups(stream.batch_at(step), share_prompt=True, packed_sizes=stream.packed_sizes(step),
                        padding_free=stream.padding_free, first_pair=stream.first_pair)


def greedy_samples(params, batch) -> SampleOutput:
    """Greedy continuations of the ``(ids, mask)`` prompt ``batch`` by the tiny model."""
    model = tiny_job()[0]
    return generate(model, params, *batch, jax.random.PRNGKey(0), max_new_tokens=NEW_TOKENS, eos_id=EOS,
                    temperature=0.0)


def flat_numpy(tree) -> dict[str, np.ndarray]:
    """``{keystr(path): numpy array}`` of a (global) pytree, gathered on every process."""
    host = sharding.to_host(tree)
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(host)}


def train(mesh, steps: int = STEPS):
    """``(losses, state, shardings, step_fn)`` after ``steps`` sharded DPO steps on ``mesh``."""
    _, params, tx, step = tiny_job()
    shardings = train_state_shardings(abstract_state(params, tx), tx, mesh, sharding.resolve_rules(RULES))
    state = create_sharded_train_state(params, tx, shardings, rng=jax.random.PRNGKey(0), with_reference=True)
    step_fn = sharding.jit_train_step(step, shardings, mesh)
    stream = batch_stream()
    stream.row_multiple = max(1, mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count())  # even row shards
    losses = []
    for i in range(steps):
        groups, extras = packed_groups(stream, i)
        state, metrics = step_fn(state, sharding.global_batch(groups, mesh), sharding.global_batch(extras, mesh))
        losses.append(float(metrics["loss"]))
    return losses, state, shardings, step_fn


def specs(tree) -> dict[str, list]:
    """``{keystr(path): PartitionSpec as a list}`` of a tree of arrays or shardings."""
    def spec_of(x):
        return list((x if isinstance(x, jax.sharding.NamedSharding) else x.sharding).spec)

    return {jax.tree_util.keystr(k): spec_of(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def check_restore_on_other_mesh(state: TrainState, saved_on: tuple[int, ...], out: str) -> dict:
    """Saves ``state`` (on mesh ``saved_on``), restores it onto the (2, 4, 1) mesh; reports equality."""
    _, params, tx, _ = tiny_job()
    ckpt = Checkpointer(os.path.join(out, "checkpoints"))
    ckpt.save(STEPS, state, {"mesh": list(saved_on)})
    mesh = sharding.make_mesh(dict(data=2, fsdp=4, tensor=1))
    target = train_state_shardings(abstract_state(params, tx), tx, mesh, sharding.resolve_rules(RULES))
    restored, meta = ckpt.restore(sharding.with_shardings(abstract_state(params, tx), target))
    ckpt.close()
    equal = jax.tree.map(np.array_equal, jax.device_get(state), jax.device_get(restored))
    placed = jax.tree.map(lambda x, s: x.sharding == s, restored, target)
    return {"values_equal": all(jax.tree.leaves(equal)), "shardings_match": all(jax.tree.leaves(placed)),
            "saved_mesh": meta["mesh"]}


def reference_and_data_meshes() -> dict:
    """The single-device reference, then the (8, 1, 1) and (2, 4, 1) meshes."""
    reference = single_device_run()
    results: dict = {"losses": {"single": reference["losses"]}, "compiles": {},
                     "reference_params": {k: v.tolist() for k, v in reference["params"].items()}}
    for shape in ((8, 1, 1), (2, 4, 1)):
        losses, _, _, step_fn = train(sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape))))
        results["losses"][",".join(map(str, shape))] = losses
        results["compiles"][",".join(map(str, shape))] = step_fn._cache_size()
    return results


def tensor_mesh(out: str) -> dict:
    """The (1, 4, 2) mesh: DPO steps, state layout, checkpoint to (2, 4, 1), sharded sampling."""
    shape = (1, 4, 2)
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
    losses, state, shardings, step_fn = train(mesh)
    results: dict = {"losses": {"1,4,2": losses}, "compiles": {"1,4,2": step_fn._cache_size()}}
    # Saving from a mesh that replicates little keeps orbax's per-replica slicing cheap.
    results["checkpoint"] = check_restore_on_other_mesh(state, shape, out)
    results["state_specs"] = specs(state)
    results["params"] = {k: v.tolist() for k, v in flat_numpy(state.params).items()}
    params = tiny_job()[1]
    sample = greedy_samples(jax.device_put(params, shardings.params), sharding.global_batch(prompts(), mesh))
    single = greedy_samples(params, prompts())
    results["samples"] = {"tokens": np.asarray(sample.tokens).tolist(),
                          "model_logps": np.asarray(sample.model_logps).tolist(),
                          "tokens_spec": list(sample.tokens.sharding.spec),
                          "single_tokens": np.asarray(single.tokens).tolist(),
                          "single_model_logps": np.asarray(single.model_logps).tolist()}
    filled = sharding.make_mesh(dict(data=2, fsdp=-1, tensor=2))
    results["filled_mesh"] = dict(filled.shape)
    try:
        sharding.global_batch({"ids": np.zeros((6, 4), np.int32)}, filled)
    except ConfigError as e:
        results["batch_error"] = str(e)
    return results


def cmd_meshes(out: str) -> dict:
    """Every check that needs 8 devices, in one process (a second process costs more CPU than
    it saves: each pays the imports and the init compile)."""
    results = reference_and_data_meshes()
    tensor = tensor_mesh(out)
    for key in ("losses", "compiles"):
        results[key].update(tensor.pop(key))
    return {**results, **tensor}


def cmd_multihost(out: str, mesh_axes: dict[str, int]) -> dict:
    """The sharded run as one process of a job; every process must call it."""
    distributed.initialize()
    mesh = sharding.make_mesh(mesh_axes)
    losses, state, _, _ = train(mesh)
    ckpt = Checkpointer(os.path.join(out, "checkpoints"))
    ckpt.save(STEPS, state, {"processes": jax.process_count()})
    ckpt.close()
    params = flat_numpy(state.params)
    results = {"losses": losses, "process_count": jax.process_count(), "device_count": jax.device_count(),
               "mesh": dict(mesh.shape)}
    try:  # the batch replicated across processes: each process's slice would be wrong
        sharding.global_batch({"ids": np.zeros((BATCH_SIZE // jax.process_count(), 4), np.int32)},
                              sharding.make_mesh(dict(data=1, fsdp=1, tensor=-1)))
    except ConfigError as e:
        results["replicated_batch_error"] = str(e)
    if distributed.is_main_process():
        np.savez(os.path.join(out, "params.npz"), **params)
    return results


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("meshes", "multihost"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--mesh", default="1,-1,1", help="multihost: data,fsdp,tensor sizes")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.command == "meshes":
        results = cmd_meshes(args.out)
    else:
        results = cmd_multihost(args.out, dict(zip(sharding.MESH_AXES, map(int, args.mesh.split(",")))))
    if distributed.is_main_process():
        with open(os.path.join(args.out, f"{args.command}.json"), "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
