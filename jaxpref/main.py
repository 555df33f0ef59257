"""Runs a whole preference-optimization job.

    python -m jaxpref.main --config=configs/dpo.py --workdir=runs/dpo
    python -m jaxpref.main --config=configs/tr_dpo.py --config.beta=0.05 --config.num_steps=500

Sections: Config -> Policy -> Data -> Step -> Checkpoint -> Loop -> Eval. The same command
resumes from ``<workdir>/checkpoints`` when a checkpoint exists.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxpref import components, distributed, evaluation, sharding
from jaxpref.checkpointing import Checkpointer
from jaxpref.compiler_options import train_compiler_options
from jaxpref.config_checks import validate_config
from jaxpref.data import BatchStream
from jaxpref.loop import Preempted, run_steps
from jaxpref.metrics_log import MetricsLogger, read_metrics
from jaxpref.objectives import LossHParams, get_objective
from jaxpref.train_state import create_train_state
from jaxpref.train_step import batch_groups, make_train_step

log = logging.getLogger("jaxpref")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<method>).")


def loss_hparams(cfg) -> LossHParams:
    return LossHParams(
        beta=cfg.beta, label_smoothing=cfg.label_smoothing, delta=cfg.delta, sft_weight=cfg.sft_weight,
        desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight,
        selm_alpha=cfg.selm_alpha, ipo_average=cfg.ipo_average,
    )


def run(cfg, workdir: str) -> dict:
    """Trains, evaluates and writes ``summary.json``; returns the summary."""
    distributed.initialize(cfg)  # before anything touches devices; a no-op for one process
    t_start = time.perf_counter()
    # --- Config ---------------------------------------------------------------------------
    validate_config(cfg)
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main_process():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    job = JOBS.get(cfg.job)
    if job is None:
        raise ValueError(f"config.job: unknown job {cfg.job!r}; known: {sorted(JOBS)}")

    # --- Mesh -------------------------------------------------------------------------------
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.mesh.rules)
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(), jax.process_count())

    # --- Policy -----------------------------------------------------------------------------
    policy = components.resolve_policy(cfg)

    summary, final_params = job(cfg, workdir, policy, mesh, rules)

    # --- Eval and outputs -------------------------------------------------------------------
    if policy.task is not None and cfg.job != "reward_model":
        prompts = policy.task.eval_prompts(cfg.seed, cfg.eval.num_prompts)
        summary.update(evaluation.evaluate_against_sft(
            policy.model, final_params, policy.params, prompts, policy.reward_fn, jax.random.PRNGKey(cfg.seed + 10_000),
            eos_id=policy.eos_id, pad_id=policy.pad_id, max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size, temperature=cfg.eval.temperature, top_k=cfg.eval.top_k,
            top_p=cfg.eval.top_p,
        ))
    for example in summary.get("examples", []):  # readable samples next to the token ids
        for key in ("prompt", "policy", "sft"):
            example[f"{key}_text"] = policy.tokenizer.decode(example[key], skip_special_tokens=False)
    summary["wall_seconds"] = time.perf_counter() - t_start
    export_params = sharding.to_host(final_params) if cfg.export_dir else None  # a collective: every process
    if distributed.is_main_process():
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        plot_training_curves(workdir)
        if cfg.export_dir:
            from jaxpref.models import save_pretrained

            save_pretrained(policy.model, export_params, cfg.export_dir)
            policy.tokenizer.save_pretrained(cfg.export_dir)
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k not in ("examples", "extra")}))
    return summary


def run_offline(cfg, workdir: str, policy: components.Policy, mesh, rules) -> tuple[dict, object]:
    """DPO-family and trust-region training on a fixed preference dataset."""
    objective = get_objective(cfg.loss)
    frozen_ref = cfg.ref_update_every == 0
    model, sft_params = policy.model, policy.params

    # --- Data -------------------------------------------------------------------------------
    examples, held_out, data_report = components.resolve_data(cfg, policy, objective)
    buckets = components.buckets_for(cfg, policy)
    stream = BatchStream(examples, batch_size=cfg.batch_size, pad_id=policy.pad_id, buckets=buckets, seed=cfg.seed,
                         process_index=jax.process_index(), process_count=jax.process_count())
    use_precomputed = objective.needs_reference and frozen_ref and cfg.precompute_ref_logps and objective.paired
    ref_table = None
    if use_precomputed:
        ref_table = components.precompute_reference(model, sft_params, examples, pad_id=policy.pad_id,
                                                    buckets=buckets, batch_size=cfg.batch_size,
                                                    share_prompt=cfg.share_prompt)

    # --- Step -------------------------------------------------------------------------------
    tx = components.make_optimizer(cfg.optimizer, cfg.num_steps)
    keep_reference = objective.needs_reference and not use_precomputed
    rng = jax.random.PRNGKey(cfg.seed)
    abstract = jax.eval_shape(lambda p: create_train_state(p, tx, rng=rng, with_reference=keep_reference), sft_params)
    shardings = sharding.train_state_shardings(abstract, tx, mesh, rules)
    step_fn = sharding.jit_train_step(
        make_train_step(model, objective, loss_hparams(cfg), tx, ref_update_every=cfg.ref_update_every,
                        ref_update_alpha=cfg.ref_update_alpha),
        shardings, mesh, compiler_options=train_compiler_options(model.config.hidden_size),
    )
    state = sharding.create_sharded_train_state(sft_params, tx, shardings, rng=rng, with_reference=keep_reference)
    sft_params = jax.device_put(sft_params, shardings.params)  # on the mesh, for the held-out eval

    # --- Checkpoint -------------------------------------------------------------------------
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    start_step = 0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        start_step = int(state.step)
        log.info("resumed from step %d (%s)", start_step, meta)

    # --- Loop -------------------------------------------------------------------------------
    def batch_at(step):
        groups, extras = batch_groups(stream.batch_at(step), share_prompt=cfg.share_prompt, pad_id=policy.pad_id,
                                      packed_sizes=stream.packed_sizes(step) if cfg.share_prompt else None)
        if ref_table is not None:
            idx = stream.global_indices(step).reshape(stream.process_count, -1)[stream.process_index]
            extras = {**extras, **{f"ref_{k}": v[idx] for k, v in ref_table.items()}}
        return sharding.global_batch(groups, mesh), sharding.global_batch(extras, mesh)

    logger = MetricsLogger(workdir)
    state, stats = run_steps(step_fn, state, batch_at, start=start_step, stop=cfg.num_steps, logger=logger,
                             log_every=cfg.log_every, checkpointer=ckpt, checkpoint_every=cfg.checkpoint_every,
                             meta={"method": cfg.method}, desc=cfg.method, on_nonfinite=cfg.on_nonfinite)
    logger.close()
    ckpt.close()

    summary = {
        "method": cfg.method,
        "loss": cfg.loss,
        "steps": int(state.step),
        "resumed_from_step": start_step,
        "train_tokens_per_second": stats.tokens_per_second,
        "skipped_steps": stats.skipped_steps,
        "data": data_report,
        "sft": policy.info,
    }
    if held_out:
        summary.update(evaluation.held_out_preference_accuracy(
            model, state.params, sft_params, held_out, pad_id=policy.pad_id, buckets=buckets,
            batch_size=cfg.batch_size, beta=cfg.beta,
        ))
    return summary, state.params


def run_online(cfg, workdir: str, policy: components.Policy, mesh, rules) -> tuple[dict, object]:
    """RSO, SPPO, SELM or active DPO: rounds of sampling, judging and training (on the default
    device: the online trainers do not use the mesh yet)."""
    from jaxpref import online, online_job
    from jaxpref.methods import active, rso, selm, sppo

    method = {"rso": rso, "sppo": sppo, "selm": selm, "active_dpo": active}[cfg.job]
    logger = MetricsLogger(workdir)
    checkpoints = online.RoundCheckpoints(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    ctx = online_job.OnlineContext(cfg, workdir, policy, online_job.make_judge(cfg, policy),
                                   online.Trainer(policy.model, cfg, logger, loss_hparams(cfg)), checkpoints)
    result = method.run(ctx)
    logger.close()
    checkpoints.close()
    if "plot" in result and jax.process_index() == 0:
        name, curves = result["plot"]
        online_job.plot_curves(os.path.join(workdir, name), curves)
    summary = {"method": cfg.method, "loss": cfg.loss, "job": cfg.job, "judge": cfg.judge.kind,
               "sft": policy.info, **result.get("extra", {})}
    stats = result.get("stats")
    if stats is not None:
        summary["train_tokens_per_second"] = stats.tokens_per_second
    return summary, result["params"]


def run_reward_model(cfg, workdir: str, policy: components.Policy, mesh, rules) -> tuple[dict, object]:
    from jaxpref.methods import reward_model

    return reward_model.run(cfg, workdir, policy), policy.params


JOBS = {"offline": run_offline, "rso": run_online, "sppo": run_online, "selm": run_online,
        "active_dpo": run_online, "reward_model": run_reward_model}


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
