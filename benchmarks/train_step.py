"""DPO training throughput and peak memory: jaxpref vs Hugging Face TRL ``DPOTrainer`` (PyTorch).

    python benchmarks/train_step.py --size tiny --json benchmarks/results/train_step_tiny.json
    python benchmarks/train_step.py --size small --json benchmarks/results/train_step_small.json

Both frameworks train the **same** random-init Llama (jaxpref initialises it, writes a HF
checkpoint with ``save_pretrained``; both load it), in float32, on the **same** batches in the
same order (TRL with sequential sampling), with AdamW (same lr, no weight decay, grad-norm clip
1.0, cosine decay to 10% of the lr), the sigmoid DPO loss with the same beta, and a reference
model evaluated inside every step. Each framework runs in its own subprocess, alternating
A B A B, so that its peak resident memory is its own; throughput and memory are medians
over the repeats.

Throughput counts the non-pad tokens of the chosen and rejected sequences (prompts counted in
both) of the timed steps, divided by their wall time. Excluded: JAX compilation (reported as
``compile_s``) plus one executed warm-up step for jaxpref; the first optimizer step for TRL
(reported as ``first_step_s``). Both sides must log a step-0 loss of log 2 (policy ==
reference) and the per-step losses of the two frameworks are compared as a parity check.

jaxpref is also timed, in a third process, in precomputed-reference mode: the reference
log-probs are computed once before training and fed as inputs, and the reference params are
dropped — what ``python -m jaxpref.main`` does by default for DPO/IPO/KTO/SLiC with a frozen
reference (``config.precompute_ref_logps``). TRL's default (``precompute_ref_log_probs=False``)
is the reference model inside every step, so the row "jaxpref default vs TRL default" compares
the two frameworks as a user runs them; "reference in step" compares the same loss with the
reference forward in the step on both sides.

Both jaxpref processes use jaxpref's default ``config.share_prompt=True``: each pair is packed
as ``[prompt][chosen][rejected]`` so the prompt runs through the model once, with the LM head
only on completion tokens (``jaxpref.data.batches.pack_shared_prompt``); the log-probs, losses and
gradients are the same, and the loss parity check against TRL still applies. Throughput counts
the same tokens as TRL's (prompts in both sequences). ``--no-share-prompt`` turns it off.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness

DEFAULT_LR = 1e-5
DEFAULT_BETA = 0.1


# --------------------------------------------------------------------------------- workers


def prepare_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Initialises the jaxpref model and writes it as a HF checkpoint folder."""
    from jaxpref.models import count_params, init_model, save_pretrained

    model, params = init_model(spec["model"], seed=spec["seed"])
    save_pretrained(model, params, spec["model_dir"])
    return {"params": count_params(params)}


def jaxpref_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Times jaxpref's DPO step with the reference model in the step (``spec["reference"] ==
    "in_step"``) or with reference log-probs precomputed and the reference params dropped."""
    import jax
    from jaxpref_dpo import DPOBench, collate, time_dpo

    from jaxpref.models import load_pretrained

    baseline_rss = harness.current_rss_mb()
    model, params = load_pretrained(spec["model_dir"])
    model = model.clone(remat=spec["remat"])
    batches = collate(spec["pairs"], spec["batch_size"], spec["seq_len"], harness.PAD_ID,
                      share_prompt=spec["share_prompt"])
    total_steps = 1 + spec["steps"]  # as TRL's max_steps
    bench = DPOBench(model, params, learning_rate=spec["lr"], beta=spec["beta"], total_steps=total_steps)
    del params
    precompute_s = None
    if spec["reference"] == "precomputed":
        start = time.perf_counter()
        batches = bench.precompute_reference(batches)
        precompute_s = time.perf_counter() - start
    result = time_dpo(bench, batches, steps=spec["steps"])
    result["peak_rss_mb"] = harness.peak_rss_mb()
    result["precompute_reference_s"] = precompute_s
    return {"baseline_rss_mb": baseline_rss, "reference": spec["reference"], **result,
            "backend": jax.default_backend()}


def jaxpref_in_step_worker(spec: dict[str, Any]) -> dict[str, Any]:
    return jaxpref_worker({**spec, "reference": "in_step"})


def jaxpref_precomputed_worker(spec: dict[str, Any]) -> dict[str, Any]:
    return jaxpref_worker({**spec, "reference": "precomputed"})


def _word_tokenizer(vocab_size: int):
    """A word-level tokenizer where the text ``"w5 w9<eos>"`` encodes to ``[5, 9, EOS_ID]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": harness.PAD_ID, "<eos>": harness.EOS_ID}
    vocab.update({f"w{i}": i for i in range(harness.FIRST_WORD_ID, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _as_text(ids: list[int]) -> str:
    return " ".join(f"w{i}" for i in ids)


def _text_dataset(pairs: list[dict[str, list[int]]]):
    """TRL's standard text format; completions lose their EOS (TRL appends ``eos_token``)."""
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for p in pairs:
        rows["prompt"].append(_as_text(p["prompt"]))
        rows["chosen"].append(" " + _as_text(p["chosen"][:-1]))
        rows["rejected"].append(" " + _as_text(p["rejected"][:-1]))
    return Dataset.from_dict(rows)


def trl_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Times TRL's ``DPOTrainer.train`` on the same model, data and hyper-parameters."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    baseline_rss = harness.current_rss_mb()
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tokenizer = _word_tokenizer(spec["model"]["vocab_size"])
    steps = spec["steps"]

    class Clock(TrainerCallback):
        """Wall time at the end of every optimizer step, and the logged losses."""

        def __init__(self) -> None:
            self.step_end: list[float] = []
            self.step_end_cpu: list[float] = []
            self.losses: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.step_end.append(time.perf_counter())
            self.step_end_cpu.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    class CountingCollator(DataCollatorForPreference):
        """TRL's own collator, recording the non-pad tokens of each batch."""

        def torch_call(self, examples):
            out = super().torch_call(examples)
            counted.append(int(out["attention_mask"].sum()))
            shapes.append(list(out["input_ids"].shape))
            return out

    counted: list[int] = []
    shapes: list[list[int]] = []
    clock = Clock()
    args = DPOConfig(
        output_dir=spec["workdir"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=1 + steps,
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=spec["beta"],
        loss_type=["sigmoid"],
        max_length=None,
        bf16=False,
        fp16=False,
        gradient_checkpointing=spec["remat"],
        use_cpu=True,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=_text_dataset(spec["pairs"]),
        processing_class=tokenizer,
        data_collator=CountingCollator(pad_token_id=harness.PAD_ID),
        callbacks=[clock],
    )
    _check_tokenization(trainer.train_dataset, spec["pairs"])
    start = time.perf_counter()
    trainer.train()
    timed_s = clock.step_end[-1] - clock.step_end[0]
    timed_cpu_s = clock.step_end_cpu[-1] - clock.step_end_cpu[0]
    tokens = sum(counted[1 : 1 + steps])
    return {
        "baseline_rss_mb": baseline_rss,
        "first_step_s": clock.step_end[0] - start,
        "timed_steps": steps,
        "timed_s": timed_s,
        "timed_cpu_s": timed_cpu_s,
        "step_s": timed_s / steps,
        "tokens": tokens,
        "tokens_per_s": tokens / timed_s,
        "tokens_per_cpu_s": tokens / timed_cpu_s,
        "losses": clock.losses,
        "step0_loss_minus_log2": clock.losses[0] - math.log(2),
        "batch_shapes": shapes[: 1 + steps],
        "peak_rss_mb": harness.peak_rss_mb(),
        "optim": str(args.optim),
        "torch_threads": torch.get_num_threads(),
        "attn_implementation": policy.config._attn_implementation,
    }


def _check_tokenization(dataset, pairs: list[dict[str, list[int]]]) -> None:
    """TRL's tokenized dataset must hold exactly the token ids jaxpref trains on."""
    for i, p in enumerate(pairs):
        row = dataset[i]
        got = (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
        if got != (p["prompt"], p["chosen"], p["rejected"]):
            raise AssertionError(f"TRL tokenized pair {i} differently: {got} vs {p}")


WORKERS = {"prepare": prepare_worker, "jaxpref": jaxpref_in_step_worker,
           "jaxpref_precomputed": jaxpref_precomputed_worker, "trl": trl_worker}
FRAMEWORKS = ("jaxpref", "jaxpref_precomputed", "trl")


# ---------------------------------------------------------------------------------- parent


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--steps", type=int, help="timed steps per run (default: per size)")
    parser.add_argument("--repeats", type=int, help="A B pairs of runs (default: per size)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--remat", action="store_true", help="recompute activations: jaxpref remat=True, TRL gradient_checkpointing"
    )
    parser.add_argument(
        "--no-share-prompt",
        dest="share_prompt",
        action="store_false",
        help="jaxpref runs chosen and rejected as separate sequences (config.share_prompt=False)",
    )
    return parser.parse_args(argv)


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over repeats, the headline ratios and the loss parity check."""
    jx, pre = runs["jaxpref"], runs["jaxpref_precomputed"]
    trl = runs["trl"]
    med = lambda rows, key: harness.median([r[key] for r in rows])  # noqa: E731
    out = {
        "jaxpref_tokens_per_s": med(jx, "tokens_per_s"),
        "jaxpref_precomputed_ref_tokens_per_s": med(pre, "tokens_per_s"),
        "trl_tokens_per_s": med(trl, "tokens_per_s"),
        "jaxpref_tokens_per_cpu_s": med(jx, "tokens_per_cpu_s"),
        "jaxpref_precomputed_ref_tokens_per_cpu_s": med(pre, "tokens_per_cpu_s"),
        "trl_tokens_per_cpu_s": med(trl, "tokens_per_cpu_s"),
        "jaxpref_peak_rss_mb": med(jx, "peak_rss_mb"),
        "jaxpref_precomputed_ref_peak_rss_mb": med(pre, "peak_rss_mb"),
        "trl_peak_rss_mb": med(trl, "peak_rss_mb"),
        "jaxpref_peak_rss_after_compile_mb": med(jx, "peak_rss_after_compile_mb"),
        "jaxpref_baseline_rss_mb": med(jx, "baseline_rss_mb"),
        "jaxpref_precompute_reference_s": med(pre, "precompute_reference_s"),
        "trl_baseline_rss_mb": med(trl, "baseline_rss_mb"),
        "jaxpref_compile_s": med(jx, "compile_s"),
        "jaxpref_precomputed_compile_s": med(pre, "compile_s"),
        "trl_first_step_s": med(trl, "first_step_s"),
        "jaxpref_step_s": med(jx, "step_s"),
        "trl_step_s": med(trl, "step_s"),
    }
    out["speedup_vs_trl"] = out["jaxpref_tokens_per_s"] / out["trl_tokens_per_s"]
    out["cpu_time_speedup_vs_trl"] = out["jaxpref_tokens_per_cpu_s"] / out["trl_tokens_per_cpu_s"]
    out["precomputed_speedup_vs_trl"] = out["jaxpref_precomputed_ref_tokens_per_s"] / out["trl_tokens_per_s"]
    out["peak_rss_ratio_vs_trl"] = out["jaxpref_peak_rss_mb"] / out["trl_peak_rss_mb"]
    # jaxpref's default offline DPO (precomputed reference) against TRL's default (reference in step).
    out["default_peak_rss_ratio_vs_trl"] = out["jaxpref_precomputed_ref_peak_rss_mb"] / out["trl_peak_rss_mb"]
    jl, tl = jx[0]["losses"], trl[0]["losses"]
    out["loss_parity_max_abs_diff"] = max(abs(a - b) for a, b in zip(jl, tl))
    out["step0_loss"] = {"jaxpref": jl[0], "trl": tl[0], "log2": math.log(2)}
    return out


def report(settings: dict[str, Any], summary: dict[str, Any], runs: dict[str, list]) -> str:
    """The markdown table printed at the end of a run."""
    pre_step_s = harness.median([r["step_s"] for r in runs["jaxpref_precomputed"]])
    rows = [
        [
            "TRL DPOTrainer (torch)",
            summary["trl_tokens_per_s"],
            summary["trl_step_s"],
            1.0,
            summary["trl_tokens_per_cpu_s"],
            summary["trl_peak_rss_mb"],
            f"first step {summary['trl_first_step_s']:.2f}",
        ],
        [
            "jaxpref, reference in step",
            summary["jaxpref_tokens_per_s"],
            summary["jaxpref_step_s"],
            summary["speedup_vs_trl"],
            summary["jaxpref_tokens_per_cpu_s"],
            summary["jaxpref_peak_rss_mb"],
            f"compile {summary['jaxpref_compile_s']:.2f}",
        ],
        [
            "jaxpref, precomputed reference (job default)",
            summary["jaxpref_precomputed_ref_tokens_per_s"],
            pre_step_s,
            summary["precomputed_speedup_vs_trl"],
            summary["jaxpref_precomputed_ref_tokens_per_cpu_s"],
            summary["jaxpref_precomputed_ref_peak_rss_mb"],
            f"compile {summary['jaxpref_precomputed_compile_s']:.2f}",
        ],
    ]
    headers = ["framework", "tokens/s", "s/step", "vs TRL", "tokens/CPU-s", "peak RSS MiB", "excluded (s)"]
    per_run = {
        "jaxpref tokens/s": [round(r["tokens_per_s"], 1) for r in runs["jaxpref"]],
        "jaxpref precomputed tokens/s": [round(r["tokens_per_s"], 1) for r in runs["jaxpref_precomputed"]],
        "trl tokens/s": [round(r["tokens_per_s"], 1) for r in runs["trl"]],
    }
    return "\n".join(
        [
            f"size={settings['size']} remat={settings['remat']} share_prompt={settings['jaxpref_share_prompt']} "
            f"params={settings['params']:,} "
            f"batch={settings['batch_size']} pairs "
            f"seq_len={settings['seq_len']} timed_steps={settings['steps']} repeats={settings['repeats']}",
            harness.format_table(headers, rows),
            f"per run: {per_run}",
            f"baseline RSS after imports (MiB): jaxpref {summary['jaxpref_baseline_rss_mb']:.0f}, "
            f"TRL {summary['trl_baseline_rss_mb']:.0f}; jaxpref peak after compile, before the first step: "
            f"{summary['jaxpref_peak_rss_after_compile_mb']:.0f}",
            f"step-0 loss: {summary['step0_loss']}; max |loss_jaxpref - loss_trl| over steps: "
            f"{summary['loss_parity_max_abs_diff']:.2e}",
        ]
    )


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    preset = harness.get_preset(args.size, steps=args.steps, repeats=args.repeats, batch_size=args.batch_size)
    pairs = harness.make_pairs(preset, 1 + preset.steps, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="jaxpref-bench-") as tmp:
        workdir = Path(tmp)
        spec = {
            "model": dict(preset.model),
            "model_dir": str(workdir / "model"),
            "workdir": str(workdir / "trl"),
            "pairs": pairs,
            "batch_size": preset.batch_size,
            "seq_len": preset.seq_len,
            "steps": preset.steps,
            "lr": args.lr,
            "beta": args.beta,
            "seed": args.seed,
            "remat": args.remat,
            "share_prompt": args.share_prompt,
        }
        prepared = harness.run_worker(__file__, "prepare", spec, workdir)
        runs = harness.run_alternating(__file__, FRAMEWORKS, preset.repeats, lambda name: spec, workdir)
    settings = {
        "size": args.size,
        "params": prepared["params"],
        "param_counts": harness.param_count(preset.model),
        "model": dict(preset.model),
        "dtype": "float32",
        "remat": args.remat,
        "jaxpref_share_prompt": args.share_prompt,
        "batch_size": preset.batch_size,
        "prompt_len_max": preset.prompt_len,
        "completion_len_max": preset.completion_len,
        "seq_len": preset.seq_len,
        "steps": preset.steps,
        "repeats": preset.repeats,
        "lr": args.lr,
        "beta": args.beta,
        "optimizer": "AdamW(b1=0.9, b2=0.999, eps=1e-8, wd=0), clip 1.0, cosine to 0.1*lr, no warmup",
        "tokens_per_step": harness.tokens_per_batch(pairs, preset.batch_size),
        "seed": args.seed,
    }
    summary = summarize(runs)
    print(report(settings, summary, runs))
    harness.write_json(args.json, {"machine": harness.machine_info(), "settings": settings, **summary, "runs": runs})


if __name__ == "__main__":
    if not harness.worker_main(WORKERS, sys.argv[1:]):
        main(sys.argv[1:])
