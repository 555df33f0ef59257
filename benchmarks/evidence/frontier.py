"""Claim 6: oracle reward vs KL from SFT across beta for every method with a beta."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evidence.report import Claim, _pyplot, metric, save_figure, standard_row
from evidence.runs import Mode, RunResult, RunSpec, run_all
from evidence.stats import fmt, mean_std

FRONTIER_NAMES = {"dpo": "DPO", "ipo": "IPO", "kto": "KTO", "tr_dpo": "TR-DPO", "tr_ipo": "TR-IPO",
                  "tr_kto": "TR-KTO", "rso": "RSO", "sppo": "SPPO", "selm": "SELM"}


def claim_frontier(mode: Mode, seeds: Sequence[int]) -> Claim:
    specs = [RunSpec(f"{FRONTIER_NAMES[m]} β={b}", m, (("beta", b),))
             for m in mode.frontier_methods for b in mode.frontier_betas]
    res = run_all(specs, mode, seeds)
    sft_reward = [r.summary["sft_mean_reward"] for r in res[specs[0].label]]
    claim = Claim(
        "frontier", "Reward-KL frontier of every method",
        "The DPO paper's controlled-generation experiment: plotting the expected reward against KL(pi || pi_ref) "
        "across hyper-parameters, DPO's frontier dominates the alternatives (PPO there).",
        "Each method's config as is, with `beta` set to each value (for RSO `beta` is the loss gamma; for SPPO "
        "eta = 1/beta; for IPO the target margin is 1/(2 beta) of per-token log-ratios). SLiC has no beta and no "
        "reference and active DPO is DPO with another data source, so they are left out. Points are means over "
        "seeds of the oracle reward of one policy sample per held-out prompt and the Monte-Carlo KL from SFT. "
        "'on front' = the point is not dominated (higher reward at lower KL) by any other method's point.",
        ["win_rate_vs_sft", "kl_vs_sft", "mean_reward"],
    )
    points = {s.label: (np.mean(metric(res[s.label], "kl_vs_sft")), np.mean(metric(res[s.label], "mean_reward")))
              for s in specs}
    front = pareto_front(points)
    for s in specs:
        row = standard_row(s.label, "on front" if s.label in front else "", res[s.label])
        claim.rows.append(row)
    by_method = {}
    for m in mode.frontier_methods:
        labels = [f"{FRONTIER_NAMES[m]} β={b}" for b in mode.frontier_betas]
        by_method[m] = sum(lb in front for lb in labels)
    claim.tables.append("Points on the joint Pareto front, per method: " + ", ".join(
        f"{FRONTIER_NAMES[m]} {k}/{len(mode.frontier_betas)}" for m, k in by_method.items())
        + f". SFT policy: oracle reward {fmt(sft_reward)} at KL 0.")
    claim.plots.append(frontier_plot(mode, res, float(np.mean(sft_reward))))
    dpo_dominated = by_method.get("dpo", 0) == 0
    claim.comparisons.append({"what": "DPO has points on the joint reward-KL front", "metric": "Pareto",
                              "delta": by_method.get("dpo", 0), "se": None,
                              "verdict": "not reproduced" if dpo_dominated else "reproduced"})
    on_front = [FRONTIER_NAMES[m] for m, k in by_method.items() if k]
    saturated = saturating_methods(mode, res)
    monotone = [FRONTIER_NAMES[m] for m in mode.frontier_methods
                if np.all(np.diff([np.mean(metric(res[f"{FRONTIER_NAMES[m]} β={b}"], "kl_vs_sft"))
                                   for b in sorted(mode.frontier_betas)]) < 0)]
    claim.discussion = (
        "The DPO paper compares DPO with PPO and unlikelihood training, none of which jaxpref has; here the "
        "question is only whether DPO's points are efficient among the preference methods. Methods with points "
        f"on the joint front: {', '.join(on_front)}. "
        + ("Every DPO point is dominated. " if dpo_dominated else "")
        + "The on-policy methods (SPPO, and SELM / RSO where included) train on the policy's own samples "
        "with oracle-picked pairs, while the offline methods learn from behaviour-policy pairs with noisy "
        f"Bradley-Terry labels. KL falls monotonically as beta grows for {', '.join(monotone) or 'no method'}"
        + (f"; for {', '.join(saturated)} the smallest beta adds KL without adding reward." if saturated else ".")
    )
    return claim


def saturating_methods(mode: Mode, res: dict[str, list[RunResult]]) -> list[str]:
    """Methods whose smallest beta has more KL but no more reward than the next beta."""
    if len(mode.frontier_betas) < 2:
        return []
    out = []
    for m in mode.frontier_methods:
        lo, nxt = (f"{FRONTIER_NAMES[m]} β={b}" for b in sorted(mode.frontier_betas)[:2])
        kl = [np.mean(metric(res[x], "kl_vs_sft")) for x in (lo, nxt)]
        rw = [np.mean(metric(res[x], "mean_reward")) for x in (lo, nxt)]
        if kl[0] > kl[1] and rw[0] <= rw[1]:
            out.append(FRONTIER_NAMES[m])
    return out


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Labels of ``(kl, reward)`` points no other point beats (lower-or-equal KL and higher reward, or
    lower KL and equal-or-higher reward)."""
    front = set()
    for a, (kl_a, r_a) in points.items():
        dominated = any((kl_b <= kl_a and r_b > r_a) or (kl_b < kl_a and r_b >= r_a)
                        for b, (kl_b, r_b) in points.items() if b != a)
        if not dominated:
            front.add(a)
    return front


def frontier_plot(mode: Mode, res: dict, sft_reward: float) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, m in enumerate(mode.frontier_methods):
        labels = [f"{FRONTIER_NAMES[m]} β={b}" for b in mode.frontier_betas]
        kl = [np.mean(metric(res[lb], "kl_vs_sft")) for lb in labels]
        rw = [np.mean(metric(res[lb], "mean_reward")) for lb in labels]
        rs = [mean_std(metric(res[lb], "mean_reward"))[1] for lb in labels]
        order = np.argsort(kl)
        ax.errorbar(np.asarray(kl)[order], np.asarray(rw)[order], yerr=np.nan_to_num(np.asarray(rs)[order]),
                    marker="o", ms=4, capsize=2, color=cmap(i % 10), label=FRONTIER_NAMES[m],
                    ls="--" if m.startswith("tr_") else "-")
        for b, x, y in zip(mode.frontier_betas, kl, rw):
            ax.annotate(f"{b:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.scatter([0.0], [sft_reward], color="black", marker="*", s=80, zorder=5, label="SFT")
    ax.set_xlabel("KL(policy || SFT), nats per response")
    ax.set_ylabel("mean oracle reward")
    ax.set_title("Reward vs KL across beta (labels: beta)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, "frontier")


