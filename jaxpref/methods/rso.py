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
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.objectives import get_objective
from jaxpref.online import build_round_data, sample_k

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


def run(ctx) -> dict:
    """RSO job: SFT samples -> rejection sampling -> judged pairs -> sigmoid/hinge-norm training."""
    cfg, rcfg = ctx.cfg, ctx.cfg.rso
    done, params, history = ctx.resume_rounds()
    if done:  # the single round finished before a restart
        return {"params": params, "extra": history[0]}
    prompts = ctx.train_prompts(cfg.num_prompts)
    responses, _ = sample_k(ctx.model, ctx.sft_params, prompts, rcfg.num_samples, jax.random.PRNGKey(cfg.seed),
                            pad_id=ctx.pad_id, eos_id=ctx.eos_id, sampling=cfg.sampling)
    flat_p = [p for p in prompts for _ in range(rcfg.num_samples)]
    flat_r = [y for ys in responses for y in ys]
    rewards = ctx.judge.rewards(flat_p, flat_r).reshape(len(prompts), rcfg.num_samples)
    accepted = np.asarray(statistical_rejection_sampling(
        jax.random.PRNGKey(cfg.seed + 1), jnp.asarray(rewards), beta=rcfg.sampling_beta,
        num_accept=rcfg.num_accept))
    rng = np.random.default_rng([cfg.seed, 5])
    pair_prompts, chosen, rejected = [], [], []
    for i, prompt in enumerate(prompts):
        cand = [responses[i][j] for j in accepted[i]]
        if rcfg.pairing == "tournament":
            idx_pairs = tournament_pairs(rewards[i, accepted[i]], rng)
        elif rcfg.pairing == "first_round":
            idx_pairs = first_round_pairs(len(cand), rng)
        else:
            raise ValueError(f"config.rso.pairing: unknown {rcfg.pairing!r}; known: first_round, tournament")
        for a, b in idx_pairs:
            if cand[a] == cand[b]:
                continue
            p_a = float(ctx.judge.prob([prompt], [cand[a]], [cand[b]])[0])
            if p_a == 0.5:  # the judge has no preference: no label
                continue
            a_wins = p_a > 0.5
            w, l_ = (cand[a], cand[b]) if a_wins else (cand[b], cand[a])
            pair_prompts.append(prompt)
            chosen.append(w)
            rejected.append(l_)
    data = build_round_data(pair_prompts, {"chosen": chosen, "rejected": rejected}, pad_id=ctx.pad_id)
    log.info("rso: %d prompts x %d samples -> %d accepted each -> %d pairs", len(prompts), rcfg.num_samples,
             rcfg.num_accept, data.size)
    params, stats = ctx.trainer.train_round(ctx.sft_params, ctx.sft_params, data, get_objective(cfg.loss),
                                            steps=cfg.num_steps, first_step=0, seed=cfg.seed, desc="rso")
    extra = {
        "num_pairs": data.size,
        "accepted_mean_reward": float(np.mean(np.take_along_axis(rewards, accepted, 1))),
        "sft_sample_mean_reward": float(rewards.mean()),
    }
    ctx.save_round(0, params, ctx.sft_params, {"history": [extra]})
    return {"params": params, "stats": stats, "extra": extra}
