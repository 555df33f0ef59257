"""SELM: self-exploring language models, optimistic online DPO (Zhang et al. 2024).

Round 1 trains on offline pairs (DPO, as in the paper): ``config.data.source`` or the built-in
task's. Without offline pairs (your prompts, ``config.data.prompts``) round 1 is online like the
others, from the starting policy. Each online round samples K
responses per prompt from the current policy, ranks them with the judge into (best, worst)
pairs, draws a greedy response ``y_ref`` from the reference (= the policy at the round's
start), and trains with ``config.loss``: ``selm`` is
``DPO + alpha * beta * (log pi(y_ref) - log pi_ref(y_ref))``, which lowers the likelihood of
what the reference already does and so drives exploration; ``--config.loss=dpo`` makes the same
loop iterative online DPO (the baseline), and any other paired loss works too.

Every round starts from the previous one with the reference reset to its start
(``Reference("round_start")``); sampling and the judge run on the mesh.
"""

from __future__ import annotations

import logging

import numpy as np

from jaxpref.checks import POSITIVE_INT
from jaxpref.config import require
from jaxpref.data.batches import PairExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.methods import Method, check_loss, load_own_data, offline, training_steps
from jaxpref.methods.offline import chosen_rejected, pick_best_worst
from jaxpref.objectives import PAIR, get_objective
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


def distinct_fraction(responses: list[list[int]]) -> float:
    """Share of distinct responses among samples (an exploration / diversity measure)."""
    return len({tuple(r) for r in responses}) / max(len(responses), 1)


def first_round_loss(cfg) -> str:
    """Round 1's loss on the offline pairs: ``config.loss``, or DPO when it needs a sample of the
    reference (``selm``), which offline pairs do not have."""
    return "dpo" if "sample" in get_objective(cfg.loss).groups else cfg.loss


def objectives(cfg) -> tuple[str, ...]:
    return tuple(dict.fromkeys((first_round_loss(cfg), cfg.loss)))


def validate(cfg) -> None:
    check_loss(cfg, groups=PAIR + ("sample",))
    problem = POSITIVE_INT.problem(cfg.selm.rounds)
    require(problem is None, "selm.rounds", problem or "")
    require(isinstance(cfg.selm.num_samples, int) and cfg.selm.num_samples >= 2, "selm.num_samples",
            f"must be an integer >= 2, got {cfg.selm.num_samples!r}")


def make_round(ctx, rnd: int) -> Round | None:
    cfg, scfg = ctx.cfg, ctx.cfg.selm
    if rnd >= scfg.rounds:
        return None
    name, reference = f"selm r{rnd + 1}", Reference("round_start")
    if rnd == 0 and has_offline_pairs(ctx):
        return offline_round(ctx, name, reference)
    prompts = ctx.train_prompts(cfg.num_prompts, round_index=rnd)
    responses, logps = ctx.sample(ctx.params, prompts, scfg.num_samples, cfg.seed * 100 + rnd)
    best, worst, keep = pick_best_worst(ctx.rewards(prompts, responses))
    rows = np.flatnonzero(keep)
    kept_prompts = [prompts[b] for b in rows]
    samples = [None] * len(rows)
    # the round's start policy sampled them and is its reference (Round.sampler_logps)
    ref_chosen, ref_rejected = chosen_rejected(logps, rows, best, worst)
    sampler_logps = {"ref_chosen": ref_chosen, "ref_rejected": ref_rejected}
    if "sample" in get_objective(cfg.loss).groups:
        # y_ref from the reference: this round's start
        samples, sampler_logps["ref_sample"] = ctx.greedy(ctx.params, kept_prompts)
    pairs = [PairExample(p, responses[b][best[b]], responses[b][worst[b]], y)
             for p, b, y in zip(kept_prompts, rows, samples)]
    diversity = distinct_fraction([y for ys in responses for y in ys])
    log.info("selm round %d: %d pairs, distinct samples %.3f", rnd + 1, len(pairs), diversity)
    return Round(name, TrainingSet(pairs), cfg.loss, cfg.num_steps, seed=cfg.seed + rnd, reference=reference,
                 sampled=True, shapes=ctx.shapes(prompts), info={"distinct_samples": diversity},
                 sampler_logps=sampler_logps)


def has_offline_pairs(ctx) -> bool:
    """Round 1 can train on offline pairs: own ones (``data.source``), or the built-in task's when
    the job does not bring its own prompts."""
    return bool(ctx.cfg.data.source) or (ctx.policy.task is not None and not ctx.cfg.data.get("prompts", ""))


def offline_round(ctx, name: str, reference: Reference) -> Round:
    cfg = ctx.cfg
    if cfg.data.source:
        pairs, ctx.state["data_report"] = load_own_data(cfg, ctx.policy.tokenizer, "paired")
        return Round(name, TrainingSet(pairs), first_round_loss(cfg), training_steps(cfg, len(pairs)), seed=cfg.seed,
                     reference=reference, info={"distinct_samples": None})
    pairs = offline.builtin_pairs(ctx)
    return Round(name, TrainingSet(pairs), first_round_loss(cfg), cfg.num_steps, seed=cfg.seed,
                 reference=reference, sampled=not offline.is_echo(ctx), shapes=offline.builtin_shapes(ctx),
                 info={"distinct_samples": None})


def summarize(ctx, result) -> dict:
    return {"rounds": result.history}


METHOD = Method("selm", make_round, objectives, validate, summarize, evaluate_rounds=True, uses_judge=True)
