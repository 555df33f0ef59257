"""Runs of the claims: sizes (``Mode``), one job per (config, overrides, seed) (``RunSpec``), cached
on disk under ``runs/claims/<mode>/`` so identical configs run once, and ``analysis_job`` for the
analyses that call the library on a run's setup (RSO's pairs, active DPO's pools, checkpoints).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = os.path.join(ROOT, "runs", "claims")

# --- modes ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mode:
    """Run sizes shared by every claim (equal compute and label budgets within a claim)."""

    name: str
    seeds: int
    offline_steps: int  # DPO-family steps (configs default: 300)
    online_steps: int  # steps per round / iteration / acquisition (configs default: 150)
    online_prompts: int  # prompts sampled per online round (configs default: 512)
    eval_prompts: int  # held-out prompts of the final evaluation (default: 512)
    round_prompts: int  # held-out prompts of per-round evaluations (default: 256)
    acquisitions: int  # active DPO acquisitions of 64 labels (configs default: 8)
    tr_sweep: tuple[tuple[float, int], ...]  # (alpha, tau) cells of the TR-DPO sweep
    frontier_methods: tuple[str, ...]
    frontier_betas: tuple[float, ...]
    frontier_seeds: int = 1  # 36 runs per seed: one seed keeps the full mode under 60 minutes


FULL = Mode(
    name="full", seeds=3, offline_steps=300, online_steps=150, online_prompts=512, eval_prompts=512,
    round_prompts=256, acquisitions=8,
    tr_sweep=tuple((a, t) for t in (32, 128) for a in (0.5, 0.8, 1.0)),
    frontier_methods=("dpo", "ipo", "kto", "tr_dpo", "tr_ipo", "tr_kto", "rso", "sppo", "selm"),
    frontier_betas=(0.05, 0.1, 0.3, 1.0),
)
QUICK = Mode(
    name="quick", seeds=1, offline_steps=150, online_steps=100, online_prompts=256, eval_prompts=256,
    round_prompts=128, acquisitions=4,
    tr_sweep=(),
    frontier_methods=("dpo", "sppo"),
    frontier_betas=(0.05, 0.1, 0.3, 1.0),
)


def describe_mode(mode: Mode, seeds: Sequence[int]) -> str:
    """One markdown sentence stating a mode's sizes."""
    return (f"mode **{mode.name}**, seeds {list(seeds)}; DPO-family runs {mode.offline_steps} steps of batch 32 on "
            f"4,096 behaviour-policy pairs; online methods {mode.online_steps} steps per round on "
            f"{mode.online_prompts} fresh prompts per round; final evaluation on {mode.eval_prompts} held-out "
            f"prompts (per-round curves on {mode.round_prompts})")


# --- runs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One job: ``configs/<config>.py`` with ``overrides`` (dotted keys); ``label`` is for tables."""

    label: str
    config: str
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass
class RunResult:
    spec: RunSpec
    seed: int
    cfg: Any
    workdir: str
    summary: dict
    reused: bool


def load_config(name: str):
    """``configs/<name>.py``'s ``get_config()`` (as tests/helpers.py loads it)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def set_field(cfg, key: str, value) -> None:
    """``cfg.a.b = value`` for ``key = "a.b"``; the config is locked, so typos raise."""
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    node[last] = value


def make_config(spec: RunSpec, mode: Mode, seed: int):
    """The config of ``spec`` at ``mode``'s sizes for one seed."""
    cfg = load_config(spec.config)
    cfg.lock()
    cfg.seed = seed
    cfg.eval.num_prompts, cfg.eval.round_prompts = mode.eval_prompts, mode.round_prompts
    if cfg.job == "offline":
        cfg.num_steps = mode.offline_steps
    else:
        cfg.num_steps, cfg.num_prompts = mode.online_steps, mode.online_prompts
    cfg.keep_checkpoints = 8  # SPPO's per-iteration policies are evaluated afterwards
    for key, value in spec.overrides:
        set_field(cfg, key, value)
    cfg.checkpoint_every = cfg.num_steps  # one save at the end: no resume needed here
    return cfg


def config_hash(cfg) -> str:
    return hashlib.sha256(cfg.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:10]


TIMING_FILE = "claims_timing.json"  # a run's own wall and CPU seconds, kept next to its summary
RUN_LOG: list[dict] = []  # every run_spec call of this invocation: workdir, its run's timing, reused or not


def run_spec(spec: RunSpec, mode: Mode, seed: int) -> RunResult:
    """Runs (or reuses the finished run of) ``spec`` for ``seed``."""
    from jaxpref.main import run

    cfg = make_config(spec, mode, seed)
    workdir = os.path.join(RUNS, mode.name, f"{spec.config}-s{seed}-{config_hash(cfg)}")
    summary_path, timing_path = os.path.join(workdir, "summary.json"), os.path.join(workdir, TIMING_FILE)
    reused = os.path.exists(summary_path)
    if reused:
        with open(summary_path) as f:
            summary = json.load(f)
        timing = {"wall_seconds": summary["wall_seconds"], "cpu_seconds": None}
        if os.path.exists(timing_path):
            with open(timing_path) as f:
                timing = json.load(f)
        print(f"  [reused] {spec.label} seed {seed}: win {summary['win_rate_vs_sft']:.3f}", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # an interrupted run: start it again cleanly
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run(cfg, workdir)
        timing = {"wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
        with open(timing_path, "w") as f:
            json.dump(timing, f)
        print(f"  {spec.label} seed {seed}: win {summary['win_rate_vs_sft']:.3f}, KL {summary['kl_vs_sft']:.2f}, "
              f"{timing['wall_seconds']:.0f} s", flush=True)
    RUN_LOG.append({"workdir": os.path.relpath(workdir, ROOT), "reused": reused, **timing})
    return RunResult(spec, seed, cfg, workdir, summary, reused)


def run_all(specs: Sequence[RunSpec], mode: Mode, seeds: Sequence[int]) -> dict[str, list[RunResult]]:
    """``label -> [result per seed]``; seed-major order so each seed's SFT is trained once."""
    out: dict[str, list[RunResult]] = {s.label: [] for s in specs}
    for seed in seeds:
        for spec in specs:
            out[spec.label].append(run_spec(spec, mode, seed))
    return out




def analysis_job(cfg, name: str):
    """``jaxpref.main.setup`` of ``cfg`` in a scratch workdir (``runs/claims/analysis/<name>``): the
    job's context and trainer, to call a method's own round producers and helpers outside a run."""
    from jaxpref.main import setup

    workdir = os.path.join(RUNS, "analysis", f"{name}-{config_hash(cfg)}")
    shutil.rmtree(workdir, ignore_errors=True)
    return setup(cfg, workdir)
