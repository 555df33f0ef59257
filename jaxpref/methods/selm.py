"""SELM: self-exploring language models, optimistic online DPO (Zhang et al. 2024).

Round 1 trains DPO on the offline pairs. Each later round samples K responses per prompt
from the current policy, ranks them with the judge into (best, worst) pairs, draws a greedy
response ``y_ref`` from the reference (= the policy at the round's start), and trains with
``selm_loss = DPO + alpha * beta * (log pi(y_ref) - log pi_ref(y_ref))``, which lowers the
likelihood of what the reference already does and so drives exploration. With
``config.selm.online_loss = "dpo"`` the same loop is iterative online DPO (the baseline).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxpref.objectives import get_objective
from jaxpref.online import build_round_data, pick_best_worst, sample_k

log = logging.getLogger("jaxpref")


def distinct_fraction(responses: list[list[int]]) -> float:
    """Share of distinct responses among samples (an exploration / diversity measure)."""
    return len({tuple(r) for r in responses}) / max(len(responses), 1)


def run(ctx) -> dict:
    cfg, scfg = ctx.cfg, ctx.cfg.selm
    start, params, history = ctx.resume_rounds()
    for rnd in range(start, scfg.rounds):
        ref = params
        first = rnd * cfg.num_steps
        if rnd == 0:
            pairs = ctx.offline_pairs()
            data = build_round_data([e.prompt for e in pairs], {"chosen": [e.chosen for e in pairs],
                                                                "rejected": [e.rejected for e in pairs]},
                                    pad_id=ctx.pad_id)
            objective, diversity = get_objective("dpo"), None
        else:
            prompts = ctx.train_prompts(cfg.num_prompts, round_index=rnd)
            responses, _ = sample_k(ctx.model, params, prompts, scfg.num_samples,
                                    jax.random.PRNGKey(cfg.seed * 100 + rnd), pad_id=ctx.pad_id, eos_id=ctx.eos_id,
                                    sampling=cfg.sampling)
            flat_p = [p for p in prompts for _ in range(scfg.num_samples)]
            scores = ctx.judge.rewards(flat_p, [y for ys in responses for y in ys]).reshape(len(prompts), -1)
            best, worst, keep = pick_best_worst(scores)
            rows = np.flatnonzero(keep)
            groups = {"chosen": [responses[b][best[b]] for b in rows],
                      "rejected": [responses[b][worst[b]] for b in rows]}
            objective = get_objective(scfg.online_loss)
            if "sample" in objective.groups:
                greedy = ctx.greedy_responses(ref, [prompts[b] for b in rows])
                groups["sample"] = greedy
            data = build_round_data([prompts[b] for b in rows], groups, pad_id=ctx.pad_id)
            diversity = distinct_fraction([y for ys in responses for y in ys])
            log.info("selm round %d: %d pairs, distinct samples %.3f", rnd + 1, data.size, diversity)
        params, _ = ctx.trainer.train_round(params, ref, data, objective, steps=cfg.num_steps, first_step=first,
                                            seed=cfg.seed + rnd, desc=f"selm r{rnd + 1}")
        history.append({"round": rnd + 1, "distinct_samples": diversity, **ctx.quick_eval(params, rnd)})
        ctx.save_round(rnd, params, ref, {"history": history})
    return {"params": params, "extra": {"rounds": history}}
