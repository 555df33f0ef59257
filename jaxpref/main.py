"""Runs a whole job: offline preference optimization, SFT, a reward model, or an online method.

    python -m jaxpref.main --config=configs/dpo.py --workdir=runs/dpo
    python -m jaxpref.main --config=configs/selm.py --config.beta=0.05

Sections: Config -> Mesh -> Policy and judge -> Trainer (``setup``) -> Rounds -> Eval -> Outputs. Every job is
a sequence of rounds that its method (``jaxpref.methods``) produces and one trainer runs
(``jaxpref.train.rounds``), on the configured mesh, in one or several processes. The same
command resumes from ``<workdir>/checkpoints`` when a checkpoint exists.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxpref.config import require, validate_config
from jaxpref.data.batches import default_buckets
from jaxpref.infer.judges import make_judge
from jaxpref.methods import Method, get_method
from jaxpref.methods.context import Context
from jaxpref.objectives import OBJECTIVES
from jaxpref.policy import resolve_policy
from jaxpref.runtime import distributed, sharding
from jaxpref.runtime.checkpointing import Checkpointer
from jaxpref.runtime.metrics_log import MetricsLogger, read_metrics
from jaxpref.train.loop import Preempted
from jaxpref.train.rounds import Trainer, run_rounds

log = logging.getLogger("jaxpref")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<method>).")


def check_batch_sizes(cfg, mesh) -> None:
    """Every global batch splits evenly over the mesh's batch axes and the processes."""
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "sampling.batch_size", "eval.batch_size"):
        node, *rest = key.split(".")
        value = cfg[node][rest[0]] if rest else cfg[node]
        require(value % split == 0, key, f"{value} is not divisible by mesh data*fsdp = {split}")
        require(value % jax.process_count() == 0, key,
                f"{value} is not divisible by the number of processes ({jax.process_count()})")


@dataclasses.dataclass
class Job:
    """A job set up and ready to run: its method, what the method sees, and the trainer."""

    cfg: object
    workdir: str
    method: Method
    ctx: Context
    trainer: Trainer
    logger: MetricsLogger
    checkpointer: Checkpointer


def setup(cfg, workdir: str) -> Job:
    """Config -> Mesh -> Policy and judge -> Trainer: everything before the first round."""
    distributed.initialize(cfg)  # before anything touches devices; a no-op for one process
    # --- Config ---------------------------------------------------------------------------
    method = get_method(cfg.job)
    validate_config(cfg, method.objectives(cfg))
    method.validate(cfg)
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    # --- Mesh -------------------------------------------------------------------------------
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.mesh.rules)
    check_batch_sizes(cfg, mesh)
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(), jax.process_count())

    # --- Policy and judge -------------------------------------------------------------------
    policy = resolve_policy(cfg, mesh, rules, pretrained_sft=not method.random_init)
    model, params = method.make_model(policy) if method.make_model else (policy.model, policy.params)
    judge = make_judge(cfg, policy, mesh, rules) if method.uses_judge else None

    # --- Trainer: step, checkpoints, loop ---------------------------------------------------
    max_length = policy.task.max_length if policy.task is not None else cfg.data.max_length
    buckets = tuple(default_buckets(max_length))
    logger = MetricsLogger(workdir)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    trainer = Trainer(model=model, start_params=params, cfg=cfg, mesh=mesh, rules=rules, pad_id=policy.pad_id,
                      buckets=buckets, logger=logger, checkpointer=ckpt, round_dir=os.path.join(workdir, "rounds"))
    sft_params = trainer.start_params if model is policy.model else jax.device_put(
        policy.params, sharding.param_shardings(policy.params, mesh, rules))
    ctx = Context(cfg, policy, model, judge, mesh, sft_params, buckets=buckets, workdir=workdir)
    return Job(cfg, workdir, method, ctx, trainer, logger, ckpt)


def run(cfg, workdir: str) -> dict:
    """Trains, evaluates and writes ``summary.json``; returns the summary."""
    t_start = time.perf_counter()
    job = setup(cfg, workdir)
    method, ctx, policy = job.method, job.ctx, job.ctx.policy

    # --- Rounds -----------------------------------------------------------------------------
    result = run_rounds(method, ctx, job.trainer)
    job.logger.close()
    job.checkpointer.close()

    # --- Eval and outputs -------------------------------------------------------------------
    losses = method.objectives(cfg)
    summary = {"method": cfg.method, "job": cfg.job, "loss": cfg.loss,
               "loss_hparams": {h: cfg[h] for o in losses for h in OBJECTIVES[o].hparams},
               "judge": cfg.judge.kind if method.uses_judge else None, "sft": policy.info,
               **sharding.describe(ctx.mesh), **method.summarize(ctx, result),
               "train_tokens_per_second": result.tokens_per_second, "skipped_steps": result.skipped_steps}
    if method.evaluate_policy and policy.task is not None:
        summary.update(ctx.evaluate(result.params, cfg.eval.num_prompts))
    for example in summary.get("examples", []):  # readable samples next to the token ids
        for key in ("prompt", "policy", "sft"):
            example[f"{key}_text"] = policy.tokenizer.decode(example[key], skip_special_tokens=False)
    summary["wall_seconds"] = time.perf_counter() - t_start
    export_params = sharding.to_host(result.params) if cfg.export_dir else None  # a collective: every process
    if distributed.is_main_process():
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_training_curves(workdir)
        if cfg.export_dir:
            from jaxpref.models import save_pretrained

            save_pretrained(ctx.model, export_params, cfg.export_dir)
            policy.tokenizer.save_pretrained(cfg.export_dir)
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                        if k not in ("examples", "rounds", "iterations", "curves")}))
    return summary


def plot_training_curves(workdir: str) -> None:
    """Writes ``<workdir>/training_curves.png`` from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(workdir) if r.get("phase") == "train"]
    if not rows:
        return
    keys = [k for k in ("loss", "reward_accuracy", "reward_margin", "kl_estimate") if k in rows[-1]]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])
        ax.set_title(k)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "training_curves.png"), dpi=80)
    plt.close(fig)


def setup_logging() -> None:
    """INFO lines from jaxpref; warnings only from absl-based libraries (orbax is chatty)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    cfg = _CONFIG.value
    try:
        run(cfg, _WORKDIR.value or os.path.join("runs", cfg.method))
    except Preempted as stop:
        log.warning("%s", stop)
        raise SystemExit(128 + stop.signum) from None


if __name__ == "__main__":
    app.run(main)
