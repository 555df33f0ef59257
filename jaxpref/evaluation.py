"""Held-out evaluation: sample from the policy and the SFT policy, judge, compare.

``win_rate_vs_sft`` is the fraction of held-out prompts on which the policy's sample gets a
higher judge reward than the SFT policy's sample (ties count half). ``kl_vs_sft`` is the
Monte-Carlo estimate ``E_{y ~ pi}[log pi(y|x) - log pi_sft(y|x)]`` from the policy's samples
(exact in expectation at temperature 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxpref.batches import PairExample, bucket_length, collate_pairs, default_buckets, pad_sequences
from jaxpref.losses import sequence_logps
from jaxpref.models import forward
from jaxpref.sampling import completions_to_lists, generate, left_pad
from jaxpref.train_step import batch_groups, grouped_logps

RewardFn = Callable[[Sequence[Sequence[int]], Sequence[Sequence[int]]], np.ndarray]


def batch_starts(num_items: int, batch_size: int, desc: str):
    """``range(0, num_items, batch_size)``, shown as a progress bar named ``desc`` when there are
    several batches (on process 0 only)."""
    starts = range(0, num_items, batch_size)
    return tqdm(starts, desc=desc, unit="batch", mininterval=5.0, disable=len(starts) < 4 or jax.process_index() != 0)


def sample_responses(
    model, params, prompts: Sequence[Sequence[int]], rng, *, eos_id: int, pad_id: int, max_new_tokens: int,
    batch_size: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, desc: str = "sampling",
) -> tuple[list[list[int]], np.ndarray]:
    """Samples one response per prompt (a progress bar named ``desc`` when there are several batches).

    Returns ``(responses, model_logps[N])``: token lists through EOS and the summed log-prob of
    each response under the model's own distribution. Batches are padded to ``batch_size``
    (and prompts to one length) so the sampler compiles once.
    """
    prompt_len = max(len(p) for p in prompts)
    responses, logps = [], []
    for start in batch_starts(len(prompts), batch_size, desc):
        chunk = list(prompts[start : start + batch_size])
        n_real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n_real)
        ids, mask = left_pad(chunk, pad_id=pad_id, length=prompt_len)
        out = generate(
            model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.fold_in(rng, start),
            max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
            temperature=temperature, top_k=top_k, top_p=top_p,
        )
        responses += completions_to_lists(out)[:n_real]
        logps.append(np.asarray(jnp.sum(out.model_logps, axis=-1))[:n_real])
    return responses, np.concatenate(logps)


def score_responses(
    model, params, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *, pad_id: int,
    batch_size: int,
) -> np.ndarray:
    """Summed log-probs ``[N]`` of ``responses`` given ``prompts`` under ``params``."""
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    length = bucket_length(longest, default_buckets(max(longest, 16)))
    fn = jax.jit(lambda p, i, a, c: sequence_logps(forward(model, p, i, a), i, c))
    out = []
    for start in range(0, len(prompts), batch_size):
        ps = list(prompts[start : start + batch_size])
        rs = list(responses[start : start + batch_size])
        n_real = len(ps)
        ps += [ps[-1]] * (batch_size - n_real)
        rs += [rs[-1]] * (batch_size - n_real)
        ids, attn, comp = pad_sequences(ps, rs, length=length, pad_id=pad_id)
        out.append(np.asarray(fn(params, ids, attn, comp))[:n_real])
    return np.concatenate(out)


def win_rate(policy_rewards: np.ndarray, baseline_rewards: np.ndarray) -> float:
    """Fraction of rows where the policy wins, ties counting half."""
    p, b = np.asarray(policy_rewards), np.asarray(baseline_rewards)
    return float(np.mean((p > b) + 0.5 * (p == b)))


def evaluate_against_sft(
    model, params, sft_params, prompts: Sequence[Sequence[int]], reward_fn: RewardFn, rng, *,
    eos_id: int, pad_id: int, max_new_tokens: int, batch_size: int,
    temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
) -> dict:
    """Samples policy and SFT responses to ``prompts``, judges them, and estimates KL.

    Returns a dict with ``win_rate_vs_sft, mean_reward, sft_mean_reward, kl_vs_sft`` and a few
    example responses.
    """
    kw = dict(eos_id=eos_id, pad_id=pad_id, max_new_tokens=max_new_tokens, batch_size=batch_size,
              temperature=temperature, top_k=top_k, top_p=top_p)
    policy_rng, sft_rng = jax.random.split(rng)
    pol_resp, pol_logps = sample_responses(model, params, prompts, policy_rng, **kw)
    sft_resp, _ = sample_responses(model, sft_params, prompts, sft_rng, **kw)
    sft_logps_of_pol = score_responses(model, sft_params, prompts, pol_resp, pad_id=pad_id, batch_size=batch_size)
    pol_r = reward_fn(prompts, pol_resp)
    sft_r = reward_fn(prompts, sft_resp)
    return {
        "num_prompts": len(prompts),
        "win_rate_vs_sft": win_rate(pol_r, sft_r),
        "mean_reward": float(np.mean(pol_r)),
        "sft_mean_reward": float(np.mean(sft_r)),
        "kl_vs_sft": float(np.mean(pol_logps - sft_logps_of_pol)),
        "mean_response_tokens": float(np.mean([len(r) for r in pol_resp])),
        "examples": [
            {"prompt": list(map(int, prompts[i])), "policy": pol_resp[i], "sft": sft_resp[i],
             "policy_reward": float(pol_r[i]), "sft_reward": float(sft_r[i])}
            for i in range(min(4, len(prompts)))
        ],
    }


def held_out_preference_accuracy(
    model, params, ref_params, pairs: Sequence[PairExample], *, pad_id: int, buckets, batch_size: int, beta: float,
) -> dict:
    """Implicit-reward accuracy and margin of the policy on held-out labelled pairs.

    For datasets without an oracle: the fraction of pairs with
    ``beta*h(chosen) > beta*h(rejected)`` (``h = log pi - log pi_ref``).
    """
    names = ("chosen", "rejected")
    fn = jax.jit(lambda p, r, g: (grouped_logps(model, p, g, names), grouped_logps(model, r, g, names)))
    margins = []
    for start in range(0, len(pairs), batch_size):
        chunk = list(pairs[start : start + batch_size])
        n_real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n_real)
        groups, _ = batch_groups(collate_pairs(chunk, pad_id=pad_id, buckets=buckets))
        pol, ref = fn(params, ref_params, groups)
        m = beta * ((pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"]))
        margins.append(np.asarray(m)[:n_real])
    m = np.concatenate(margins)
    return {"held_out_pairs": int(m.size), "held_out_reward_accuracy": float(np.mean(m > 0)),
            "held_out_reward_margin": float(np.mean(m))}
