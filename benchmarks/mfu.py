"""Model FLOPs utilisation (MFU) of the jaxpref DPO train step.

    python benchmarks/mfu.py --size tiny --json benchmarks/results/mfu_tiny.json
    python benchmarks/mfu.py --size 1b                # on a GPU/TPU (bf16 compute)

FLOPs of one DPO step (reference forward inside the step), for ``tokens = 2 * B * T`` padded
tokens (chosen and rejected rows, all positions are computed), ``N`` = parameters that take
part in a matmul (decoder layers + LM head; the embedding lookup is free), ``L`` layers,
``H`` query heads of size ``D``:

    policy forward + backward  = tokens * (6 * N + 12 * L * H * D * T)
    reference forward          = tokens * (2 * N +  4 * L * H * D * T)
    FLOPs per step             = tokens * (8 * N + 16 * L * H * D * T)

(the attention term counts ``Q K^T`` and ``P V`` over the full ``T x T`` square, which is what
the model computes; the Chinchilla/PaLM convention). MFU = FLOPs per step / step time / peak.

Peak: on CPU, the best of 5 float32 ``2048^3`` matmuls measured in the same run; on GPU/TPU,
the published dense bf16 peak of the device kind (``PEAK_BF16``), with a measured bf16
``8192^3`` matmul reported beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import harness

# Published dense (no sparsity) bf16 peaks, FLOP/s, matched by substring of ``device_kind``.
PEAK_BF16: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 70e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def step_flops(model: dict[str, Any], batch_size: int, seq_len: int) -> dict[str, float]:
    """FLOPs of one DPO step with the reference forward inside (see the module docstring)."""
    n = harness.param_count(model)["matmul"]
    heads = model["num_heads"]
    d = model.get("head_dim") or model["hidden_size"] // heads
    attn = model["num_layers"] * heads * d * seq_len
    tokens = 2 * batch_size * seq_len
    policy = tokens * (6 * n + 12 * attn)
    reference = tokens * (2 * n + 4 * attn)
    return {"matmul_params": n, "tokens": tokens, "policy": policy, "reference": reference, "total": policy + reference}


def matmul_peak(size: int, dtype: str, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of a jitted ``size^3`` matmul."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    jax.block_until_ready(mm(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def published_peak(device_kind: str) -> float | None:
    """Dense bf16 peak of a device kind, or None when unknown."""
    for key, value in PEAK_BF16.items():
        if key.lower() in device_kind.lower():
            return value
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(harness.PRESETS), default="tiny")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, help="timed steps (default: per size)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--prompt-len", type=int)
    parser.add_argument("--completion-len", type=int)
    parser.add_argument("--dtype", help="compute dtype (default: per size; 1b is bfloat16)")
    parser.add_argument("--param-dtype", help="param dtype (default float32)")
    parser.add_argument("--remat", action="store_true", help="checkpoint each layer (recompute in backward)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    preset = harness.get_preset(
        args.size,
        steps=args.steps,
        batch_size=args.batch_size,
        prompt_len=args.prompt_len,
        completion_len=args.completion_len,
        dtype=args.dtype,
        param_dtype=args.param_dtype,
    )

    import jax
    from jaxpref_dpo import DPOBench, collate, dtype_of, time_dpo

    from jaxpref.models import count_params, init_model

    device = jax.devices()[0]
    backend = jax.default_backend()
    model, params = init_model(
        preset.model,
        dtype=dtype_of(preset.dtype),
        param_dtype=dtype_of(preset.param_dtype),
        remat=args.remat,
    )
    # Unpacked pairs: the FLOP count below assumes every sequence runs in full.
    batches = collate(
        harness.make_pairs(preset, 1 + preset.steps), preset.batch_size, preset.seq_len, harness.PAD_ID,
        share_prompt=False,
    )
    bench = DPOBench(model, params, learning_rate=1e-5, beta=0.1, total_steps=1 + preset.steps)
    del params
    timing = time_dpo(bench, batches, steps=preset.steps)

    flops = step_flops(dict(preset.model), preset.batch_size, preset.seq_len)
    if backend == "cpu":
        peak, peak_source = matmul_peak(2048, "float32"), "measured float32 2048^3 matmul, best of 5"
        measured = peak
    else:
        measured = matmul_peak(8192, "bfloat16")
        peak = published_peak(device.device_kind)
        peak_source = f"published dense bf16 peak of {device.device_kind}"
        if peak is None:
            peak, peak_source = measured, f"measured bf16 8192^3 matmul ({device.device_kind} not in PEAK_BF16)"
    achieved = flops["total"] / timing["step_s"]
    result = {
        "size": args.size,
        "params": count_params(bench.state.params),
        "model": dict(preset.model),
        "dtype": preset.dtype,
        "param_dtype": preset.param_dtype,
        "remat": args.remat,
        "batch_size": preset.batch_size,
        "seq_len": preset.seq_len,
        "device_kind": device.device_kind,
        "backend": backend,
        "flops_per_step": flops,
        "step_s": timing["step_s"],
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "peak_source": peak_source,
        "measured_matmul_flops_per_s": measured,
        "mfu": achieved / peak,
        "timing": timing,
    }
    print(
        harness.format_table(
            ["size", "device", "step s", "TFLOP/step", "achieved GFLOP/s", "peak GFLOP/s", "MFU"],
            [
                [
                    args.size,
                    device.device_kind,
                    timing["step_s"],
                    flops["total"] / 1e12,
                    achieved / 1e9,
                    peak / 1e9,
                    f"{100 * result['mfu']:.1f}%",
                ]
            ],
        )
    )
    print(f"peak: {peak_source}; compile {timing['compile_s']:.1f}s")
    harness.write_json(args.json, {"machine": harness.machine_info(), **result})


if __name__ == "__main__":
    main(sys.argv[1:])
