"""Claim 1: TR-DPO / TR-IPO / TR-KTO vs DPO / IPO / KTO, plus an alpha x tau sweep."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evidence.report import Claim, bar_plot, compare, metric, standard_row
from evidence.runs import Mode, RunResult, RunSpec, run_all

TR_PAIRS = (("dpo", "tr_dpo", "DPO"), ("ipo", "tr_ipo", "IPO"), ("kto", "tr_kto", "KTO"))


def claim_trust_region(mode: Mode, seeds: Sequence[int]) -> Claim:
    sweep = [RunSpec(f"TR-DPO α={a} τ={t}", "tr_dpo", (("ref_update_alpha", a), ("ref_update_every", t)))
             for a, t in mode.tr_sweep]
    main = [RunSpec(label, name) for base, tr, short in TR_PAIRS
            for name, label in ((base, short), (tr, f"TR-{short}"))]
    res = run_all(main + sweep, mode, seeds)
    claim = Claim(
        "trust_region", "TR-DPO / TR-IPO / TR-KTO vs DPO / IPO / KTO",
        "Updating the reference during training (soft `alpha`, every `tau` steps) beats the frozen-reference "
        "method: +8.4 (DPO), +14.3 (IPO), +15 (KTO) points of win rate on Reddit TL;DR with Pythia 6.9B.",
        "Each base row is `configs/<loss>.py` as is (frozen SFT reference, beta 0.1 / IPO 0.5); each TR- row is "
        "`configs/tr_<loss>.py` (the same run with `ref <- 0.6 policy + 0.4 ref` every 64 steps). Same data, "
        "steps, batch, optimizer and seed within a pair. The sweep rows are TR-DPO with other (alpha, tau). "
        "Win rate: oracle verdicts of one policy sample vs one SFT sample per held-out prompt (ties half).",
        ["win_rate_vs_sft", "kl_vs_sft", "mean_reward"],
    )
    for spec in main + sweep:
        claim.rows.append(standard_row(spec.label, f"`{spec.config}` {dict(spec.overrides) or ''}", res[spec.label]))
    for _, _, short in TR_PAIRS:
        compare(claim, f"TR-{short} > {short}", metric(res[f"TR-{short}"], "win_rate_vs_sft"),
                metric(res[short], "win_rate_vs_sft"), "win rate")
    dpo = metric(res["DPO"], "win_rate_vs_sft")
    if sweep:
        claim.tables.append(sweep_table(mode, {s.label: metric(res[s.label], "win_rate_vs_sft") for s in sweep},
                                        dpo))
    labels = [s.label for s in main + sweep]
    claim.plots.append(bar_plot("trust_region", "Trust-region vs frozen reference", labels,
                                [metric(res[lb], "win_rate_vs_sft") for lb in labels], "win rate vs SFT", 0.5))
    claim.discussion = trust_region_discussion(claim, res)
    return claim


def trust_region_discussion(claim: Claim, res: dict[str, list[RunResult]]) -> str:
    """What happened, and why where the paper's direction does not show."""
    ahead = [c["what"].split(" >")[0] for c in claim.comparisons if c["delta"] > 0]
    kl_up = {short: np.mean(metric(res[f"TR-{short}"], "kl_vs_sft")) - np.mean(metric(res[short], "kl_vs_sft"))
             for _, _, short in TR_PAIRS}
    best = max(c["delta"] for c in claim.comparisons)
    text = (f"TR is ahead for {', '.join(ahead) or 'none of the three'}"
            + (f"; the largest gain is {best:+.3f}, far from the paper's +0.08 to +0.15. " if best < 0.05 else ". ")
            + ("Moving the reference raises the KL from SFT (" if all(v > 0 for v in kl_up.values())
               else "TR changes the KL from SFT by (")
            + ", ".join(f"{k} {v:+.2f} nats" for k, v in kl_up.items()) + "). ")
    if len(ahead) < 3 or any(not c["verdict"].startswith("reproduced") for c in claim.comparisons):
        text += ("Our reading: these runs are a few hundred steps of a 2-layer model that stays within a couple of "
                 "nats of SFT, so the frozen reference is not yet the binding constraint the paper says it becomes "
                 "in long runs; a moving reference then mostly loosens the KL anchor, which buys reward only while "
                 "the policy still has room to improve within the trust region. ")
    if any("α=" in r["row"] for r in claim.rows):
        text += "The sweep is reported, not used to pick a setting (no tuning on the evaluation prompts)."
    return text


def sweep_table(mode: Mode, cells: dict[str, list[float]], dpo: list[float]) -> str:
    """Markdown grid of TR-DPO win rates (rows tau, columns alpha) with the difference to DPO."""
    alphas = sorted({a for a, _ in mode.tr_sweep})
    taus = sorted({t for _, t in mode.tr_sweep})
    lines = ["TR-DPO sweep, win rate vs SFT (difference to DPO, mean over seeds):", "",
             "| tau \\ alpha | " + " | ".join(f"{a}" for a in alphas) + " |",
             "| --- |" + " --- |" * len(alphas)]
    for t in taus:
        cells_t = []
        for a in alphas:
            v = cells.get(f"TR-DPO α={a} τ={t}")
            cells_t.append("-" if v is None else f"{np.mean(v):.3f} ({np.mean(v) - np.mean(dpo):+.3f})")
        lines.append(f"| {t} | " + " | ".join(cells_t) + " |")
    return "\n".join(lines)


