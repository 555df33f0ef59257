"""Real workloads, jaxpref vs TRL side by side: SmolLM2-135M DPO on chat-like lengths, a fixed-length
sweep, and one online DPO round.

    python -m jaxpref.assets smollm2
    python benchmarks/real_workload.py --json benchmarks/results/real_workload.json
    python benchmarks/real_workload.py --quick --json /tmp/rw.json      # a smoke test (minutes)

Both sides train the same weights (the shipped GGUF exported to an HF folder once) on the same
generated rows (``make_rows``: English-like word sequences of exact token counts; prompts and
responses log-normal over 16-1024 tokens, as in real chat preference data; seeded), batch 8
pairs, AdamW, the sigmoid DPO loss, beta 0.1, float32, every row fitting ``max_length`` so
neither side truncates. TRL runs ``DPOTrainer`` at its best CPU settings for this job:
``precompute_ref_log_probs=True`` (no reference forward in the step; its ``padding_free`` is
unavailable for DPO in TRL 1.16). jaxpref runs its own job (``jaxpref.main.run`` of
``configs/dpo.py``) with its defaults: precomputed (and cached) reference log-probs,
shared-prompt padding-free packing, the chunked LM head.

Throughput counts real tokens: each pair's prompt + chosen and prompt + rejected tokens (the
attention-mask tokens TRL feeds, whatever jaxpref packs), over the timed steps: every step but
the first for both; jaxpref's compiles of new batch shapes are reported apart
(``compile_seconds``), as the steady state of a long run does not pay them. Peak memory is each
run's process ``VmHWM``. Runs alternate (jaxpref, TRL, jaxpref, ...), each in its own process.

The online round: the same prompts (``examples/sentiment_prompts``), 2 samples each, the VADER
reward function as judge, one DPO update per 8 prompts; jaxpref's ``sentiment_online_dpo`` job
with one round and no quick evaluation inside it (``eval.round_prompts=0``: TRL's round has none),
TRL's ``trl.experimental.online_dpo.OnlineDPOTrainer`` with ``reward_funcs`` and HF ``generate``,
with ``gradient_checkpointing=False``: TRL's default (True) makes it generate without the KV cache
(``use_cache=False``), which took this round from 143 to 505 s (2026-12-08).
Seconds of the whole round (sampling, judging, training; jaxpref's compiles included, its
compilation cache empty) and per trained token; then jaxpref's same job again in a new process,
its compiled steps loaded from the cache of the first (``config.compile_cache``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
WORDS = harness.WORDS
BATCH = 8
FULL = {"steps": 3, "lengths": [128, 256, 512, 1024], "max_length": 1024, "max_prompt_length": 512,
        "online_prompts": 32, "online_new_tokens": 48}
QUICK = {"steps": 2, "lengths": [64, 128], "max_length": 256, "max_prompt_length": 128,
         "online_prompts": 16, "online_new_tokens": 16}


# ----------------------------------------------------------------------------------- data


def text_of(tokenizer, rng, tokens: int) -> str:
    """English-like words that ``tokenizer`` turns into ``tokens`` tokens (a leading space; when no
    word sequence hits the count exactly, the longest below it)."""
    count = lambda w: len(tokenizer(" " + " ".join(w), add_special_tokens=False)["input_ids"])  # noqa: E731
    words: list[str] = []
    while (n := count(words)) < tokens:
        words.extend(str(w) for w in rng.choice(WORDS, size=max(1, (tokens - n) // 2)))
    while words and count(words) > tokens:
        words.pop()
    singles = [w for w in WORDS if count([w]) == 1]  # top up with one-token words
    while singles and (n := count(words)) < tokens:
        words.append(str(rng.choice(singles)))
        if count(words) > tokens:
            words.pop()
            break
    return " " + " ".join(words)


def make_rows(tokenizer, n: int, *, max_length: int, max_prompt_length: int, fixed: int | None = None,
              seed: int = 0) -> list[dict]:
    """``n`` prompt / chosen / rejected rows. ``fixed = T``: prompt ``T // 4`` tokens and both
    responses the rest of ``T`` (less 2 for EOS); else log-normal lengths over [16, 1024] like chat
    preference data (prompt median 96, responses median 192), cut to fit ``max_prompt_length``
    and ``max_length``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        if fixed:
            p = fixed // 4
            c = r = fixed - p - 2
        else:
            p = int(np.clip(rng.lognormal(math.log(96), 0.9), 16, max_prompt_length))
            c, r = (int(np.clip(rng.lognormal(math.log(192), 0.9), 16, max_length - p - 2)) for _ in range(2))
        rows.append({"prompt": text_of(tokenizer, rng, p), "chosen": text_of(tokenizer, rng, c),
                     "rejected": text_of(tokenizer, rng, r)})
    return rows


def row_tokens(tokenizer, rows: list[dict]) -> list[int]:
    """Real tokens of each row as both sides train it: prompt + chosen and prompt + rejected (+ EOS)."""
    n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    return [2 * n(r["prompt"]) + n(r["chosen"]) + n(r["rejected"]) + 2 for r in rows]


# --------------------------------------------------------------------------------- workers


def prepare_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from jaxpref.assets import asset_path, export_hf
    from jaxpref.models import load_tokenizer

    hf = Path(spec["hf_dir"])
    if not (hf / "config.json").exists():
        export_hf(asset_path("smollm2"), str(hf))
    tok = load_tokenizer(hf)
    out = {}
    n = BATCH * (spec["steps"] + 1)
    for name, fixed in [("variable", None)] + [(f"T{t}", t) for t in spec["lengths"]]:
        rows = make_rows(tok, n, max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"],
                         fixed=fixed)
        folder = Path(spec["data_dir"]) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        tokens = row_tokens(tok, rows)
        lengths = [t // 2 for t in tokens]
        out[name] = {"pairs": len(rows), "real_tokens": sum(tokens), "mean_sequence_tokens": sum(lengths) / n,
                     "max_sequence_tokens": max(lengths), "min_sequence_tokens": min(lengths)}
    return out


def _jaxpref_cfg(spec: dict[str, Any], name: str, overrides: dict):
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import load_config, set_field

    cfg = load_config(name)
    for k, v in {"model.name": "hf", "model.path": spec["hf_dir"], "ref_cache_dir": spec["cache_dir"],
                 "compile_cache_dir": spec["xla_dir"],  # this run's own (empty at its start)
                 "log_every": 1, "checkpoint_every": 10_000, "overwrite": True,  # a benchmark run starts over
                 **({"model.remat": spec["remat"]} if spec.get("remat") else {}),
                 **overrides}.items():
        set_field(cfg, k, v)
    return cfg


def jaxpref_dpo_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from jaxpref.main import run
    from jaxpref.runtime.torch_free import keep_torch_out

    keep_torch_out()  # as the jaxpref command does first (runtime.torch_free)

    overrides = {"data.source": spec["data"], "data.max_length": spec["max_length"],
                 "data.max_prompt_length": spec["max_prompt_length"], "data.eval_fraction": 0.0,
                 "batch_size": BATCH, "num_steps": spec["steps"] + 1, "optimizer.learning_rate": 1e-5,
                 "optimizer.warmup_steps": 0}
    start = time.perf_counter()
    summary = run(_jaxpref_cfg(spec, "dpo", overrides), str(Path(spec["workdir"]) / spec["name"]))
    out = {"tokens_per_s": summary["train_tokens_per_second"], "step_s": summary["train_step_seconds"],
           "compile_seconds": summary["train_compile_seconds"], "wall_s": time.perf_counter() - start,
           "peak_rss_mb": harness.peak_rss_mb(), "reference_cache": summary["reference_cache"]}
    if spec.get("second_run"):  # the same data again: the reference log-probs come from the cache
        again = run(_jaxpref_cfg(spec, "dpo", {**overrides, "precompute_only": True}),
                    str(Path(spec["workdir"]) / (spec["name"] + "_again")))
        out["second_run_cache_hit"] = again["cache_hit"]
        out["second_run_wall_seconds"] = again["wall_seconds"]
    return out


def trl_dpo_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    ends: list[float] = []
    tokens: list[int] = []
    seen_keys: set = set()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    class Counting(DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            masks = {k: int(v.sum()) for k, v in inputs.items() if k.endswith("attention_mask")}
            # prompt + chosen and prompt + rejected, however the collator splits them
            tokens.append(sum(masks.values()) + masks.get("prompt_attention_mask", 0))
            seen_keys.update(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    args = DPOConfig(
        output_dir=str(Path(spec["workdir"]) / spec["name"]), per_device_train_batch_size=BATCH,
        max_steps=spec["steps"] + 1, learning_rate=1e-5, warmup_steps=0, weight_decay=0.0, beta=0.1,
        loss_type=["sigmoid"], max_length=spec["max_length"], use_cpu=True, precompute_ref_log_probs=True,
        precompute_ref_batch_size=BATCH, dataloader_num_workers=0, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=0)
    data = load_dataset("json", data_files=str(Path(spec["data"]) / "train.jsonl"), split="train")
    trainer = Counting(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer,
                       callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    step_s = (ends[-1] - ends[0]) / (len(ends) - 1)
    return {"tokens_per_s": sum(tokens[1:]) / (ends[-1] - ends[0]), "step_s": step_s,
            "wall_s": time.perf_counter() - start, "peak_rss_mb": harness.peak_rss_mb(),
            "torch_threads": torch.get_num_threads(), "batch_keys": sorted(seen_keys)}


def _prompts(n: int) -> list[str]:
    rows = (ROOT / "examples" / "sentiment_prompts" / "train.jsonl").read_text().splitlines()
    return [json.loads(r)["prompt"] for r in rows[:n]]


def jaxpref_online_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import jaxpref.main as main_module
    from jaxpref.runtime.torch_free import keep_torch_out

    keep_torch_out()  # as the jaxpref command does first (runtime.torch_free)

    folder = Path(spec["workdir"]) / "online_prompts"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = _prompts(spec["online_prompts"] + 8)
    (folder / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:-8]))
    (folder / "test.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[-8:]))
    n = spec["online_prompts"]
    cfg = _jaxpref_cfg(spec, "sentiment_online_dpo", {
        "data.prompts": str(folder), "selm.rounds": 1, "selm.num_samples": 2, "num_prompts": n,
        "num_steps": n // BATCH, "batch_size": BATCH, "sampling.max_new_tokens": spec["online_new_tokens"],
        # no quick evaluation inside the round (TRL's round has none; the job's final one is not timed)
        "sampling.batch_size": 2 * n, "eval.num_prompts": 8, "eval.round_prompts": 0, "eval.batch_size": 8,
        "eval.max_new_tokens": 4, "optimizer.warmup_steps": 0})
    timed = {}
    real = main_module.run_rounds

    def run_rounds(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            timed["round_s"] = time.perf_counter() - t0

    main_module.run_rounds = run_rounds
    summary = main_module.run(cfg, str(Path(spec["workdir"]) / "jaxpref_online"))
    return {"round_s": timed["round_s"], "trained_tokens": summary["train_tokens"],
            "compile_seconds": summary["train_compile_seconds"],
            "checkpoint_seconds": summary["train_checkpoint_seconds"], "peak_rss_mb": harness.peak_rss_mb(),
            "judge_calls": summary.get("judge_calls")}


def trl_online_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from jaxpref.tasks.sentiment import vader_reward

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    counted = {"tokens": 0, "calls": 0}

    def reward(prompts, completions, **kwargs):
        n = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
        counted["tokens"] += sum(n(p) + n(c) for p, c in zip(prompts, completions))
        counted["calls"] += len(completions)
        return vader_reward(prompts, completions)

    n = spec["online_prompts"]
    args = OnlineDPOConfig(
        output_dir=str(Path(spec["workdir"]) / "trl_online"), per_device_train_batch_size=BATCH, max_steps=n // BATCH,
        learning_rate=1e-4, warmup_steps=0, beta=0.1, max_new_tokens=spec["online_new_tokens"], temperature=1.0,
        use_cpu=True, dataloader_num_workers=0, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=0, gradient_checkpointing=False)
    data = Dataset.from_list([{"prompt": p} for p in _prompts(n)])
    trainer = OnlineDPOTrainer(model=policy, ref_model=reference, reward_funcs=[reward], args=args, train_dataset=data,
                               processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return {"round_s": time.perf_counter() - start, "trained_tokens": counted["tokens"],
            "judge_calls": counted["calls"], "peak_rss_mb": harness.peak_rss_mb()}


WORKERS = {"prepare": prepare_worker, "jaxpref": jaxpref_dpo_worker, "trl": trl_dpo_worker,
           "jaxpref_online": jaxpref_online_worker, "trl_online": trl_online_worker}


# ------------------------------------------------------------------------------------ main


def plot(sweep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = sorted(sweep)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for side, style in (("jaxpref", "o-"), ("trl", "s--")):
        a.plot(ts, [sweep[t][f"{side}_tokens_per_s"] for t in ts], style, label=side)
        b.plot(ts, [sweep[t][f"{side}_peak_mib"] / 1024 for t in ts], style, label=side)
    for ax, title in ((a, "real tokens / s"), (b, "peak RSS (GiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_xlabel("sequence length T (tokens)")
        ax.set_title(f"SmolLM2-135M DPO, batch {BATCH} pairs: {title}", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> None:
    if harness.worker_main(WORKERS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="short lengths and few steps (a smoke test)")
    parser.add_argument("--only", default="variable,sweep,online", help="comma-separated parts to run")
    parser.add_argument("--hf-dir", default=None, help="an HF causal-LM folder instead of the exported SmolLM2")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--lengths", default=None, help="comma-separated fixed lengths of the sweep "
                        "(default 128,256,512,1024; --quick: 64,128)")
    parser.add_argument("--remat", default="", choices=("", "auto", "on", "off", "dots"),
                        help="jaxpref's config.model.remat (default: the config's, auto; TRL keeps every "
                             "activation, as remat=off does)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.lengths:
        settings["lengths"] = [int(t) for t in args.lengths.split(",")]
        if max(settings["lengths"]) > settings["max_length"]:
            parser.error(f"--lengths: at most max_length {settings['max_length']}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="real_workload_"))
    common = {**settings, "hf_dir": args.hf_dir or str(work / "smollm2_hf"), "data_dir": str(work / "data"),
              "workdir": str(work / "runs"), "cache_dir": str(work / "ref_cache"),
              "xla_dir": str(work / f"xla_{time.strftime('%Y%m%d_%H%M%S')}"), "remat": args.remat}
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    data = harness.run_worker(__file__, "prepare", common, work / "logs")
    out: dict[str, Any] = {"settings": {**settings, "batch_pairs": BATCH, "dtype": "float32", "loss": "sigmoid DPO",
                                        "beta": 0.1, "trl": "DPOTrainer(precompute_ref_log_probs=True)",
                                        "trl_online": "OnlineDPOTrainer(gradient_checkpointing=False)",
                                        "jaxpref_remat": args.remat or "auto",
                                        "jaxpref": "configs/dpo.py defaults (precomputed reference, padding-free "
                                                   "shared-prompt packing, chunked LM head)",
                                        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 exported to HF float32)"
                                        if not args.hf_dir else args.hf_dir},
                           "data": data, "machine": harness.machine_info()}

    def pair(name: str, folder: str, **extra) -> dict:
        spec = {**common, "data": str(Path(common["data_dir"]) / folder), "name": name}
        got = {}
        for side in ("jaxpref", "trl"):  # alternating, one process each
            got[side] = harness.run_worker(__file__, side, {**spec, "name": f"{side}_{name}", **extra},
                                           work / "logs", timeout=3600)
            print(f"{name} {side}: {got[side]['tokens_per_s']:.0f} tokens/s, {got[side]['step_s']:.1f} s/step, "
                  f"peak {got[side]['peak_rss_mb'] / 1024:.2f} GiB", flush=True)
        return got

    rows = []
    if "variable" in parts:
        v = pair("variable", "variable", second_run=True)
        out["variable_length"] = v
        out["speedup_vs_trl"] = v["jaxpref"]["tokens_per_s"] / v["trl"]["tokens_per_s"]
        out["peak_memory_ratio_vs_trl"] = v["jaxpref"]["peak_rss_mb"] / v["trl"]["peak_rss_mb"]
        out["second_run_skips_reference_pass"] = bool(v["jaxpref"].get("second_run_cache_hit"))
        rows.append(["variable 16-1024", f"{v['jaxpref']['tokens_per_s']:.0f}", f"{v['trl']['tokens_per_s']:.0f}",
                     f"{out['speedup_vs_trl']:.2f}", f"{v['jaxpref']['peak_rss_mb'] / 1024:.2f}",
                     f"{v['trl']['peak_rss_mb'] / 1024:.2f}", f"{out['peak_memory_ratio_vs_trl']:.2f}"])
        harness.write_json(args.json, out)  # each part as it ends: a later failure loses nothing
    if "sweep" in parts:
        sweep = {}
        for t in settings["lengths"]:
            g = pair(f"T{t}", f"T{t}")
            sweep[t] = {"jaxpref_tokens_per_s": g["jaxpref"]["tokens_per_s"],
                        "trl_tokens_per_s": g["trl"]["tokens_per_s"],
                        "jaxpref_peak_mib": g["jaxpref"]["peak_rss_mb"], "trl_peak_mib": g["trl"]["peak_rss_mb"],
                        "jaxpref_step_s": g["jaxpref"]["step_s"], "trl_step_s": g["trl"]["step_s"],
                        "jaxpref_compile_seconds": g["jaxpref"]["compile_seconds"]}
            s = sweep[t]
            rows.append([f"T = {t}", f"{s['jaxpref_tokens_per_s']:.0f}", f"{s['trl_tokens_per_s']:.0f}",
                         f"{s['jaxpref_tokens_per_s'] / s['trl_tokens_per_s']:.2f}",
                         f"{s['jaxpref_peak_mib'] / 1024:.2f}", f"{s['trl_peak_mib'] / 1024:.2f}",
                         f"{s['jaxpref_peak_mib'] / s['trl_peak_mib']:.2f}"])
            out["length_sweep"] = sweep
            harness.write_json(args.json, out)
        if args.json:
            plot(sweep, Path(args.json).with_suffix(".png"))
    print(harness.format_table(["workload", "jaxpref tok/s", "TRL tok/s", "speedup", "jaxpref GiB", "TRL GiB",
                                "memory ratio"], rows), flush=True)
    if "online" in parts:
        online = {}
        xla = {"xla_dir": str(work / f"xla_online_{time.strftime('%Y%m%d_%H%M%S')}")}  # empty: a cold start
        for key, side in (("jaxpref_online", "jaxpref_online"), ("trl_online", "trl_online"),
                          ("jaxpref_online_warm_cache", "jaxpref_online")):
            online[key] = harness.run_worker(__file__, side, {**common, **xla}, work / "logs", timeout=3600)
            r = online[key]
            print(f"online round {key}: {r['round_s']:.1f} s, {r['trained_tokens']:.0f} trained tokens, "
                  f"{r['round_s'] / r['trained_tokens'] * 1e3:.2f} ms/token, peak {r['peak_rss_mb'] / 1024:.2f} GiB",
                  flush=True)
        per = {k: v["round_s"] / v["trained_tokens"] for k, v in online.items()}
        out["online_round"] = online
        out["online_round_speedup_vs_trl"] = per["trl_online"] / per["jaxpref_online"]
        out["online_round_speedup_vs_trl_warm_cache"] = per["trl_online"] / per["jaxpref_online_warm_cache"]
        # TRL's round writes no checkpoint (save_strategy="no"); jaxpref's writes a resumable one at
        # the round's end (params and AdamW moments). The same work on both sides: without the write.
        unsaved = {k: (v["round_s"] - v.get("checkpoint_seconds", 0.0)) / v["trained_tokens"]
                   for k, v in online.items()}
        out["online_round_speedup_vs_trl_without_checkpoint"] = per["trl_online"] / unsaved["jaxpref_online"]
        out["online_round_speedup_vs_trl_warm_cache_without_checkpoint"] = (
            per["trl_online"] / unsaved["jaxpref_online_warm_cache"])
        print(f"online round: jaxpref {out['online_round_speedup_vs_trl']:.2f}x TRL per trained token "
              f"({out['online_round_speedup_vs_trl_warm_cache']:.2f}x with its compiled steps cached); without "
              f"jaxpref's round-end checkpoint write (TRL writes none): "
              f"{out['online_round_speedup_vs_trl_without_checkpoint']:.2f}x and "
              f"{out['online_round_speedup_vs_trl_warm_cache_without_checkpoint']:.2f}x", flush=True)
    harness.write_json(args.json, out)


if __name__ == "__main__":
    main(sys.argv[1:])
