"""RSO: statistical rejection sampling of responses from the optimal policy (Liu et al. 2023).

Target: ``pi_r(y|x) ∝ pi_sft(y|x) exp(r(x, y) / beta)``. From N SFT samples per prompt, draw
``num_accept`` without replacement: propose a remaining candidate uniformly, accept it with
probability ``exp((r_i - r_max) / beta)`` where ``r_max`` is the largest remaining reward;
repeat until accepted, remove it, continue. Accepted candidates are thus drawn with
probability ∝ ``exp(r_i / beta)`` among the remaining ones — SFT samples reweighted toward
``pi_r``. ``beta -> 0`` gives best-of-N; large ``beta`` uniform sampling of the SFT samples.
Accepted samples are paired ("first_round": random disjoint pairs; "tournament": the n-1
matches of a knock-out), labelled by the judge, and trained on with sigmoid-norm (``dpo``)
or hinge-norm (``hinge``) using ``gamma`` (config ``beta``) as the loss's KL strength.

One round: the starting policy is sampled (on the mesh), the pairs are judged in one batched
call, and the round trains from the starting policy against it as the frozen reference.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.checks import POSITIVE, POSITIVE_INT
from jaxpref.config import require
from jaxpref.data.batches import PairExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.methods import Method, check_loss
from jaxpref.objectives import PAIR
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


@functools.partial(jax.jit, static_argnames=("num_accept",))
def statistical_rejection_sampling(rng: jax.Array, rewards_bn: jax.Array, *, beta: float | jax.Array,
                                   num_accept: int) -> jax.Array:
    """Indices ``[B, num_accept]`` int32 of accepted candidates, in acceptance order.

    Args:
      rng: PRNG key (row b uses its own split).
      rewards_bn: ``[B, N]`` rewards of N SFT candidates per prompt; ``num_accept <= N``.
      beta: sampling temperature of the target ``pi_sft * exp(r / beta)``.
    """
    n = rewards_bn.shape[1]
    if num_accept > n:
        raise ValueError(f"num_accept={num_accept} > number of candidates {n}")
    rewards_bn = rewards_bn.astype(jnp.float32)

    def one_row(key, r_n):
        def accept_one(available_n, key_j):
            r_max = jnp.max(jnp.where(available_n, r_n, -jnp.inf))

            def not_accepted(carry):
                return ~carry[1]

            def propose(carry):
                k, _, _ = carry
                k, k_pick, k_coin = jax.random.split(k, 3)
                i = jax.random.categorical(k_pick, jnp.where(available_n, 0.0, -jnp.inf))
                accepted = jax.random.uniform(k_coin) < jnp.exp((r_n[i] - r_max) / beta)
                return k, accepted, i

            _, _, i = jax.lax.while_loop(not_accepted, propose, (key_j, jnp.array(False), jnp.int32(0)))
            return available_n.at[i].set(False), i.astype(jnp.int32)

        _, idx = jax.lax.scan(accept_one, jnp.ones((n,), bool), jax.random.split(key, num_accept))
        return idx

    return jax.vmap(one_row)(jax.random.split(rng, rewards_bn.shape[0]), rewards_bn)


def first_round_pairs(m: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """m/2 disjoint random index pairs of ``range(m)`` (the paper's best pairing)."""
    order = rng.permutation(m)
    return [(int(order[i]), int(order[i + 1])) for i in range(0, m - 1, 2)]


def tournament_pairs(rewards: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """All n-1 (winner, loser) matches of a knock-out over candidates with ``rewards [n]``.

    Byes go to the last entrant of an odd round. Ties are broken at random.
    """
    alive = list(rng.permutation(len(rewards)))
    matches = []
    while len(alive) > 1:
        nxt = []
        for a, b in zip(alive[0::2], alive[1::2]):
            a_wins = rewards[a] > rewards[b] or (rewards[a] == rewards[b] and rng.random() < 0.5)
            w, l_ = (a, b) if a_wins else (b, a)
            matches.append((int(w), int(l_)))
            nxt.append(w)
        if len(alive) % 2:
            nxt.append(alive[-1])
        alive = nxt
    return matches


def objectives(cfg) -> tuple[str, ...]:
    return (cfg.loss,)


def validate(cfg) -> None:
    check_loss(cfg, groups=PAIR)
    r = cfg.rso
    for key in ("num_samples", "num_accept"):
        problem = POSITIVE_INT.problem(r[key])
        require(problem is None, f"rso.{key}", problem or "")
    require(r.num_accept <= r.num_samples, "rso.num_accept", f"must be <= rso.num_samples ({r.num_samples})")
    problem = POSITIVE.problem(r.sampling_beta)
    require(problem is None, "rso.sampling_beta", problem or "")
    require(r.pairing in PAIRINGS, "rso.pairing", f"unknown {r.pairing!r}; known: {', '.join(PAIRINGS)}")


PAIRINGS = ("first_round", "tournament")


def rejection_sampled_pairs(prompts, responses, rewards: np.ndarray, accepted: np.ndarray, judge, *, pairing: str,
                            rng: np.random.Generator) -> tuple[list[PairExample], int]:
    """The labelled pairs of RSO's accepted samples.

    ``responses[n][N]`` with ``rewards [n, N]``; ``accepted [n, m]``: indices of the accepted
    samples per prompt. Each prompt's accepted samples are paired (``first_round_pairs`` or
    ``tournament_pairs``, drawing from ``rng`` prompt by prompt), identical responses dropped,
    and all remaining pairs judged in one ``judge.prob`` call; ties (P = 1/2) are dropped.
    Returns ``(pairs, number of candidate pairs before dropping)``.
    """
    candidates, total = [], 0  # (prompt index, response a, response b)
    for i in range(len(prompts)):
        cand = [responses[i][j] for j in accepted[i]]
        if pairing == "tournament":
            idx_pairs = tournament_pairs(rewards[i, accepted[i]], rng)
        else:
            idx_pairs = first_round_pairs(len(cand), rng)
        total += len(idx_pairs)
        candidates += [(i, cand[a], cand[b]) for a, b in idx_pairs if cand[a] != cand[b]]
    if not candidates:
        return [], total
    p_first = judge.prob([prompts[i] for i, _, _ in candidates], [a for _, a, _ in candidates],
                         [b for _, _, b in candidates])
    pairs = [PairExample(prompts[i], *((a, b) if p > 0.5 else (b, a)))
             for (i, a, b), p in zip(candidates, p_first) if p != 0.5]
    return pairs, total


def make_round(ctx, index: int) -> Round | None:
    """SFT samples -> rejection sampling -> judged pairs, trained with sigmoid/hinge-norm."""
    if index > 0:
        return None
    cfg, rcfg = ctx.cfg, ctx.cfg.rso
    prompts = ctx.train_prompts(cfg.num_prompts)
    responses, _ = ctx.sample(ctx.sft_params, prompts, rcfg.num_samples, cfg.seed)
    rewards = ctx.rewards(prompts, responses)
    accepted = np.asarray(statistical_rejection_sampling(
        jax.random.PRNGKey(cfg.seed + 1), jnp.asarray(rewards), beta=rcfg.sampling_beta, num_accept=rcfg.num_accept))
    pairs, candidates = rejection_sampled_pairs(prompts, responses, rewards, accepted, ctx.judge,
                                                pairing=rcfg.pairing, rng=np.random.default_rng([cfg.seed, 5]))
    log.info("rso: %d prompts x %d samples -> %d accepted each -> %d pairs", len(prompts), rcfg.num_samples,
             rcfg.num_accept, len(pairs))
    info = {"num_pairs": len(pairs), "candidate_pairs": candidates,
            "accepted_mean_reward": float(np.mean(np.take_along_axis(rewards, accepted, 1))),
            "sft_sample_mean_reward": float(rewards.mean())}
    return Round("rso", TrainingSet(pairs), cfg.loss, cfg.num_steps, seed=cfg.seed, init="sft",
                 reference=Reference("sft"), sampled=True, shapes=ctx.shapes(prompts), info=info)


def summarize(ctx, result) -> dict:
    record = result.history[0]
    return {k: record[k] for k in ("num_pairs", "accepted_mean_reward", "sft_sample_mean_reward")}


METHOD = Method("rso", make_round, objectives, validate, summarize, uses_judge=True)
