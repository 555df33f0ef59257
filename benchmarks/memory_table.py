"""Per-device memory of the DPO train state for Llama-style 1B / 7B / 70B models on several meshes.

    python benchmarks/memory_table.py [--rules fsdp_tensor] [--json memory.json]

Counts what ``jaxpref.train.state.TrainState`` holds: policy params, reference params and
the AdamW state of ``jaxpref.train.optim.make_optimizer`` (two moments per param), for float32
and for bfloat16 params (optax keeps the moments in the param dtype); and with LoRA
(``jaxpref.models.lora``, rank 16 on every projection): the frozen base once (no reference copy:
the reference is the base with the adapters off), the float32 adapters, a float32 copy of them
as a trust-region reference (TR-*; none for a frozen reference) and their AdamW moments, with the
base in float32 or bfloat16. Shapes come from
``jax.eval_shape`` of ``jaxpref.models.init_params`` (nothing is allocated) and shardings from
``jaxpref.runtime.sharding`` on abstract meshes (no devices needed). Activations, gradients and XLA
scratch space are not included.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType

from jaxpref.models import CausalLM, ModelConfig, count_params, init_params
from jaxpref.runtime import sharding
from jaxpref.train.state import TrainState, create_train_state, train_state_shardings

GIB = 2**30

# Published architectures: Llama 3.2 1B, Llama 2 7B, Llama 3 70B.
MODELS = {
    "1B": ModelConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                      num_kv_heads=8, head_dim=64, tie_word_embeddings=True),
    "7B": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                      num_kv_heads=32),
    "70B": ModelConfig(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                       num_kv_heads=8),
}
EIGHT = [(8, 1, 1), (1, 8, 1), (1, 4, 2), (1, 2, 4)]
MESHES = {
    "1B": EIGHT,
    "7B": EIGHT,
    "70B": [(64, 1, 1), (1, 64, 1), (1, 16, 4), (1, 8, 8), (1, 256, 1), (4, 64, 1), (1, 64, 4), (4, 16, 4)],
}


def abstract_state(config: ModelConfig, param_dtype) -> tuple[TrainState, optax.GradientTransformation]:
    """``(ShapeDtypeStruct TrainState with reference and AdamW, its optimizer)``."""
    model = CausalLM(config, dtype=param_dtype, param_dtype=param_dtype)
    params = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    state = jax.eval_shape(lambda p: create_train_state(p, tx, rng=jax.random.PRNGKey(0), with_reference=True), params)
    return state, tx


def bytes_per_device(tree, shardings) -> int:
    """Bytes of one device's shards of ``tree`` (every device holds the same amount)."""
    return int(sum(
        np.prod(s.shard_shape(x.shape), dtype=np.int64) * x.dtype.itemsize
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
    ))


def memory_row(name: str, mesh_shape: tuple[int, int, int], rules: sharding.Rules) -> dict:
    """Per-device GiB of policy, reference and AdamW state, in float32 and bfloat16."""
    mesh = AbstractMesh(mesh_shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    row: dict = {"model": name, "devices": int(np.prod(mesh_shape)), "mesh": list(mesh_shape)}
    for label, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        state, tx = abstract_state(MODELS[name], dtype)
        shardings = train_state_shardings(state, tx, mesh, rules)
        row["params_billion"] = count_params(state.params) / 1e9
        parts = {
            "policy": bytes_per_device(state.params, shardings.params),
            "reference": bytes_per_device(state.ref_params, shardings.ref_params),
            "adamw": bytes_per_device(state.opt_state, shardings.opt_state),
        }
        row[label] = {k: v / GIB for k, v in parts.items()} | {"total": sum(parts.values()) / GIB}
        lora_bytes = lora_parts(name, mesh, rules, dtype)
        row[f"lora_{label}"] = {k: v / GIB for k, v in lora_bytes.items()} | {
            "total": sum(lora_bytes.values()) / GIB}
    return row


LORA_RANK = 16


def lora_parts(name: str, mesh, rules: sharding.Rules, base_dtype) -> dict:
    """Per-device bytes of a LoRA train state: base, adapters, reference adapters, AdamW."""
    from jaxpref.models import lora

    model = CausalLM(MODELS[name], dtype=base_dtype, param_dtype=base_dtype)
    base = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    spec = lora.LoraSpec(LORA_RANK, float(LORA_RANK))
    adapters = jax.eval_shape(lambda p: lora.init_adapters(p, spec, jax.random.PRNGKey(0)), base)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5))
    state = jax.eval_shape(lambda p: create_train_state(p, tx, rng=jax.random.PRNGKey(0), with_reference=True),
                           adapters)
    shardings = train_state_shardings(state, tx, mesh, rules)
    return {"base": bytes_per_device(base, sharding.param_shardings(base, mesh, rules)),
            "adapters": bytes_per_device(state.params, shardings.params),
            "reference": bytes_per_device(state.ref_params, shardings.ref_params),
            "adamw": bytes_per_device(state.opt_state, shardings.opt_state)}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | devices | mesh (data, fsdp, tensor) | policy | reference | AdamW | total fp32 | total bf16 "
        f"| LoRA r{LORA_RANK}, fp32 base | LoRA r{LORA_RANK}, bf16 base |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f32 = r["fp32"]
        lines.append(
            f"| {r['model']} ({r['params_billion']:.2f}B) | {r['devices']} | ({', '.join(map(str, r['mesh']))}) "
            f"| {f32['policy']:.2f} | {f32['reference']:.2f} | {f32['adamw']:.2f} | {f32['total']:.2f} "
            f"| {r['bf16']['total']:.2f} | {r['lora_fp32']['total']:.2f} | {r['lora_bf16']['total']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default="fsdp_tensor", choices=sorted(sharding.RULE_PRESETS))
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rules = sharding.resolve_rules(args.rules)
    rows = [memory_row(name, shape, rules) for name, shapes in MESHES.items() for shape in shapes]
    print(f"Per-device memory in GiB (rules {args.rules!r}; policy/reference/AdamW columns are fp32):\n")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rules": args.rules, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
