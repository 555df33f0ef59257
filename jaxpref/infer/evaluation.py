"""Held-out evaluation: sample from the policy and the starting (SFT) policy, judge, compare.

``win_rate_vs_sft`` is the fraction of held-out prompts on which the policy's sample gets a
higher judge reward than the SFT policy's sample (ties count half). ``kl_vs_sft`` is the
Monte-Carlo estimate ``E_{y ~ pi}[log pi(y|x) - log pi_sft(y|x)]`` from the policy's samples
(exact in expectation at temperature 1). Everything runs on the job's mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxpref.data.batches import PairExample, UnpairedExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.infer.sampling import sample_responses
from jaxpref.infer.scoring import reference_logps_of, score_responses

RewardFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], np.ndarray]


def win_rate(policy_rewards: np.ndarray, baseline_rewards: np.ndarray) -> float:
    """Fraction of rows where the policy wins, ties counting half."""
    p, b = np.asarray(policy_rewards), np.asarray(baseline_rewards)
    return float(np.mean((p > b) + 0.5 * (p == b)))


def evaluate_against_sft(
    model, params, sft_params, prompts: Sequence[Sequence[int]], reward_fn: RewardFn, rng, *,
    eos_id: int, pad_id: int, max_new_tokens: int, batch_size: int,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, mesh: Mesh | None = None,
    prompt_len: int | None = None, prob_fn: Callable | None = None,
) -> dict:
    """Samples policy and SFT responses to ``prompts``, judges them, and estimates KL.

    ``reward_fn(prompts, responses) -> [N]`` judges each sample; with a pairwise-only judge pass
    ``reward_fn=None`` and ``prob_fn(prompts, a, b) -> P(a > b)``: the win rate is then the mean
    preference of the policy's sample over the SFT one, and there is no mean reward.

    Returns a dict with ``num_prompts, win_rate_vs_sft, mean_reward, sft_mean_reward, kl_vs_sft``,
    the mean response length and a few example responses. ``prompt_len``: pad prompts to this
    length (default: the longest), e.g. one length for every evaluation of a job (one compile).
    """
    kw = dict(eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
              temperature=temperature, top_k=top_k, top_p=top_p, mesh=mesh, prompt_len=prompt_len)
    policy_rng, sft_rng = jax.random.split(rng)
    pol_resp, pol_logps = sample_responses(model, params, prompts, policy_rng, desc="eval sampling", **kw)
    sft_resp, _ = sample_responses(model, sft_params, prompts, sft_rng, desc="eval sampling (SFT)", **kw)
    length = None if prompt_len is None else prompt_len + max_new_tokens
    sft_logps_of_pol = score_responses(model, sft_params, prompts, pol_resp, pad_id=pad_id, batch_size=batch_size,
                                       mesh=mesh, length=length)
    if reward_fn is None:
        prefs = np.asarray(prob_fn(prompts, pol_resp, sft_resp), np.float64)
        pol_r, sft_r = prefs, 1.0 - prefs
        rewards = {"win_rate_vs_sft": float(np.mean(prefs))}
    else:
        pol_r = np.asarray(reward_fn(prompts, pol_resp))
        sft_r = np.asarray(reward_fn(prompts, sft_resp))
        rewards = {"win_rate_vs_sft": win_rate(pol_r, sft_r), "mean_reward": float(np.mean(pol_r)),
                   "sft_mean_reward": float(np.mean(sft_r))}
    return {
        "num_prompts": len(prompts),
        **rewards,
        "kl_vs_sft": float(np.mean(pol_logps - sft_logps_of_pol)),
        "mean_response_tokens": float(np.mean([len(r) for r in pol_resp])),
        "examples": [
            {"prompt": list(map(int, prompts[i])), "policy": pol_resp[i], "sft": sft_resp[i],
             "policy_reward": float(pol_r[i]), "sft_reward": float(sft_r[i])}
            for i in range(min(4, len(prompts)))
        ],
    }


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (``z=1.96``) Wilson score interval of a proportion ``successes / n``."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of an AUC from ``n_pos`` positives and ``n_neg`` negatives (Hanley & McNeil 1982)."""
    if n_pos == 0 or n_neg == 0:
        return 0.0, 1.0
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    half = z * np.sqrt(max(var, 0.0))
    return float(max(0.0, auc - half)), float(min(1.0, auc + half))


def held_out_preference_accuracy(
    model, params, ref_params, pairs: Sequence[PairExample], *, pad_id: int, buckets, batch_size: int, beta: float,
    mesh: Mesh | None = None,
) -> dict:
    """Implicit-reward accuracy and margin of the policy on held-out labelled pairs.

    For datasets without an oracle: the fraction of pairs with
    ``beta*h(chosen) > beta*h(rejected)`` (``h = log pi - log pi_ref``).
    """
    names = ("chosen", "rejected")
    data = TrainingSet(list(pairs))
    kw = dict(pad_id=pad_id, buckets=buckets, batch_size=batch_size, mesh=mesh)
    pol = reference_logps_of(model, params, data, names, **kw)
    ref = reference_logps_of(model, ref_params, data, names, **kw)
    m = beta * ((pol["ref_chosen"] - ref["ref_chosen"]) - (pol["ref_rejected"] - ref["ref_rejected"]))
    correct = float(np.sum(m > 0))
    return {"held_out_pairs": int(m.size), "held_out_reward_accuracy": correct / m.size,
            "held_out_reward_accuracy_ci95": wilson_interval(correct, int(m.size)),
            "held_out_reward_margin": float(np.mean(m))}


def held_out_kto_separation(
    model, params, ref_params, examples: Sequence[UnpairedExample], *, pad_id: int, buckets, batch_size: int,
    beta: float, mesh: Mesh | None = None,
) -> dict:
    """How well the implicit reward ``r = beta * (log pi - log pi_ref)`` separates held-out desirable
    from undesirable completions (KTO's data has no pairs): the AUC, i.e. the probability that a
    random desirable example outscores a random undesirable one (ties half), with its 95% interval,
    and the mean reward of each kind."""
    data = TrainingSet(list(examples))
    kw = dict(pad_id=pad_id, buckets=buckets, batch_size=batch_size, mesh=mesh)
    r = beta * (reference_logps_of(model, params, data, ("completion",), **kw)["ref_completion"]
                - reference_logps_of(model, ref_params, data, ("completion",), **kw)["ref_completion"])
    good = np.asarray([bool(e.desirable) for e in examples])
    pos, neg = r[good], r[~good]
    out = {"held_out_examples": int(r.size), "held_out_desirable": int(pos.size),
           "held_out_undesirable": int(neg.size)}
    if pos.size and neg.size:
        auc = float(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
        out.update(held_out_reward_auc=auc, held_out_reward_auc_ci95=auc_interval(auc, pos.size, neg.size),
                   held_out_desirable_reward=float(pos.mean()), held_out_undesirable_reward=float(neg.mean()))
    return out
