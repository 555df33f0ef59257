"""A claim's result (``Claim``), its table rows, comparisons and plots, and its CLAIMS.md section."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from evidence.runs import RunResult
from evidence.stats import fmt, mean_std, paired_verdict

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOTS = os.path.join(BENCH, "claims")

@dataclasses.dataclass
class Claim:
    """What a claim function returns: rows of per-seed metrics, comparisons and notes."""

    name: str
    title: str
    paper: str  # the paper's headline claim
    setup: str  # markdown: what each row is
    columns: list[str]  # metric keys shown in the table, in order
    rows: list[dict] = dataclasses.field(default_factory=list)  # {"row", "what", "metrics": {key: [per seed]}}
    comparisons: list[dict] = dataclasses.field(default_factory=list)  # {"what", "metric", **paired_verdict}
    tables: list[str] = dataclasses.field(default_factory=list)  # extra markdown tables
    plots: list[str] = dataclasses.field(default_factory=list)
    discussion: str = ""
    mode: str = ""
    seeds: list[int] = dataclasses.field(default_factory=list)
    settings: str = ""
    wall_seconds: float = 0.0  # this invocation, runs reused from disk cost ~0 here
    cpu_seconds: float = 0.0
    overhead_seconds: float = 0.0  # this invocation's time outside the runs (e.g. SPPO's evaluation)
    run_log: list[dict] = dataclasses.field(default_factory=list)  # the runs' own timings (RUN_LOG rows)


DIGITS = {"kl_vs_sft": 2, "num_pairs": 0}  # decimals per metric in tables (default 3)
COLUMN_NAMES = {
    "win_rate_vs_sft": "win rate vs SFT", "kl_vs_sft": "KL vs SFT", "mean_reward": "oracle reward",
    "num_pairs": "labelled pairs", "judge_win_rate": "judge P(policy > SFT)", "oracle_win_rate": "oracle win rate",
    "distinct_samples": "distinct samples", "head_to_head": "P(SPPO > iter-DPO)",
}


def metric(results: list[RunResult], key: str) -> list[float]:
    return [float(r.summary[key]) for r in results]


def standard_row(label: str, what: str, results: list[RunResult], extra: Sequence[str] = ()) -> dict:
    """A row with win rate, KL and oracle reward (plus ``extra`` summary keys) per seed."""
    keys = ("win_rate_vs_sft", "kl_vs_sft", "mean_reward", *extra)
    return {"row": label, "what": what, "metrics": {k: metric(results, k) for k in keys}}


def compare(claim: Claim, what: str, a: Sequence[float], b: Sequence[float], metric_name: str) -> None:
    claim.comparisons.append({"what": what, "metric": metric_name, **paired_verdict(a, b)})


def verdicts(claim: Claim) -> list[str]:
    return [c["verdict"] for c in claim.comparisons]


# --- plots ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str) -> str:
    """Writes ``benchmarks/claims/<name>.png``; returns the path relative to ``benchmarks/``."""
    os.makedirs(PLOTS, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(PLOTS, f"{name}.png"), dpi=90)
    _pyplot().close(fig)
    return f"claims/{name}.png"


def bar_plot(name: str, title: str, labels: list[str], values: list[list[float]], ylabel: str,
             baseline: float | None = None) -> str:
    """Bars of per-seed means with std error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(labels) + 1.5), 3.6))
    means = [mean_std(v)[0] for v in values]
    stds = [0.0 if math.isnan(mean_std(v)[1]) else mean_std(v)[1] for v in values]
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    lo = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(min(lo - 0.05, baseline - 0.05 if baseline is not None else lo), None)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, name)


def line_plot(ax, xs: Sequence[float], per_seed: list[list[float]], label: str, **kw) -> None:
    """Mean line over seeds with a ±std band; ``per_seed[i]`` is seed i's curve."""
    y = np.asarray(per_seed, np.float64)
    m = y.mean(axis=0)
    ax.plot(xs, m, marker="o", label=label, **kw)
    if y.shape[0] > 1:
        s = y.std(axis=0, ddof=1)
        ax.fill_between(xs, m - s, m + s, alpha=0.2, **{k: v for k, v in kw.items() if k == "color"})


def claim_costs(entries: dict[str, dict], ordered: list[str]) -> dict[str, dict]:
    """Per claim: wall/CPU seconds of its runs, each run counted once (in the first claim using it)."""
    seen: set[str] = set()
    out = {}
    for name in ordered:
        log = entries[name]["run_log"]
        new = [r for r in log if r["workdir"] not in seen]
        seen.update(r["workdir"] for r in log)
        out[name] = {"runs": len(log), "shared": len(log) - len(new),
                     "wall": sum(r["wall_seconds"] for r in new),
                     "cpu": sum(r["cpu_seconds"] or 0.0 for r in new),
                     "cpu_known": all(r["cpu_seconds"] is not None for r in new)}
    return out


def cost_sentence(c: dict, costs: dict) -> str:
    k = costs[c["name"]]
    cpu = f"{k['cpu'] / 60:.1f} min CPU" if k["cpu_known"] else "CPU time not recorded"
    return (f"{k['runs']} runs ({k['shared']} shared with earlier claims and counted there): "
            f"{k['wall'] / 60:.1f} min wall, {cpu}; plus {max(c['overhead_seconds'], 0) / 60:.1f} min of "
            "evaluation in this script")


def claim_markdown(c: dict, number: int, costs: dict) -> str:
    """One claim's section of CLAIMS.md from its JSON entry."""
    lines = [f"## {number}. {c['title']}", "",
             f"*{c['settings']}. {cost_sentence(c, costs)}*", "",
             f"**Paper:** {c['paper']}", "", f"**Rows:** {c['setup']}", ""]
    cols = c["columns"]
    lines += ["| row | " + " | ".join(COLUMN_NAMES.get(k, k) for k in cols) + " | note |",
              "| --- |" + " --- |" * (len(cols) + 1)]
    for r in c["rows"]:
        cells = " | ".join(fmt(r["metrics"].get(k), DIGITS.get(k, 3)) for k in cols)
        lines.append(f"| {r['row']} | {cells} | {r['what']} |")
    lines += ["", "| comparison | difference (mean ± s.e. over seeds) | verdict |", "| --- | --- | --- |"]
    for cmp in c["comparisons"]:
        se = "" if cmp["se"] is None else f" ± {cmp['se']:.3f}"
        delta = f"{cmp['delta']:+.3f}{se}" if isinstance(cmp["delta"], float) else str(cmp["delta"])
        lines.append(f"| {cmp['what']} | {delta} ({cmp['metric']}) | **{cmp['verdict']}** |")
    for t in c["tables"]:
        lines += ["", t]
    for p in c["plots"]:
        lines += ["", f"![{c['name']}]({p})"]
    lines += ["", f"**Discussion.** {c['discussion']}", ""]
    return "\n".join(lines)


