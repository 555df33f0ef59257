"""Runs method configs with their defaults on the built-in task and prints the results table.

    python benchmarks/method_table.py                       # every method and loss config
    python benchmarks/method_table.py dpo tr_dpo --json out.json --workdir runs/table

Each config runs as its own ``python -m jaxpref.main`` process (the SFT policy is cached after
the first). The table reports what each run's ``summary.json`` says, plus the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = ["dpo", "ipo", "kto", "slic", "tr_dpo", "tr_ipo", "tr_kto"]
ONLINE = ["rso", "sppo", "selm", "active_dpo"]
# TRL's other DPO loss types, DPO options, combinations and the reference-free losses.
LOSSES = ["dpo_norm", "f_dpo", "ld_dpo", "wpo", "robust_dpo", "exo", "nca", "bco", "aot", "apo", "discopop", "rpo",
          "mpo", "cpo", "simpo", "alphapo", "orpo"]


def run_config(name: str, workdir: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "jaxpref.main", f"--config=configs/{name}.py", f"--workdir={workdir}", *overrides]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return {"config": name, "command": " ".join(cmd[1:]), "process_wall_seconds": wall, **summary}


def markdown(rows: list[dict]) -> str:
    lines = ["| config | win rate vs SFT | mean reward (SFT) | KL vs SFT | train tokens/s | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        tps = r.get("train_tokens_per_second")
        lines.append(
            f"| `{r['config']}` | {r['win_rate_vs_sft']:.3f} | {r['mean_reward']:.3f} ({r['sft_mean_reward']:.3f}) | "
            f"{r['kl_vs_sft']:.2f} | {f'{tps:,.0f}' if tps else '-'} | {r['process_wall_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=OFFLINE + ONLINE + LOSSES)
    parser.add_argument("--workdir", default="runs/table")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--override", action="append", default=[], help="extra --config.x=y for every run")
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        rows.append(run_config(name, os.path.join(args.workdir, name), args.override))
        print(f"{name}: win {rows[-1]['win_rate_vs_sft']:.3f}, {rows[-1]['process_wall_seconds']:.0f} s", flush=True)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
