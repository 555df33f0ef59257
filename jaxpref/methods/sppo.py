"""SPPO: self-play preference optimization (Wu et al. 2024).

Iteration t: sample K responses per prompt from pi_t; a pairwise judge gives the K x K matrix
``P[i, j] = P(y_i > y_j | x)`` (diagonal 1/2); the win rate of each response against pi_t is
estimated as ``P_hat(y_i > pi_t) = mean_j P[i, j]`` (j over all K, i included, as in the
official code). Each prompt contributes its (best, worst) responses by ``P_hat`` and the
loss ``sppo_loss`` pulls ``log pi/pi_t`` toward ``eta (P_hat - 1/2)``, with the reference
= pi_t, frozen for the iteration. Preferences need not be transitive.

One round per iteration: sampled from the current policy on the mesh, trained from it with the
reference reset to it (``Reference("round_start")``).
"""

from __future__ import annotations

import logging

import numpy as np

from jaxpref.checks import POSITIVE_INT
from jaxpref.config import require
from jaxpref.data.batches import PairExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.judges.base import preference_matrix
from jaxpref.methods import Method, check_loss
from jaxpref.methods.offline import chosen_rejected, pick_best_worst
from jaxpref.objectives import PAIR
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


def win_rate_estimates(pref: np.ndarray) -> np.ndarray:
    """``P_hat(y_i > pi_t) = mean_j P[i, j]``: ``[n, K, K] -> [n, K]``."""
    return pref.mean(axis=-1)


# Win rates of the chosen / rejected response against the policy (``sppo``), and the pair's own
# preference P(y_w > y_l) (``sppo_single``).
EXTRAS = ("chosen_probs", "rejected_probs", "pair_probs")


def objectives(cfg) -> tuple[str, ...]:
    return (cfg.loss,)


def validate(cfg) -> None:
    check_loss(cfg, groups=PAIR, extras=EXTRAS)
    problem = POSITIVE_INT.problem(cfg.sppo.iterations)
    require(problem is None, "sppo.iterations", problem or "")
    require(isinstance(cfg.sppo.num_samples, int) and cfg.sppo.num_samples >= 2, "sppo.num_samples",
            f"must be an integer >= 2, got {cfg.sppo.num_samples!r}")


def make_round(ctx, it: int) -> Round | None:
    """Iteration ``it``: K samples per prompt from pi_t, the K x K preference matrix, (best, worst)."""
    cfg, scfg = ctx.cfg, ctx.cfg.sppo
    if it >= scfg.iterations:
        return None
    prompts = ctx.train_prompts(cfg.num_prompts, round_index=it)
    responses, logps = ctx.sample(ctx.params, prompts, scfg.num_samples, cfg.seed * 100 + it)
    pref = preference_matrix(ctx.judge, prompts, responses)
    p_hat = win_rate_estimates(pref)
    best, worst, keep = pick_best_worst(p_hat)
    rows = np.flatnonzero(keep)
    pairs = [PairExample(prompts[b], responses[b][best[b]], responses[b][worst[b]]) for b in rows]
    chosen_probs, rejected_probs = chosen_rejected(p_hat, rows, best, worst)
    data = TrainingSet(pairs, {"chosen_probs": chosen_probs, "rejected_probs": rejected_probs,
                               "pair_probs": pref[rows, best[rows], worst[rows]]})
    log.info("sppo iteration %d: %d/%d informative prompts", it + 1, rows.size, len(prompts))
    info = {"iteration": it + 1, "mean_best_win_rate": float(chosen_probs.mean())}
    ref_chosen, ref_rejected = chosen_rejected(logps, rows, best, worst)  # the round's start sampled them
    return Round(f"sppo it{it + 1}", data, cfg.loss, cfg.num_steps, seed=cfg.seed + it,
                 reference=Reference("round_start"), sampled=True, shapes=ctx.shapes(prompts), info=info,
                 sampler_logps={"ref_chosen": ref_chosen, "ref_rejected": ref_rejected})


def summarize(ctx, result) -> dict:
    return {"iterations": result.history}


METHOD = Method("sppo", make_round, objectives, validate, summarize, evaluate_rounds=True, uses_judge=True)
