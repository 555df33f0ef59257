"""SPPO: self-play preference optimization (Wu et al. 2024).

Iteration t: sample K responses per prompt from pi_t; a pairwise judge gives the K x K matrix
``P[i, j] = P(y_i > y_j | x)`` (diagonal 1/2); the win rate of each response against pi_t is
estimated as ``P_hat(y_i > pi_t) = mean_j P[i, j]`` (j over all K, i included, as in the
official code). Each prompt contributes its (best, worst) responses by ``P_hat`` and the
loss ``sppo_loss`` pulls ``log pi/pi_t`` toward ``eta (P_hat - 1/2)``, with the reference
= pi_t, frozen for the iteration. Preferences need not be transitive.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxpref.objectives import get_objective
from jaxpref.online import build_round_data, pick_best_worst, sample_k

log = logging.getLogger("jaxpref")


def preference_matrix(judge, prompts, responses: list[list[list[int]]]) -> np.ndarray:
    """``[n, K, K]`` with ``P[b, i, j] = P(y_i > y_j | x_b)`` and ``P[b, i, i] = 1/2``."""
    n, k = len(prompts), len(responses[0])
    ii, jj = np.triu_indices(k, 1)
    flat_p = [prompts[b] for b in range(n) for _ in ii]
    y1 = [responses[b][i] for b in range(n) for i in ii]
    y2 = [responses[b][j] for b in range(n) for j in jj]
    upper = np.asarray(judge.prob(flat_p, y1, y2), np.float64).reshape(n, len(ii))
    mat = np.full((n, k, k), 0.5)
    mat[:, ii, jj] = upper
    mat[:, jj, ii] = 1.0 - upper
    return mat


def win_rate_estimates(pref: np.ndarray) -> np.ndarray:
    """``P_hat(y_i > pi_t) = mean_j P[i, j]``: ``[n, K, K] -> [n, K]``."""
    return pref.mean(axis=-1)


def run(ctx) -> dict:
    """T self-play iterations, each with the previous iteration's policy as reference."""
    cfg, scfg = ctx.cfg, ctx.cfg.sppo
    start, params, history = ctx.resume_rounds()
    objective = get_objective(cfg.loss)
    for it in range(start, scfg.iterations):
        prompts = ctx.train_prompts(cfg.num_prompts, round_index=it)
        responses, _ = sample_k(ctx.model, params, prompts, scfg.num_samples, jax.random.PRNGKey(cfg.seed * 100 + it),
                                pad_id=ctx.pad_id, eos_id=ctx.eos_id, sampling=cfg.sampling)
        p_hat = win_rate_estimates(preference_matrix(ctx.judge, prompts, responses))
        best, worst, keep = pick_best_worst(p_hat)
        rows = np.flatnonzero(keep)
        data = build_round_data(
            [prompts[b] for b in rows],
            {"chosen": [responses[b][best[b]] for b in rows], "rejected": [responses[b][worst[b]] for b in rows]},
            pad_id=ctx.pad_id,
            extras={"chosen_probs": p_hat[rows, best[rows]], "rejected_probs": p_hat[rows, worst[rows]]},
        )
        log.info("sppo iteration %d: %d/%d informative prompts", it + 1, rows.size, len(prompts))
        first = it * cfg.num_steps
        params, stats = ctx.trainer.train_round(params, params, data, objective, steps=cfg.num_steps,
                                                first_step=first, seed=cfg.seed + it, desc=f"sppo it{it + 1}")
        history.append({"iteration": it + 1, **ctx.quick_eval(params, it),
                        "mean_best_win_rate": float(p_hat[rows, best[rows]].mean())})
        ctx.save_round(it, params, params, {"history": history})
    return {"params": params, "extra": {"iterations": history}}
