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
    logits: Array, input_ids: Array, completion_mask: Array, average: bool = False, weights: Array | None = None
) -> Array:
    """Summed (or averaged) log-probs of the completion tokens of each sequence.

    Logits at position t predict ``input_ids[t+1]``; a predicted token counts when its
    ``completion_mask`` entry is 1, so prompt and padding never contribute, to the value or to the
    gradient, even when their logits are non-finite. Computed in float32, so bf16 logits are safe.

    Args:
      logits: ``[B, T, V]`` next-token logits.
      input_ids: ``[B, T]`` int token ids.
      completion_mask: ``[B, T]`` 1 on response tokens, 0 on prompt and padding.
      average: divide by the number of counted tokens (at least 1) instead of summing.
      weights: optional ``[B, T]`` float weight of each counted token's log-prob (aligned with
        ``completion_mask``; LD-DPO's ``ld_token_weights``).

    Returns:
      ``[B]`` float32 log-probs.
    """
    mask = completion_mask[:, 1:].astype(bool)
    per_token = counted_token_logps(logits, input_ids, completion_mask)
    if weights is not None:
        per_token = per_token * weights[:, 1:].astype(jnp.float32)
    total = jnp.sum(jnp.where(mask, per_token, 0.0), axis=-1)
    if average:
        total = total / jnp.maximum(jnp.sum(mask, axis=-1), 1)
    return total


def _counted_logits(logits: Array, mask: Array) -> Array:
    """``logits[:, :-1]`` with the positions whose predicted token is not counted (``mask[:, 1:]``
    is 0) replaced by zeros *before* any log-softmax, so a non-finite padding logit can reach
    neither a value nor a gradient (a ``where`` after it would give NaN gradients)."""
    return jnp.where(mask[:, 1:, None].astype(bool), logits[:, :-1], jnp.zeros((), logits.dtype))


def counted_token_logps(logits: Array, input_ids: Array, mask: Array) -> Array:
    """Per-position log-prob of the next token where it counts: ``[B, T, V]``, ``[B, T]``,
    ``[B, T]`` -> ``[B, T - 1]`` float32, 0 where ``mask[:, 1:]`` is 0 (see ``sequence_logps``)."""
    counted = mask[:, 1:].astype(bool)
    return jnp.where(counted, token_logps(_counted_logits(logits, mask), input_ids[:, 1:]), 0.0)


def ld_token_weights(chosen_mask: Array, rejected_mask: Array, ld_alpha: float) -> tuple[Array, Array]:
    """LD-DPO's token weights (Liu et al. 2024, "Length desensitization"): within a pair, the first
    ``min(|y_w|, |y_l|)`` response tokens of each response weigh 1 and the rest ``ld_alpha``.

    Args:
      chosen_mask, rejected_mask: ``[B, T]`` completion masks of the pair's two sequences.
      ld_alpha: weight of the tokens beyond the shorter response (1: plain summed log-probs).

    Returns:
      ``([B, T], [B, T])`` float32 weights for ``sequence_logps(weights=...)``.
    """
    cm, rm = chosen_mask.astype(jnp.float32), rejected_mask.astype(jnp.float32)
    shared = jnp.minimum(cm[:, 1:].sum(-1), rm[:, 1:].sum(-1))[:, None]

    def weights(m):
        position = jnp.cumsum(m, axis=-1)  # 1-based index of each response token
        return jnp.where(position <= shared, 1.0, jnp.float32(ld_alpha)) * m

    return weights(cm), weights(rm)


def wpo_mean_logps(logits: Array, input_ids: Array, completion_mask: Array) -> Array:
    """WPO's length-normalised, sampling-aligned log-probability of each sequence (Zhou et al.
    2024, eq. 2): the mean over counted tokens of ``log p(y_t) - log sum_v p(v)^2``, no gradient.

    ``exp`` of it weighs a pair's loss (``w(y_w) * w(y_l)``). Shapes as ``sequence_logps``: ``[B]``.
    """
    mask = completion_mask[:, 1:].astype(bool)
    lg = _counted_logits(logits, completion_mask).astype(jnp.float32)
    log_sum_sq = jax.nn.logsumexp(2.0 * lg, axis=-1) - 2.0 * jax.nn.logsumexp(lg, axis=-1)
    target = counted_token_logps(logits, input_ids, completion_mask)
    aligned = jnp.sum(jnp.where(mask, target - log_sum_sq, 0.0), axis=-1)
    return jax.lax.stop_gradient(aligned / jnp.maximum(jnp.sum(mask, axis=-1), 1))


def completion_lengths(completion_mask: Array) -> Array:
    """Number of counted completion tokens per row (``[B, T] -> [B]`` float32)."""
    return jnp.sum(completion_mask[:, 1:], axis=-1).astype(jnp.float32)


def _rewards(beta, chosen_logratios, rejected_logratios):
    return (
        jax.lax.stop_gradient(beta * chosen_logratios),
        jax.lax.stop_gradient(beta * rejected_logratios),
    )


def _per_token(x, lengths):
    return x / jnp.maximum(jnp.asarray(lengths, jnp.float32), 1.0)


def _smoothed_logistic(logits, label_smoothing):
    """``-(1-e) log sigmoid(x) - e log sigmoid(-x)``: conservative DPO's loss of a margin ``x``."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


# --- f-divergence scores (TRL's ``f_divergence_type``) -----------------------------------------

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_scores(logratios, *, f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """The score ``f'(t)`` of a log-ratio ``log t = logp - ref`` under an f-divergence regulariser.

    Wang et al. 2023 ("Beyond reverse KL", f-DPO): the DPO margin becomes ``f'(t_w) - f'(t_l)``.

    - ``reverse_kl``: ``log t`` (standard DPO);
    - ``forward_kl``: ``1 - 1/t``;
    - ``js_divergence``: ``log 2 + log sigmoid(log t)`` (= ``log(2t / (1 + t))``);
    - ``alpha_divergence``: ``(t^(a-1) - 1) / (a - 1)`` with ``a = f_alpha_divergence_coef``
      (``a -> 1`` is reverse KL); the exponent is clamped at 80 so ``exp`` stays finite, as in TRL.

    ``[B] -> [B]`` float32.
    """
    (h,) = _f32(logratios)
    if f_divergence_type == "reverse_kl":
        return h
    if f_divergence_type == "forward_kl":
        return 1.0 - jnp.exp(-h)
    if f_divergence_type == "js_divergence":
        return jnp.log(2.0) + jax.nn.log_sigmoid(h)
    if f_divergence_type == "alpha_divergence":
        a = f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:
            return h
        return (jnp.exp(jnp.minimum((a - 1.0) * h, 80.0)) - 1.0) / (a - 1.0)
    raise ValueError(f"f_divergence_type must be one of {F_DIVERGENCES}, got {f_divergence_type!r}")


def _f_margin(hw, hl, f):
    """``f'(t_w) - f'(t_l)`` with ``f = {"f_divergence_type": ..., "f_alpha_divergence_coef": ...}``."""
    return f_divergence_scores(hw, **f) - f_divergence_scores(hl, **f)


def _fdiv(f_divergence_type, f_alpha_divergence_coef):
    return {"f_divergence_type": f_divergence_type, "f_alpha_divergence_coef": f_alpha_divergence_coef}


# --- the DPO family (reference-based, paired) --------------------------------------------------
# Every function takes pc, pr, rc, rr ([B] policy/reference log-probs of chosen/rejected) and
# returns (losses[B], chosen_rewards[B], rejected_rewards[B]) with rewards = beta * (summed)
# log-ratio, without gradient: the quantity TRL 1.16 logs as rewards/chosen|rejected.


def dpo_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0,
             f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """DPO (= RSO "sigmoid-norm", TRL ``sigmoid``), optionally conservative (label smoothing ``e``).

    ``loss = -(1-e) log sigmoid(beta z) - e log sigmoid(-beta z)``,
    ``z = (pc - rc) - (pr - rr)`` (or ``f'(t_w) - f'(t_l)``, see ``f_divergence_scores``).
    Rafailov et al. 2023; Liu et al. 2023 (RSO); Mitchell 2023 (conservative DPO).

    Args:
      pc, pr, rc, rr: ``[B]`` policy/reference log-probs of chosen/rejected responses.
      beta: KL strength (RSO's ``gamma``).
      label_smoothing: assumed label-noise rate ``e`` in [0, 0.5).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    z = _f_margin(hw, hl, _fdiv(f_divergence_type, f_alpha_divergence_coef))
    return (_smoothed_logistic(beta * z, label_smoothing), *_rewards(beta, hw, hl))


def sigmoid_norm_loss(pc, pr, rc, rr, *, beta: float, chosen_lengths, rejected_lengths,
                      f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """Length-normalised DPO (TRL ``sigmoid_norm``; Tulu 3): ``-log sigmoid(beta (h_w/|y_w| - h_l/|y_l|))``.

    ``chosen_lengths``/``rejected_lengths``: ``[B]`` completion token counts (at least 1 is used).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])`` (rewards on summed log-ratios).
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    f = _fdiv(f_divergence_type, f_alpha_divergence_coef)
    z = _per_token(f_divergence_scores(hw, **f), chosen_lengths) - _per_token(f_divergence_scores(hl, **f),
                                                                             rejected_lengths)
    return (-jax.nn.log_sigmoid(beta * z), *_rewards(beta, hw, hl))


def ipo_loss(pc, pr, rc, rr, *, beta: float, chosen_lengths=None, rejected_lengths=None,
             f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """IPO: ``(z' - 1/(2 beta))^2`` (Azar et al. 2023).

    With ``chosen_lengths``/``rejected_lengths`` (``[B]`` token counts) the log-ratios are
    per-token averages, as in TRL and confirmed with the IPO authors; without them, sums.
    The returned rewards are ``beta`` times the *summed* log-ratios, as TRL 1.16 logs them
    (before 2026-12 jaxpref logged the averaged ones, so its reward metrics differed from TRL's).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss: pass both chosen_lengths and rejected_lengths, or neither")
    f = _fdiv(f_divergence_type, f_alpha_divergence_coef)
    sw, sl = f_divergence_scores(hw, **f), f_divergence_scores(hl, **f)
    if chosen_lengths is not None:
        sw, sl = _per_token(sw, chosen_lengths), _per_token(sl, rejected_lengths)
    losses = (sw - sl - 1.0 / (2.0 * beta)) ** 2
    return (losses, *_rewards(beta, hw, hl))


def hinge_loss(pc, pr, rc, rr, *, beta: float, f_divergence_type: str = "reverse_kl",
               f_alpha_divergence_coef: float = 0.5):
    """RSO "hinge-norm" (TRL ``hinge``): ``max(0, 1 - beta z)`` (SLiC's hinge with the reference in the margin).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    z = _f_margin(hw, hl, _fdiv(f_divergence_type, f_alpha_divergence_coef))
    return (jax.nn.relu(1.0 - beta * z), *_rewards(beta, hw, hl))


def exo_pair_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 1e-3,
                  f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """EXO-pref (Ji et al. 2024, eq. 16): ``KL(q || p)`` over the pair, reverse KL to the labels.

    ``q_w = sigmoid(beta z)``, ``q_l = sigmoid(-beta z)``, target ``p = (1 - e, e)``:
    ``loss = q_w (log q_w - log(1 - e)) + q_l (log q_l - log e)``. Needs ``e = label_smoothing > 0``
    (the paper and TRL suggest 1e-3); ``e = 0`` makes the loss infinite.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    x = beta * _f_margin(hw, hl, _fdiv(f_divergence_type, f_alpha_divergence_coef))
    e = jnp.float32(label_smoothing)
    losses = jax.nn.sigmoid(x) * (jax.nn.log_sigmoid(x) - jnp.log1p(-e)) + jax.nn.sigmoid(-x) * (
        jax.nn.log_sigmoid(-x) - jnp.log(e))
    return (losses, *_rewards(beta, hw, hl))


def nca_pair_loss(pc, pr, rc, rr, *, beta: float):
    """NCA, pairwise (Chen et al. 2024, "Noise Contrastive Alignment"), on absolute rewards ``r = beta h``:

    ``loss = -log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    r_w, r_l = beta * hw, beta * hl
    losses = -jax.nn.log_sigmoid(r_w) - 0.5 * jax.nn.log_sigmoid(-r_w) - 0.5 * jax.nn.log_sigmoid(-r_l)
    return (losses, *_rewards(beta, hw, hl))


def robust_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0,
                f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """Robust DPO (Chowdhury et al. 2024): an unbiased loss under label-flip rate ``e``:

    ``loss = [-(1-e) log sigmoid(beta z) + e log sigmoid(-beta z)] / (1 - 2e)``, ``e in [0, 0.5)``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    x = beta * _f_margin(hw, hl, _fdiv(f_divergence_type, f_alpha_divergence_coef))
    e = label_smoothing
    losses = (-(1.0 - e) * jax.nn.log_sigmoid(x) + e * jax.nn.log_sigmoid(-x)) / (1.0 - 2.0 * e)
    return (losses, *_rewards(beta, hw, hl))


def bco_pair_loss(pc, pr, rc, rr, *, beta: float, delta=0.0):
    """BCO, pairwise (Jung et al. 2024): chosen and rejected classified against a reward baseline ``delta``:

    ``loss = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))``, ``r = beta h``.

    ``delta`` (a float32 scalar, not back-propagated) is the running mean of the batches' mean
    reward, which the train state carries (``bco_running_mean``). TRL 1.16 dropped the baseline
    (its ``bco_pair`` is this loss with ``delta = 0``); TRL <= 0.11 and the paper keep it.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    d = jax.lax.stop_gradient(jnp.asarray(delta, jnp.float32))
    losses = -jax.nn.log_sigmoid(beta * hw - d) - jax.nn.log_sigmoid(-(beta * hl - d))
    return (losses, *_rewards(beta, hw, hl))


def bco_running_mean(mean, count, chosen_rewards, rejected_rewards):
    """One update of BCO's reward baseline: ``(mean, count) -> (mean', count + 1)``.

    The batch's mean reward ``m = mean(concat(r_w, r_l))`` enters a running average of batch
    means, ``mean' = mean + (m - mean) / (count + 1)`` (TRL's ``RunningMoments`` fed one batch
    mean per step; its initial count of 1e-24 makes the first baseline the first batch's mean).
    ``mean``, ``count``: float32 scalars. No gradient flows through it.
    """
    batch = jax.lax.stop_gradient(jnp.mean(jnp.concatenate(_f32(chosen_rewards, rejected_rewards))))
    mean, count = _f32(mean, count)
    new_count = count + 1.0
    return mean + (batch - mean) / new_count, new_count


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


def aot_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0):
    """AOT, paired (Melnyk et al. 2024, distributional alignment by optimal transport).

    The policy's and the reference's chosen-minus-rejected log-ratios are each **sorted over the
    batch**, matched by rank, and the sorted difference ``d_(i)`` goes through conservative DPO:
    ``loss_i = -(1-e) log sigmoid(beta d_(i)) - e log sigmoid(-beta d_(i))``. A batch statistic:
    with ``grad_accum_steps > 1`` it is taken per micro-batch (as TRL does per device batch).

    Returns:
      ``(losses[B] in rank order, chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    d = jnp.sort(pc - pr) - jnp.sort(rc - rr)
    return (_smoothed_logistic(beta * d, label_smoothing), *_rewards(beta, pc - rc, pr - rr))


def aot_unpaired_loss(pc, pr, rc, rr, *, beta: float, label_smoothing: float = 0.0):
    """AOT, unpaired: the chosen and the rejected log-ratios ``h_w``, ``h_l`` are sorted separately
    over the batch and matched by rank: ``d_(i) = sort(h_w)_i - sort(h_l)_i``, then as ``aot_loss``.

    Returns:
      ``(losses[B] in rank order, chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    d = jnp.sort(hw) - jnp.sort(hl)
    return (_smoothed_logistic(beta * d, label_smoothing), *_rewards(beta, hw, hl))


def apo_zero_loss(pc, pr, rc, rr, *, beta: float):
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): push chosen up and rejected down, each
    against zero: ``loss = sigmoid(-beta h_w) + sigmoid(beta h_l)`` (= ``1 - sigmoid(beta h_w) + ...``).

    Use it when the chosen responses are better than the model's own.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    return (jax.nn.sigmoid(-beta * hw) + jax.nn.sigmoid(beta * hl), *_rewards(beta, hw, hl))


def apo_down_loss(pc, pr, rc, rr, *, beta: float):
    """APO-down (eq. 8): push chosen down, and rejected down more:
    ``loss = sigmoid(beta h_w) + sigmoid(-beta (h_w - h_l))``.

    Use it when the chosen responses are worse than the model's own.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    return (jax.nn.sigmoid(beta * hw) + jax.nn.sigmoid(-beta * (hw - hl)), *_rewards(beta, hw, hl))


def discopop_loss(pc, pr, rc, rr, *, beta: float, discopop_tau: float = 0.05,
                  f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5):
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, eq. 5), with ``x = beta z``:

    ``m = sigmoid(x / tau)``, ``loss = (1 - m) (-log sigmoid(x)) + m exp(-x)``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    x = beta * _f_margin(hw, hl, _fdiv(f_divergence_type, f_alpha_divergence_coef))
    m = jax.nn.sigmoid(x / discopop_tau)
    losses = (1.0 - m) * -jax.nn.log_sigmoid(x) + m * jnp.exp(-x)
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


# --- KTO (unpaired) ----------------------------------------------------------------------------


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

    desirable:   ``lambda_D * (1 - sigmoid(beta (h - z0)))`` = ``lambda_D * sigmoid(beta (z0 - h))``
    undesirable: ``lambda_U * (1 - sigmoid(beta (z0 - h)))`` = ``lambda_U * sigmoid(beta (h - z0))``
    with ``h = policy_logps - ref_logps`` and ``z0 = max(0, kl)``, not back-propagated. Computed
    as ``sigmoid(-x)``, not ``1 - sigmoid(x)``, which is 0 in float32 beyond x ~ 16.6.

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
    good = desirable_weight * jax.nn.sigmoid(beta * (z0 - h))
    bad = undesirable_weight * jax.nn.sigmoid(beta * (h - z0))
    losses = jnp.where(jnp.asarray(desirable, bool), good, bad)
    return losses, jax.lax.stop_gradient(beta * h)


def apo_zero_unpaired_loss(policy_logps, ref_logps, desirable, *, beta: float, desirable_weight: float = 1.0,
                           undesirable_weight: float = 1.0):
    """APO-zero, unpaired (TRL KTO's ``apo_zero_unpaired``): KTO with no reference point,
    desirable ``lambda_D sigmoid(-beta h)``, undesirable ``lambda_U sigmoid(beta h)``.

    Returns:
      ``(losses[B], rewards[B])`` with ``rewards = beta * h``.
    """
    p, r = _f32(policy_logps, ref_logps)
    h = p - r
    losses = jnp.where(jnp.asarray(desirable, bool), desirable_weight * jax.nn.sigmoid(-beta * h),
                       undesirable_weight * jax.nn.sigmoid(beta * h))
    return losses, jax.lax.stop_gradient(beta * h)


def kto_pair_loss(pc, pr, rc, rr, *, beta: float):
    """Paired KTO: each half's reference point is the batch KL of the other half.

    With ``z_w = max(0, mean(pc - rc))`` and ``z_l = max(0, mean(pr - rr))``,
    ``loss = [sigmoid(beta (z_l - h_w)) + sigmoid(beta (h_l - z_w))] / 2``, whose batch mean
    equals the mean over the 2B halves used by TRL's ``kto_pair``.

    The reference points are **not back-propagated** (``stop_gradient``), as the KTO paper
    prescribes and as TRL's ``KTOTrainer`` does (``kl.detach()``); TRL <= 0.8's ``kto_pair`` and
    the SPPO/SELM repositories' copies back-propagate through the batch means, which changes the
    gradient (by up to 50% on random inputs) but not the value. This is the one choice here.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr = _f32(pc, pr, rc, rr)
    hw, hl = pc - rc, pr - rr
    z_w = jax.lax.stop_gradient(jnp.maximum(jnp.mean(hw), 0.0))
    z_l = jax.lax.stop_gradient(jnp.maximum(jnp.mean(hl), 0.0))
    losses = 0.5 * (jax.nn.sigmoid(beta * (z_l - hw)) + jax.nn.sigmoid(beta * (hl - z_w)))
    return (losses, *_rewards(beta, hw, hl))


# --- self-play -------------------------------------------------------------------------------


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


def sppo_single_loss(pc, pr, rc, rr, pair_probs, *, beta: float):
    """SPPO on the pair's own preference (official code's ``sppo_single``), ``eta = 1/beta``:

    ``loss = [(h_w - eta (P - 1/2))^2 + (h_l + eta (P - 1/2))^2] / 2`` with
    ``P = P(y_w > y_l | x)`` (``pair_probs``, ``[B]``) instead of each response's win rate.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """
    pc, pr, rc, rr, p = _f32(pc, pr, rc, rr, pair_probs)
    hw, hl = pc - rc, pr - rr
    eta = 1.0 / beta
    losses = 0.5 * ((hw - eta * (p - 0.5)) ** 2 + (hl + eta * (p - 0.5)) ** 2)
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


# --- likelihood and reference-free losses ------------------------------------------------------


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


CPO_TYPES = ("sigmoid", "hinge", "ipo")


def cpo_loss(pc, pr, *, beta: float, chosen_lengths, rejected_lengths, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0, cpo_alpha: float = 1.0):
    """CPO (Xu et al. 2024): a reference-free preference loss plus ``cpo_alpha`` times the NLL of
    the chosen responses (token mean over the batch).

    With ``u = pc - pr`` (summed log-probs; per-token averages for ``ipo``, as in TRL):
    ``sigmoid``: ``-(1-e) log sigmoid(beta u) - e log sigmoid(-beta u)``; ``hinge``:
    ``max(0, 1 - beta u)``; ``ipo``: ``(u - 1/(2 beta))^2``.

    Args:
      pc, pr: ``[B]`` summed policy log-probs of chosen / rejected responses.
      chosen_lengths, rejected_lengths: ``[B]`` completion token counts.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``, rewards ``beta * logp`` (as used).
    """
    pc, pr = _f32(pc, pr)
    sc, sr = (_per_token(pc, chosen_lengths), _per_token(pr, rejected_lengths)) if loss_type == "ipo" else (pc, pr)
    u = sc - sr
    if loss_type == "sigmoid":
        pref = _smoothed_logistic(beta * u, label_smoothing)
    elif loss_type == "hinge":
        pref = jax.nn.relu(1.0 - beta * u)
    elif loss_type == "ipo":
        pref = (u - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"cpo_loss: loss_type must be one of {CPO_TYPES}, got {loss_type!r}")
    losses = pref + cpo_alpha * sft_loss(pc, chosen_lengths)
    return (losses, *_rewards(beta, sc, sr))


def simpo_loss(pc, pr, *, beta: float, chosen_lengths, rejected_lengths, simpo_gamma: float = 0.5,
               label_smoothing: float = 0.0, cpo_alpha: float = 0.0):
    """SimPO (Meng et al. 2024): length-normalised, reference-free, with a target margin ``gamma``:

    ``u = pc/|y_w| - pr/|y_l| - gamma/beta``, ``loss = -(1-e) log sigmoid(beta u) - e log sigmoid(-beta u)``
    (+ ``cpo_alpha`` times the chosen NLL: CPO-SimPO). TRL: ``CPOTrainer(loss_type="simpo")``.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``, rewards ``beta`` times the average log-probs.
    """
    return alphapo_loss(pc, pr, beta=beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                        simpo_gamma=simpo_gamma, label_smoothing=label_smoothing, cpo_alpha=cpo_alpha, alpha=0.0)


def alphapo_loss(pc, pr, *, beta: float, chosen_lengths, rejected_lengths, alpha: float = 0.0,
                 simpo_gamma: float = 0.5, label_smoothing: float = 0.0, cpo_alpha: float = 0.0):
    """AlphaPO (Gupta et al. 2025): SimPO on the rewards ``r = (1 - p^(-alpha)) / alpha`` of the
    per-token average probability ``p = exp(logp / |y|)``; ``alpha = 0`` is SimPO (``r = log p``).

    ``u = r_w - r_l - gamma/beta``, ``loss = -(1-e) log sigmoid(beta u) - e log sigmoid(-beta u)``
    (+ ``cpo_alpha`` times the chosen NLL).

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``, rewards ``beta * r``.
    """
    pc, pr = _f32(pc, pr)
    ac, ar = _per_token(pc, chosen_lengths), _per_token(pr, rejected_lengths)
    if alpha != 0.0:
        ac, ar = (1.0 - jnp.exp(-alpha * ac)) / alpha, (1.0 - jnp.exp(-alpha * ar)) / alpha
    u = ac - ar - simpo_gamma / beta
    losses = _smoothed_logistic(beta * u, label_smoothing)
    if cpo_alpha:
        losses = losses + cpo_alpha * sft_loss(pc, chosen_lengths)
    return (losses, *_rewards(beta, ac, ar))


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, stable on both sides of ``-log 2``."""
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo_loss(pc, pr, *, beta: float, chosen_lengths, rejected_lengths, nll=None):
    """ORPO (Hong et al. 2024): NLL of the chosen responses minus ``beta`` (the paper's lambda)
    times the log-sigmoid of the log odds ratio, on per-token average log-probs ``a``:

    ``log_odds = (a_w - a_l) - (log(1 - e^a_w) - log(1 - e^a_l))``,
    ``loss = NLL_chosen - beta log sigmoid(log_odds)``.

    ``nll``: the NLL term, ``[B]`` or a scalar; default the token-mean NLL of the chosen
    responses over the batch (``sft_loss(pc, chosen_lengths)``). TRL's ``ORPOTrainer`` and the ORPO
    code take it over prompt *and* response tokens, which the ``orpo`` objective passes.

    Returns:
      ``(losses[B], chosen_rewards[B], rejected_rewards[B])``, rewards ``beta * a``.
    """
    pc, pr = _f32(pc, pr)
    ac, ar = _per_token(pc, chosen_lengths), _per_token(pr, rejected_lengths)
    log_odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
    nll = sft_loss(pc, chosen_lengths) if nll is None else jnp.asarray(nll, jnp.float32)
    losses = nll - beta * jax.nn.log_sigmoid(log_odds)
    return (losses, *_rewards(beta, ac, ar))


def bradley_terry_loss(chosen_scores, rejected_scores):
    """Reward-model loss ``-log sigmoid(s_w - s_l)``; ``[B], [B] -> [B]``."""
    sw, sl = _f32(chosen_scores, rejected_scores)
    return -jax.nn.log_sigmoid(sw - sl)
