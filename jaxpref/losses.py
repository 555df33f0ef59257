"""Preference-optimization losses as pure, jit-able functions over sequence log-probs.

Import-light by design: this module needs only ``jax`` (no flax, no datasets), so other JAX
code can use it without the trainer.

Notation (../shared/PAPERS.md): for a prompt x and response y, ``logp(y)`` is the policy's
summed log-prob of the response tokens, ``ref(y)`` the reference policy's. The log-ratio is
``h(y) = logp(y) - ref(y)`` and the pair margin ``z = h(y_w) - h(y_l)``.

Argument names: ``pc, pr`` are the policy's chosen / rejected log-probs, ``rc, rr`` the
reference's, all of shape ``[B]``. Losses are **unreduced** (``[B]``); the caller reduces.
Implicit rewards are returned with ``stop_gradient`` (they are diagnostics, not objectives).
All arithmetic is done in float32 whatever the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


def token_logps(logits: Array, targets: Array) -> Array:
    """``log softmax(logits)[target]`` per position, in float32: ``[..., V]``, ``[...]`` -> ``[...]``."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)


def sequence_logps(
    logits: Array, input_ids: Array, completion_mask: Array, average: bool = False
) -> Array:
    """Summed (or averaged) log-probs of the completion tokens of each sequence.

    Logits at position t predict ``input_ids[t+1]``; a predicted token counts when its
    ``completion_mask`` entry is 1, so prompt and padding never contribute (padding logits may
    even be non-finite). Computed in float32, so bf16 logits are safe.

    Args:
      logits: ``[B, T, V]`` next-token logits.
      input_ids: ``[B, T]`` int token ids.
      completion_mask: ``[B, T]`` 1 on response tokens, 0 on prompt and padding.
      average: divide by the number of counted tokens (at least 1) instead of summing.

    Returns:
      ``[B]`` float32 log-probs.
    """
    mask = completion_mask[:, 1:].astype(bool)
    total = jnp.sum(jnp.where(mask, token_logps(logits[:, :-1], input_ids[:, 1:]), 0.0), axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(mask, axis=-1), 1)
    return total


def completion_lengths(completion_mask: Array) -> Array:
    """Number of counted completion tokens per row (``[B, T] -> [B]`` float32)."""
    return jnp.sum(completion_mask[:, 1:], axis=-1).astype(jnp.float32)


def _rewards(beta, chosen_logratios, rejected_logratios):
    return (
        jax.lax.stop_gradient(beta * chosen_logratios),
        jax.lax.stop_gradient(beta * rejected_logratios),
    )


def dpo_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0):
    """DPO (= RSO "sigmoid-norm"), optionally conservative (label smoothing ``e``).

    ``loss = -(1-e) log sigmoid(beta z) - e log sigmoid(-beta z)``,
    ``z = (pc - rc) - (pr - rr)``. Rafailov et al. 2023; Liu et al. 2023 (RSO).

    Args:
      pc, pr, rc, rr: ``[B]`` policy/reference log-probs of chosen/rejected responses.
      beta: KL strength (RSO's ``gamma``).
      label_smoothing: assumed label-noise rate ``e`` in [0, 0.5).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    logits = beta * (hw - hl)
    losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - (
        label_smoothing * jax.nn.log_sigmoid(-logits)
    )
    return (losses, *_rewards(beta, hw, hl))


def ipo_loss(pc, pr, rc, rr, *, beta: float, chosen_lengths=None, rejected_lengths=None):
    """IPO: ``(z' - 1/(2 beta))^2`` (Azar et al. 2023).

    With ``chosen_lengths``/``rejected_lengths`` (``[B]`` token counts) the log-ratios are
    per-token averages, as in TRL and confirmed with the IPO authors; without them, sums.
    The returned rewards use the same (averaged or summed) log-ratios as the loss.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss: pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        hw = hw / jnp.maximum(jnp.asarray(chosen_lengths, jnp.float32), 1.0)
        hl = hl / jnp.maximum(jnp.asarray(rejected_lengths, jnp.float32), 1.0)
    losses = (hw - hl - 1.0 / (2.0 * beta)) ** 2
    return (losses, *_rewards(beta, hw, hl))


def hinge_loss(pc, pr, rc, rr, *, beta: float):
    """RSO "hinge-norm": ``max(0, 1 - beta z)`` (SLiC's hinge with the reference in the margin).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    losses = jax.nn.relu(1.0 - beta * (hw - hl))
    return (losses, *_rewards(beta, hw, hl))


def slic_loss(pc, pr, *, delta: float, sft_weight: float = 0.0):
    """SLiC-HF calibration hinge, no reference: ``max(0, delta - pc + pr) - sft_weight * pc``.

    The optional second term is SLiC's regulariser (lambda times the negative log-likelihood of
    the chosen response). Zhao et al. 2023.

    Returns:
      ``(losses[B], chosen_scores[B], rejected_scores[B])`` where the scores are the policy
      log-probs (SLiC has no reference, hence no implicit reward).
    """
    pc, pr = _f32(pc, pr)
    losses = jax.nn.relu(delta - pc + pr) - sft_weight * pc
    return losses, jax.lax.stop_gradient(pc), jax.lax.stop_gradient(pr)


def kto_kl_estimate(policy_kl_logps, ref_kl_logps) -> Array:
    """KTO reference point ``z0 = max(0, mean(logp(y'|x) - ref(y'|x)))`` over mismatched pairs.

    Args:
      policy_kl_logps, ref_kl_logps: ``[B]`` log-probs of mismatched (x_i, y_j) sequences.

    Returns:
      A float32 scalar with ``stop_gradient`` applied.
    """
    p, r = _f32(policy_kl_logps, ref_kl_logps)
    return jax.lax.stop_gradient(jnp.maximum(jnp.mean(p - r), 0.0))


def kto_loss(
    policy_logps,
    ref_logps,
    desirable,
    *,
    beta: float,
    kl,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
):
    """KTO (Ethayarajh et al. 2024), unpaired.

    desirable:   ``lambda_D * (1 - sigmoid(beta (h - z0)))``
    undesirable: ``lambda_U * (1 - sigmoid(beta (z0 - h)))``
    with ``h = policy_logps - ref_logps`` and ``z0 = max(0, kl)``, not back-propagated.

    Args:
      policy_logps, ref_logps: ``[B]`` log-probs of each example's completion.
      desirable: ``[B]`` bool labels.
      beta: KL strength.
      kl: scalar KL estimate (see ``kto_kl_estimate``).

    Returns:
      ``(losses[B], rewards[B])`` with ``rewards = beta * h``.
    """
    p, r = _f32(policy_logps, ref_logps)
    h = p - r
    z0 = jax.lax.stop_gradient(jnp.maximum(jnp.asarray(kl, jnp.float32), 0.0))
    good = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (h - z0)))
    bad = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - h)))
    losses = jnp.where(jnp.asarray(desirable, bool), good, bad)
    return losses, jax.lax.stop_gradient(beta * h)


def kto_pair_loss(pc, pr, rc, rr, *, beta: float):
    """Paired KTO: each half's reference point is the batch KL of the other half.

    With ``z_w = max(0, mean(pc - rc))`` and ``z_l = max(0, mean(pr - rr))`` (not
    back-propagated), ``loss = [(1 - sigmoid(beta (h_w - z_l))) + (1 - sigmoid(beta (z_w - h_l)))] / 2``,
    whose batch mean equals the mean over the 2B halves used by TRL's ``kto_pair``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    z_w = jax.lax.stop_gradient(jnp.maximum(jnp.mean(hw), 0.0))
    z_l = jax.lax.stop_gradient(jnp.maximum(jnp.mean(hl), 0.0))
    losses = 0.5 * ((1.0 - jax.nn.sigmoid(beta * (hw - z_l))) + (1.0 - jax.nn.sigmoid(beta * (z_w - hl))))
    return (losses, *_rewards(beta, hw, hl))


def sppo_loss(pc, pr, rc, rr, chosen_probs, rejected_probs, *, beta: float):
    """SPPO, official form (Wu et al. 2024), ``eta = 1/beta``.

    ``loss = [(h_w - eta (P_w - 1/2))^2 + (h_l - eta (P_l - 1/2))^2] / 2`` where ``P`` is the
    estimated win rate of each response against the current policy. With eta ~ 1e3 the loss is
    ~1e5 at start, hence float32 throughout.

    Args:
      chosen_probs, rejected_probs: ``[B]`` win-rate estimates ``P_hat(y > pi_t | x)`` in [0, 1].

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr, p_w, p_l = _f32(pc, pr, rc, rr, chosen_probs, rejected_probs)
    hw, hl = pc - rc, pr - rr
    eta = 1.0 / beta
    losses = 0.5 * ((hw - eta * (p_w - 0.5)) ** 2 + (hl - eta * (p_l - 0.5)) ** 2)
    return (losses, *_rewards(beta, hw, hl))


def sppo_hard_loss(pc, pr, rc, rr, *, beta: float):
    """SPPO with hard labels (TRL ``sppo_hard``): ``(h_w - 1/(2beta))^2 + (h_l + 1/(2beta))^2``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    half_eta = 0.5 / beta
    losses = (hw - half_eta) ** 2 + (hl + half_eta) ** 2
    return (losses, *_rewards(beta, hw, hl))


def selm_loss(pc, pr, rc, rr, policy_sample_logps, ref_sample_logps, *, beta: float, alpha: float):
    """SELM optimistic DPO (Zhang et al. 2024).

    ``loss = -log sigmoid(beta z) + alpha * beta * (logp(y_ref) - ref(y_ref))`` where ``y_ref``
    is a response sampled (greedily, in the official code) from the reference policy.

    Args:
      policy_sample_logps, ref_sample_logps: ``[B]`` policy / reference log-probs of y_ref.
      alpha: weight of the optimism (exploration) term.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr, ps, rs = _f32(pc, pr, rc, rr, policy_sample_logps, ref_sample_logps)
    hw, hl = pc - rc, pr - rr
    losses = -jax.nn.log_sigmoid(beta * (hw - hl)) + alpha * beta * (ps - rs)
    return (losses, *_rewards(beta, hw, hl))


def sft_loss(logps, lengths):
    """Token-mean negative log-likelihood of a batch's completions, broadcast to ``[B]``.

    Every entry is ``-sum_b logps[b] / max(sum_b lengths[b], 1)`` (TRL's DPO ``sft`` loss type
    and the usual SFT objective), so the step's mean over the batch is the token mean.

    Args:
      logps: ``[B]`` summed completion log-probs.
      lengths: ``[B]`` counted completion tokens.

    Returns:
      ``[B]`` float32.
    """
    logps, lengths = _f32(logps, lengths)
    token_mean = -jnp.sum(logps) / jnp.maximum(jnp.sum(lengths), 1.0)
    return jnp.broadcast_to(token_mean, logps.shape)


def bradley_terry_loss(chosen_scores, rejected_scores):
    """Reward-model loss ``-log sigmoid(s_w - s_l)``; ``[B], [B] -> [B]``."""
    sw, sl = _f32(chosen_scores, rejected_scores)
    return -jax.nn.log_sigmoid(sw - sl)
