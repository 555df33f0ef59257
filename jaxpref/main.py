"""Runs a whole job: offline preference optimization, SFT, a reward model, or an online method.

    python -m jaxpref.main --config=configs/dpo.py --workdir=runs/dpo
    python -m jaxpref.main --config=configs/selm.py --config.beta=0.05

Sections: Config -> Mesh -> Policy and judge -> Trainer (``setup``) -> Rounds -> Eval -> Outputs. Every job is
a sequence of rounds that its method (``jaxpref.methods``) produces and one trainer runs
(``jaxpref.train.rounds``), on the configured mesh, in one or several processes. The same
command resumes from ``<workdir>/checkpoints`` when a checkpoint exists.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxpref.assets import AssetError
from jaxpref.config import ConfigError, as_record, config_changes, describe_config, require, validate_config
from jaxpref.data.batches import default_buckets
from jaxpref.data.preference import BadRowError
from jaxpref.judges import TextView, make_judge
from jaxpref.methods import Method, get_method
from jaxpref.methods.context import Context
from jaxpref.models import count_params, lora
from jaxpref.objectives import objective_of
from jaxpref.policy import lora_start, resolve_policy
from jaxpref.runtime import compile_cache, distributed, sharding, torch_free
from jaxpref.runtime.checkpointing import Checkpointer, CheckpointError, sync_processes
from jaxpref.runtime.host_memory import compiling_in_background
from jaxpref.runtime.metrics_log import MetricsLogger, read_metrics
from jaxpref.runtime.workdir_lock import WorkdirLock, WorkdirLocked
from jaxpref.train.loop import NonFiniteError, Preempted, StopSignals
from jaxpref.train.rounds import PrecomputeOnly, Trainer, run_rounds

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
    accum = cfg.get("grad_accum_steps", 1)
    require(cfg.batch_size % (accum * split) == 0, "grad_accum_steps",
            f"batch_size {cfg.batch_size} must split into {accum} micro-batches whose size is divisible by "
            f"mesh data*fsdp = {split}")


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
    if cfg.get("compile_cache", False):
        compile_cache.enable(cfg.get("compile_cache_dir", ""))
    # --- Config ---------------------------------------------------------------------------
    method = get_method(cfg.job)
    validate_config(cfg, method.objectives(cfg))
    method.validate(cfg)
    require(not (method.uses_judge and cfg.data.get("max_tokens_per_batch", 0)), "data.max_tokens_per_batch",
            f"the {cfg.job} job trains on sampled pairs of one fixed shape; a token budget is for offline data")
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    check_resume(cfg, workdir, ckpt)
    if distributed.is_main_process():
        write_atomic(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))

    # --- Mesh -------------------------------------------------------------------------------
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.resolve_rules(cfg.mesh.rules)
    check_batch_sizes(cfg, mesh)
    log.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(), jax.process_count())

    # --- Policy and judge -------------------------------------------------------------------
    policy = resolve_policy(cfg, mesh, rules, pretrained_sft=not method.random_init)
    model, params = method.make_model(policy) if method.make_model else (policy.model, policy.params)
    prompts = own_prompts(cfg, policy) if cfg.data.get("prompts", "") else None
    view = TextView(policy.tokenizer, policy.eos_id, prompts.raw_of() if prompts else None)
    judge = make_judge(cfg, policy, mesh, rules, view=view) if method.uses_judge else None

    # --- Trainer: step, checkpoints, loop ---------------------------------------------------
    max_length = policy.task.max_length if policy.task is not None and prompts is None else cfg.data.max_length
    buckets = tuple(default_buckets(max_length))
    logger = MetricsLogger(workdir)
    adapters = lora_start(cfg, params)  # None without LoRA
    trainer = Trainer(model=model, start_params=params, cfg=cfg, mesh=mesh, rules=rules, pad_id=policy.pad_id,
                      buckets=buckets, logger=logger, checkpointer=ckpt, round_dir=os.path.join(workdir, "rounds"),
                      lora=adapters)
    sft_params = trainer.start_params if model is policy.model else jax.device_put(
        policy.params, sharding.param_shardings(policy.params, mesh, rules))
    ctx = Context(cfg, policy, model, judge, mesh, sft_params, buckets=buckets, workdir=workdir, prompts=prompts,
                  lora=trainer.lora, merge=trainer.plain if trainer.lora is not None else None)
    return Job(cfg, workdir, method, ctx, trainer, logger, ckpt)


def own_prompts(cfg, policy):
    """``config.data.prompts`` tokenized for the policy (``data.prompts.split_prompt_data``), with
    held-out prompts; a source without usable prompts raises naming the key."""
    from jaxpref.data.prompts import split_prompt_data

    d = cfg.data
    data = split_prompt_data(d.prompts, policy.tokenizer, max_prompt_length=d.max_prompt_length, split=d.split,
                             eval_source=d.get("eval_prompts", ""), eval_split=d.eval_split,
                             eval_fraction=d.eval_fraction, on_bad_row=d.on_bad_row)
    log.info("prompts: %s", data.train.report.summary())
    if data.train.report.truncated_prompt > 0.2 * max(len(data.train), 1):
        log.warning("prompts: %d of %d were cut to their last %d tokens: raise config.data.max_prompt_length",
                    data.train.report.truncated_prompt, len(data.train), d.max_prompt_length)
    require(len(data.train) > 0, "data.prompts", f"{d.prompts!r} gives no prompts ({data.train.report.summary()})")
    if data.eval is None:
        log.warning("prompts: no held-out prompts (set config.data.eval_prompts, add a %r split, or raise "
                    "config.data.eval_fraction): no evaluation", d.eval_split)
    else:
        log.info("held-out prompts: %d from %s", len(data.eval), data.eval_from)
    return data


def write_atomic(path: str, text: str) -> None:
    """Writes ``path`` through a temporary file and a rename: a kill never leaves it half-written."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# What a job writes into its workdir; ``overwrite=True`` deletes these before starting over.
RUN_OUTPUTS = ("checkpoints", "checkpoints.damaged", "rounds", "metrics.jsonl", "tensorboard", "summary.json",
               "training_curves.png")


def check_resume(cfg, workdir: str, ckpt: Checkpointer) -> None:
    """Refuses to resume from checkpoints written with a different config (``config.RESUMABLE``
    keys may differ); with ``cfg.overwrite`` deletes the previous run's outputs instead."""
    steps = ckpt.all_steps()
    if not steps:
        return
    if cfg.overwrite:
        sync_processes("overwrite")  # every process has seen the old checkpoints
        if distributed.is_main_process():
            log.warning("overwrite=True: deleting the previous run in %s", workdir)
            for name in RUN_OUTPUTS:
                path = os.path.join(workdir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        sync_processes("overwritten")
        ckpt.reload()
        return
    old = None
    for step in reversed(steps):
        try:
            old = (ckpt.read_meta(step) or {}).get("config")
        except Exception:  # noqa: BLE001 - a damaged step: restore_latest reports and sets it aside
            continue
        if old is not None:
            break
    if old is None:
        return
    changes = config_changes(old, as_record(cfg))
    if changes:
        shown = "; ".join(changes[:8]) + (f"; ... ({len(changes)} keys)" if len(changes) > 8 else "")
        raise ConfigError(
            f"config: {workdir} holds checkpoints of a run with another config ({shown}); resume with the same "
            f"config, use another --workdir, or pass --config.overwrite=True to delete that run and start over")


def run(cfg, workdir: str) -> dict:
    """Trains, evaluates and writes ``summary.json``; returns the summary. Process 0 holds the
    workdir's lock (``runtime.workdir_lock``) for the whole job."""
    distributed.initialize(cfg)
    lock = WorkdirLock(workdir) if distributed.is_main_process() else None
    with StopSignals(on_exit=lock.release if lock else None), lock or contextlib.nullcontext():
        return _run(cfg, workdir)


def _run(cfg, workdir: str) -> dict:
    t_start = time.perf_counter()
    job = setup(cfg, workdir)
    method, ctx, policy = job.method, job.ctx, job.ctx.policy

    # --- Rounds -----------------------------------------------------------------------------
    try:
        result = run_rounds(method, ctx, job.trainer)
    except PrecomputeOnly as done:
        return _precompute_summary(cfg, workdir, done, time.perf_counter() - t_start)
    finally:
        job.logger.close()
        job.checkpointer.close()

    # --- Eval and outputs -------------------------------------------------------------------
    losses = method.objectives(cfg)
    summary = {"method": cfg.method, "job": cfg.job, "loss": cfg.loss,
               "loss_weights": cfg.get("loss_weights", ""),
               "loss_hparams": {h: cfg[h] for o in losses for h in objective_of(cfg, o).hparams},
               "judge": cfg.judge.kind if method.uses_judge else None, "sft": policy.info,
               **sharding.describe(ctx.mesh), **method.summarize(ctx, result),
               "train_tokens_per_second": result.tokens_per_second, "train_step_seconds": result.step_seconds,
               "train_compile_seconds": result.compile_seconds,
               "train_checkpoint_seconds": result.checkpoint_seconds, "train_tokens": result.trained_tokens,
               "skipped_steps": result.skipped_steps, "reference_cache": job.trainer.reference_cache}
    if method.uses_judge:
        summary["judge_calls"] = int(sum(r.get("judge_calls", 0) for r in result.history))
    if method.evaluate_policy and ctx.can_evaluate:
        summary.update(ctx.evaluate(result.params, cfg.eval.num_prompts))
    for example in summary.get("examples", []):  # readable samples next to the token ids
        for key in ("prompt", "policy", "sft"):
            example[f"{key}_text"] = policy.tokenizer.decode(example[key], skip_special_tokens=False)
    summary["wall_seconds"] = time.perf_counter() - t_start
    adapters = None if ctx.lora is None else lora.split(result.params)[0]
    if adapters is not None:
        summary["lora"] = {"rank": ctx.lora.rank, "alpha": ctx.lora.alpha, "targets": list(ctx.lora.targets),
                           "trainable_params": count_params(adapters), "base_params": count_params(ctx.sft_params)}
    # collectives: every process gathers
    export_params = sharding.to_host(ctx.plain(result.params)) if cfg.export_dir else None
    export_adapters = sharding.to_host(adapters) if cfg.get("export_adapter_dir", "") else None
    if distributed.is_main_process():
        write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
        plot_training_curves(workdir)
        if cfg.export_dir:
            from jaxpref.models import save_pretrained

            save_pretrained(ctx.model, export_params, cfg.export_dir)
            policy.tokenizer.save_pretrained(cfg.export_dir)
        if export_adapters is not None:
            lora.write_peft_adapter(cfg.export_adapter_dir, export_adapters, ctx.lora,
                                    base_model=policy.info.get("model_path", ""))
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                        if k not in ("examples", "rounds", "iterations", "curves")}))
    return summary


def _precompute_summary(cfg, workdir: str, done: PrecomputeOnly, seconds: float) -> dict:
    """``summary.json`` of a ``precompute_only`` job: where the reference log-probs are cached."""
    if done.cache is None:
        raise ConfigError("config.precompute_only: this job's first round has no precomputed frozen reference "
                          "(precompute_ref_logps=False, a trust-region reference, KTO's kl rows, or ref_cache=False)")
    summary = {"method": cfg.method, "job": cfg.job, "precompute_only": True, "round": done.round_name,
               "reference_cache": done.cache["path"], "cache_hit": done.cache["hit"], "wall_seconds": seconds}
    if distributed.is_main_process():
        write_atomic(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    log.info("precompute_only: reference log-probs %s %s; stopping before training",
             "found in" if done.cache["hit"] else "written to", done.cache["path"])
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
    titles = {"kl_estimate": "mean log(pi / pi_ref) of the batch\n(a log-ratio, not a KL: can be < 0)"}
    for ax, k in zip(np.atleast_1d(axes), keys):
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r])
        ax.set_title(titles.get(k, k), fontsize=9)
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


_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "Print every config key with its value and help, then exit.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks instead of one-line errors.")

# Errors about the user's input or environment: reported as one line (``--debug``: with traceback).
USER_ERRORS = (ConfigError, BadRowError, CheckpointError, NonFiniteError, WorkdirLocked, AssetError,
               FileNotFoundError, PermissionError)


def one_line(err: BaseException) -> str:
    """An error's message on one line, without ml_collections' repr quoting."""
    text = str(err.args[0]) if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    for _ in range(2):  # KeyError inside AttributeError: quoted twice
        if isinstance(err, (KeyError, AttributeError)) and len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            try:
                text = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                break
    if isinstance(err, (KeyError, AttributeError)):
        text = f"unknown config key {text}"
    return " ".join(text.split()) or type(err).__name__


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one-line errors (a typo'd ``--config.key``, a missing file)."""
    try:
        return flags.FLAGS(argv)
    except Exception as err:  # noqa: BLE001 - flag values: absl's and ml_collections' errors alike
        if "--debug" in argv:
            raise
        sys.exit(f"error: {one_line(err)}\n(every setting: --config=configs/<method>.py --print_config)")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    cfg = _CONFIG.value
    if cfg is None:
        sys.exit("error: --config is required, e.g. --config=configs/dpo.py (configs/ holds one file per method)")
    try:
        cfg.keys()  # the config file is loaded lazily: a missing or broken file fails here
    except Exception as err:  # noqa: BLE001
        if _DEBUG.value:
            raise
        sys.exit(f"error: --config: {one_line(err)}")
    if _PRINT_CONFIG.value:
        print(describe_config(cfg))
        return
    try:
        run(cfg, _WORKDIR.value or os.path.join("runs", cfg.method))
    except Preempted as stop:
        log.warning("%s", stop)
        if compiling_in_background():  # stopped during a compilation, which is still running
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + stop.signum)
        raise SystemExit(128 + stop.signum) from None
    except USER_ERRORS as err:
        if _DEBUG.value:
            raise
        log.error("error: %s", one_line(err))
        raise SystemExit(2 if isinstance(err, ConfigError) else 1) from None


def cli(argv: list[str] | None = None) -> None:
    """``python -m jaxpref.main ...`` / ``jaxpref train ...``."""
    torch_free.keep_torch_out()  # a JAX job: PyTorch stays out of the process (runtime.torch_free)
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
