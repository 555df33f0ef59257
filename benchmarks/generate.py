"""Sampling throughput: ``jaxpref.infer.sampling.generate`` vs ``transformers`` ``model.generate`` (PyTorch).

    python benchmarks/generate.py --size small --json benchmarks/results/generate_small.json

A random Llama is made in PyTorch (``LlamaForCausalLM``, seed 0) and written with
``save_pretrained``; jaxpref loads the same weights with ``jaxpref.models.load_pretrained``.
Both generate greedily from the same left-padded prompts, in float32, with a KV cache, exactly
``--max-new-tokens`` tokens per row: the EOS id is disabled on both sides (jaxpref gets an id
no token can have; transformers gets ``eos_token_id=None``), so neither stops early and the
work is equal. Greedy outputs are compared token by token as a parity check.

Each framework runs in its own subprocess, alternating A B A B. Throughput is new tokens
(batch x max_new_tokens) per second of a whole ``generate`` call (prefill included), median
over the timed calls of all repeats. Excluded: compilation for jaxpref (reported as
``compile_s``) and one warm-up call on each side (reported as ``first_call_s``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

# --------------------------------------------------------------------------------- workers


def prepare_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A random ``LlamaForCausalLM`` in PyTorch, saved as a HF checkpoint folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from jaxpref.models import ModelConfig

    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(LlamaConfig(**ModelConfig(**spec["model"]).to_hf_dict()))
    model.save_pretrained(spec["model_dir"])
    return {"params": sum(p.numel() for p in model.parameters())}


def jaxpref_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Times ``jaxpref.infer.sampling.generate`` (compiled ahead of time)."""
    import jax
    import numpy as np

    from jaxpref.infer.sampling import generate, left_pad
    from jaxpref.models import load_pretrained

    model, params = load_pretrained(spec["model_dir"])
    ids, mask = left_pad(spec["prompts"], pad_id=harness.PAD_ID)
    rng = jax.random.key(0)
    start = time.perf_counter()
    compiled = generate.lower(
        model, params, ids, mask, rng, max_new_tokens=spec["max_new_tokens"], eos_id=-1, temperature=0.0
    ).compile()
    compile_s = time.perf_counter() - start

    def call():
        return jax.block_until_ready(compiled(params, ids, mask, rng))

    out, first_call_s = _timed(call)
    times = [_timed(call)[1] for _ in range(spec["calls"])]
    tokens = np.asarray(out.tokens)
    if not np.asarray(out.completion_mask).all():
        raise AssertionError("jaxpref stopped early: the EOS id was generated")
    return {
        "compile_s": compile_s,
        "first_call_s": first_call_s,
        "call_s": times,
        "tokens": tokens.tolist(),
        "peak_rss_mb": harness.peak_rss_mb(),
        "backend": jax.default_backend(),
    }


def hf_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Times ``transformers`` ``generate`` (greedy, dynamic or static KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    from jaxpref.infer.sampling import left_pad

    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    ids, mask = (torch.from_numpy(a).long() for a in left_pad(spec["prompts"], pad_id=harness.PAD_ID))
    n = spec["max_new_tokens"]
    kwargs = dict(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=harness.PAD_ID)
    if spec.get("static_cache"):
        kwargs["cache_implementation"] = "static"

    def call():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, **kwargs)

    out, first_call_s = _timed(call)
    times = [_timed(call)[1] for _ in range(spec["calls"])]
    new = out[:, ids.shape[1] :]
    if new.shape[1] != n:
        raise AssertionError(f"transformers generated {new.shape[1]} tokens, expected {n}")
    return {
        "first_call_s": first_call_s,
        "call_s": times,
        "tokens": new.tolist(),
        "peak_rss_mb": harness.peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": model.config._attn_implementation,
    }


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


WORKERS = {"prepare": prepare_worker, "jaxpref": jaxpref_worker, "hf": hf_worker, "hf_static": hf_worker}


# ---------------------------------------------------------------------------------- parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small", help="model preset (harness.PRESETS)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32, help="longest prompt (others are 1/2 to 1x)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--calls", type=int, default=3, help="timed generate calls per process")
    parser.add_argument("--repeats", type=int, default=2, help="A B pairs of processes")
    parser.add_argument("--hf-static-cache", action="store_true", help="also time transformers with a static cache")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def agreement(a: list[list[int]], b: list[list[int]]) -> dict[str, float]:
    """Rows generated identically, and the mean fraction of each row before the first mismatch."""
    same_rows = sum(x == y for x, y in zip(a, b)) / len(a)
    prefix = []
    for x, y in zip(a, b):
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
        prefix.append(k / len(x))
    return {"identical_rows": same_rows, "mean_common_prefix": sum(prefix) / len(prefix)}


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    preset = harness.get_preset(args.size)
    prompts = harness.make_prompts(preset.model["vocab_size"], args.batch_size, args.prompt_len, seed=args.seed)
    names = ["jaxpref", "hf"] + (["hf_static"] if args.hf_static_cache else [])
    with tempfile.TemporaryDirectory(prefix="jaxpref-bench-") as tmp:
        workdir = Path(tmp)
        spec = {
            "model": dict(preset.model),
            "model_dir": str(workdir / "model"),
            "prompts": prompts,
            "max_new_tokens": args.max_new_tokens,
            "calls": args.calls,
            "seed": args.seed,
        }
        prepared = harness.run_worker(__file__, "prepare", spec, workdir)
        runs = harness.run_alternating(__file__, names, args.repeats,
                                       lambda name: {**spec, "static_cache": name == "hf_static"}, workdir)

    new_tokens = args.batch_size * args.max_new_tokens
    summary: dict[str, Any] = {}
    for name in names:
        calls = [t for run in runs[name] for t in run["call_s"]]
        summary[f"{name}_new_tokens_per_s"] = new_tokens / harness.median(calls)
        summary[f"{name}_first_call_s"] = harness.median([run["first_call_s"] for run in runs[name]])
        summary[f"{name}_peak_rss_mb"] = harness.median([run["peak_rss_mb"] for run in runs[name]])
    summary["jaxpref_compile_s"] = harness.median([run["compile_s"] for run in runs["jaxpref"]])
    summary["speedup_vs_hf"] = summary["jaxpref_new_tokens_per_s"] / summary["hf_new_tokens_per_s"]
    summary["greedy_agreement"] = agreement(runs["jaxpref"][0]["tokens"], runs["hf"][0]["tokens"])
    for run in (r for rs in runs.values() for r in rs):
        del run["tokens"]  # compared above; too long to keep in the JSON

    settings = {
        "size": args.size,
        "params": prepared["params"],
        "model": dict(preset.model),
        "dtype": "float32",
        "batch_size": args.batch_size,
        "prompt_len_max": args.prompt_len,
        "prompt_lens": [len(p) for p in prompts],
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy, EOS disabled (fixed number of new tokens)",
        "calls": args.calls,
        "repeats": args.repeats,
        "seed": args.seed,
    }
    rows = []
    for name, label in (("hf", "transformers generate"), ("hf_static", "transformers generate, static cache")):
        if name in names:
            rows.append(
                [
                    label,
                    summary[f"{name}_new_tokens_per_s"],
                    summary["jaxpref_new_tokens_per_s"] / summary[f"{name}_new_tokens_per_s"],
                    summary[f"{name}_peak_rss_mb"],
                    f"first call {summary[f'{name}_first_call_s']:.2f}",
                ]
            )
    rows.insert(
        1,
        [
            "jaxpref.infer.sampling.generate",
            summary["jaxpref_new_tokens_per_s"],
            "",
            summary["jaxpref_peak_rss_mb"],
            f"compile {summary['jaxpref_compile_s']:.2f}",
        ],
    )
    print(
        f"size={args.size} params={prepared['params']:,} batch={args.batch_size} prompt<={args.prompt_len} "
        f"new={args.max_new_tokens} calls={args.calls} repeats={args.repeats}"
    )
    headers = ["framework", "new tokens/s", "jaxpref speed-up", "peak RSS MiB", "excluded s"]
    print(harness.format_table(headers, rows))
    print(f"greedy agreement jaxpref vs transformers: {summary['greedy_agreement']}")
    harness.write_json(args.json, {"machine": harness.machine_info(), "settings": settings, **summary, "runs": runs})


if __name__ == "__main__":
    if not harness.worker_main(WORKERS, sys.argv[1:]):
        main(sys.argv[1:])
