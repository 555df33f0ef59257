"""Active preference learning for DPO (Muldrew et al. 2024).

Each acquisition draws a pool of prompts, samples K completions per prompt from the current
policy, and spends ``labels_per_step`` oracle labels on the pairs an acquisition function
selects:

- ``hybrid``: the prompts with the highest predictive entropy ``-mean_k log pi(y_k|x)``
  (``active.entropy="per_token"``: divided by each response's length) (a pool of
  ``entropy_pool_factor * labels_per_step``), then among them the pairs on which
  DPO's implicit preference model is most certain, ``|beta h(y_1) - beta h(y_2)|`` with
  ``h = log pi - log pi_sft``;
- ``random``: random prompts and a random pair of their completions (the baseline);
- ``entropy`` and ``certainty``: each half of the hybrid alone (the paper's ablations):
  the highest-entropy prompts with a random pair, or the most certain pairs of the whole pool.

``active.strategies`` lists the strategies to run (default ``random,hybrid``); each gets the same
label budget, pools and samples.

After each acquisition the policy is re-trained from SFT with ``config.loss`` (DPO) on all
labels so far (as in the official code) and evaluated, giving a learning curve of win rate
against labels. With ``active.epochs > 0`` each re-training runs that many passes over the
labels so far (so a small labelled set is not over-fitted by a fixed step count); otherwise
``num_steps`` steps.

One round per (strategy, acquisition); a strategy's rounds are consecutive, and the strategy
whose policy the job returns (the hybrid, if run) comes last. The labelled sets live in the
method's checkpointed state.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from jaxpref.checks import POSITIVE_INT
from jaxpref.config import ConfigError, require
from jaxpref.data.batches import PairExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.methods import Method, check_loss
from jaxpref.methods.context import plot_curves
from jaxpref.objectives import PAIR
from jaxpref.runtime import distributed
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


def predictive_entropy(sample_logps_nk: np.ndarray, lengths_nk: np.ndarray | None = None) -> np.ndarray:
    """Monte-Carlo entropy of pi(.|x) from K samples' log-probs: ``[n, K] -> [n]``.

    With ``lengths_nk`` (response tokens), the per-token entropy ``-mean_k log pi(y_k|x) / |y_k|``:
    the sequence entropy grows with response length, so it otherwise ranks prompts that elicit
    long responses first."""
    if lengths_nk is not None:
        sample_logps_nk = sample_logps_nk / np.maximum(lengths_nk, 1)
    return -np.mean(sample_logps_nk, axis=1)


def pair_certainty(policy_logps_nk: np.ndarray, ref_logps_nk: np.ndarray, *, beta: float,
                   lengths_nk: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Implicit-reward certainty of every pair: ``(certainty [n, P], pairs [P, 2])``.

    ``certainty[b, q] = |beta h(y_i) - beta h(y_j)|`` for pair ``q = (i, j)``, ``i < j``. With
    ``lengths_nk`` the implicit reward is per token, ``beta h(y) / |y|`` (as for the entropy).
    """
    k = policy_logps_nk.shape[1]
    ii, jj = np.triu_indices(k, 1)
    rewards = beta * (policy_logps_nk - ref_logps_nk)
    if lengths_nk is not None:
        rewards = rewards / np.maximum(lengths_nk, 1)
    return np.abs(rewards[:, ii] - rewards[:, jj]), np.stack([ii, jj], axis=1)


def select_hybrid(entropy_n: np.ndarray, certainty_np: np.ndarray, valid_np: np.ndarray, *, num: int,
                  pool_factor: int) -> list[tuple[int, int]]:
    """``num`` (prompt, pair) picks: top-entropy prompts, then their most certain valid pair."""
    candidates = np.argsort(-entropy_n, kind="stable")[: pool_factor * num]
    scored = []
    for b in candidates:
        cert = np.where(valid_np[b], certainty_np[b], -np.inf)
        q = int(np.argmax(cert))
        if np.isfinite(cert[q]):
            scored.append((float(cert[q]), int(b), q))
    scored.sort(key=lambda t: -t[0])
    return [(b, q) for _, b, q in scored[:num]]


def select_entropy(entropy_n: np.ndarray, valid_np: np.ndarray, rng: np.random.Generator, *,
                   num: int) -> list[tuple[int, int]]:
    """``num`` picks: the highest-entropy prompts (with a valid pair), each with a random valid pair."""
    return _random_pairs_in_order(np.argsort(-entropy_n, kind="stable"), valid_np, rng, num=num)


def select_certainty(certainty_np: np.ndarray, valid_np: np.ndarray, *, num: int) -> list[tuple[int, int]]:
    """``num`` picks: the prompts whose most certain valid pair is most certain, over the whole pool."""
    return select_hybrid(np.zeros(certainty_np.shape[0]), certainty_np, valid_np, num=num,
                         pool_factor=math.ceil(certainty_np.shape[0] / max(num, 1)))


STRATEGIES = ("random", "entropy", "certainty", "hybrid")


def parse_strategies(value) -> tuple[str, ...]:
    """``"random,hybrid"`` (or a sequence) -> ``("random", "hybrid")``; unknown names raise."""
    names = tuple(n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip())
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"active.strategies: unknown {unknown or 'empty'}; choose from {', '.join(STRATEGIES)}")
    return names


def select_random(valid_np: np.ndarray, rng: np.random.Generator, *, num: int) -> list[tuple[int, int]]:
    """``num`` random prompts, each with a random valid pair."""
    return _random_pairs_in_order(rng.permutation(valid_np.shape[0]), valid_np, rng, num=num)


def _random_pairs_in_order(order: np.ndarray, valid_np: np.ndarray, rng: np.random.Generator, *,
                           num: int) -> list[tuple[int, int]]:
    """The first ``num`` prompts of ``order`` that have a valid pair, each with a random one."""
    picks = []
    for b in order:
        options = np.flatnonzero(valid_np[b])
        if options.size:
            picks.append((int(b), int(rng.choice(options))))
        if len(picks) == num:
            break
    return picks


def training_steps(cfg, num_labels: int) -> int:
    """DPO steps of a re-training on ``num_labels`` pairs: ``active.epochs`` passes, or ``num_steps``."""
    epochs = cfg.active.get("epochs", 0)
    return max(1, math.ceil(epochs * num_labels / cfg.batch_size)) if epochs else cfg.num_steps


def objectives(cfg) -> tuple[str, ...]:
    return (cfg.loss,)


def validate(cfg) -> None:
    check_loss(cfg, groups=PAIR)
    acfg = cfg.active
    try:
        parse_strategies(acfg.get("strategies", "random,hybrid"))
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    for name in ("entropy", "certainty"):
        if name in acfg:
            require(acfg[name] in ("sequence", "per_token"), f"active.{name}",
                    f"must be 'sequence' or 'per_token', got {acfg[name]!r}")
    for key in ("acquisitions", "labels_per_step", "pool_size", "num_samples", "entropy_pool_factor"):
        if key in acfg:
            problem = POSITIVE_INT.problem(acfg[key])
            require(problem is None, f"active.{key}", problem or "")
    require(acfg.get("num_samples", 2) >= 2, "active.num_samples", "must be >= 2 (pairs of samples)")


def ordered_strategies(acfg) -> tuple[str, ...]:
    """The strategies in run order: the main one (hybrid if run, else the last listed) last."""
    names = parse_strategies(acfg.get("strategies", "random,hybrid"))
    main = "hybrid" if "hybrid" in names else names[-1]
    return tuple(n for n in names if n != main) + (main,)


def acquisition_pool(ctx, params, a: int) -> tuple[list, list, np.ndarray]:
    """Acquisition ``a``'s pool: ``active.pool_size`` fresh prompts and ``active.num_samples``
    samples of ``params`` per prompt, ``(prompts, responses[n][K], sample_logps[n, K])``."""
    cfg, acfg = ctx.cfg, ctx.cfg.active
    prompts = ctx.train_prompts(acfg.pool_size, round_index=a)
    responses, logps = ctx.sample(params, prompts, acfg.num_samples, cfg.seed * 1000 + a)
    return prompts, responses, logps


def acquire(ctx, strategy: str, a: int) -> list[PairExample]:
    """Acquisition ``a`` of ``strategy``: a pool of prompts, samples of the strategy's current
    policy, ``labels_per_step`` pairs picked and labelled by the judge (Bradley-Terry draws)."""
    cfg, acfg = ctx.cfg, ctx.cfg.active
    params = ctx.sft_params if a == 0 else ctx.params
    prompts, responses, logps = acquisition_pool(ctx, params, a)
    lengths_nk = np.array([[len(y) for y in ys] for ys in responses])
    per_token = {name: lengths_nk if acfg.get(name, "sequence") == "per_token" else None
                 for name in ("entropy", "certainty")}
    # The implicit reward beta * (log pi - log pi_sft) from one scoring program for both policies, so
    # that it is exactly 0 while pi is pi_sft (the first acquisition), not float noise between the
    # sampler's and the scorer's log-probs (which would make the picks depend on the device mesh).
    policy_logps = ctx.score(params, prompts, responses)
    ref_logps = policy_logps if a == 0 else ctx.score(ctx.sft_params, prompts, responses)
    certainty, pairs = pair_certainty(policy_logps, ref_logps, beta=cfg.beta, lengths_nk=per_token["certainty"])
    valid = np.array([[responses[b][i] != responses[b][j] for i, j in pairs] for b in range(len(prompts))])
    rng = np.random.default_rng([cfg.seed, a, 17])
    lengths, num = per_token["entropy"], acfg.labels_per_step
    if strategy == "hybrid":
        picks = select_hybrid(predictive_entropy(logps, lengths), certainty, valid, num=num,
                              pool_factor=acfg.entropy_pool_factor)
    elif strategy == "entropy":
        picks = select_entropy(predictive_entropy(logps, lengths), valid, rng, num=num)
    elif strategy == "certainty":
        picks = select_certainty(certainty, valid, num=num)
    else:
        picks = select_random(valid, rng, num=num)
    firsts = [responses[b][pairs[q][0]] for b, q in picks]
    seconds = [responses[b][pairs[q][1]] for b, q in picks]
    probs = ctx.judge.prob([prompts[b] for b, _ in picks], firsts, seconds) if picks else []
    labelled = []
    for (b, _), y1, y2, p in zip(picks, firsts, seconds, probs):
        first_wins = rng.random() < float(p)
        labelled.append(PairExample(prompts[b], *((y1, y2) if first_wins else (y2, y1))))
    return labelled


def make_round(ctx, index: int) -> Round | None:
    cfg, acfg = ctx.cfg, ctx.cfg.active
    strategies = ordered_strategies(acfg)
    if index >= len(strategies) * acfg.acquisitions:
        return None
    s, a = divmod(index, acfg.acquisitions)
    strategy = strategies[s]
    labelled = ctx.state.setdefault("labelled", {}).setdefault(strategy, [])
    labelled += [[list(e.prompt), list(e.chosen), list(e.rejected)] for e in acquire(ctx, strategy, a)]
    data = TrainingSet([PairExample(*row) for row in labelled])
    prompts = [row[0] for row in labelled]
    return Round(f"{strategy} a{a + 1}", data, cfg.loss, training_steps(cfg, len(labelled)), seed=cfg.seed + a,
                 init="sft", reference=Reference("sft"), sampled=True, shapes=ctx.shapes(prompts),
                 info={"strategy": strategy, "labels": len(labelled)}, eval_index=a)


def summarize(ctx, result) -> dict:
    acfg = ctx.cfg.active
    curves: dict[str, list[dict]] = {}
    for record in result.history:
        point = {k: record[k] for k in ("labels", "win_rate_vs_sft", "mean_reward", "kl_vs_sft")}
        curves.setdefault(record["strategy"], []).append(point)
        log.info("active/%s: %d labels -> win rate %.3f", record["strategy"], point["labels"],
                 point["win_rate_vs_sft"])
    extra = {"curves": curves, "label_budget": acfg.acquisitions * acfg.labels_per_step}
    if "random" in curves:
        target = curves["random"][-1]["win_rate_vs_sft"]
        extra["random_final_win_rate"] = target
        for strategy in curves:
            if strategy != "random":
                reached = [p["labels"] for p in curves[strategy] if p["win_rate_vs_sft"] >= target]
                extra[f"{strategy}_labels_to_reach_random_final"] = reached[0] if reached else None
    if distributed.is_main_process():
        plot_curves(os.path.join(ctx.workdir, "active_learning_curve.png"), curves)
    return extra


METHOD = Method("active_dpo", make_round, objectives, validate, summarize, evaluate_rounds=True, uses_judge=True)
