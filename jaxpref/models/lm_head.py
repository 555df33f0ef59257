"""Per-token log-probs through the LM head a vocabulary block at a time (fused linear log-softmax).

For ``N`` scored positions, ``log softmax(h W)[target]`` needs the ``[N, V]`` logits, which for a
49k vocabulary are the largest arrays of a small model's train step (and their gradient again).
``token_logps_by_vocab_block`` never builds them: the forward runs over vocabulary blocks of ``C``
entries with an online log-sum-exp (``[N, C]`` logits at a time, ``[N]`` kept), and the backward
recomputes each block's logits and writes that block's rows of the head's gradient directly, so
the gradient is built once, in place, instead of summed over chunks of positions (the idea of
Liger's fused linear cross-entropy and of "Cut Your Losses in Large-Vocabulary Language Models",
Wijmans et al. 2024, https://arxiv.org/abs/2411.09009). Values and gradients equal the plain
computation up to float rounding.

Shape letters: N positions, E hidden size, V vocabulary, C entries per block, K blocks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Auto block size: about this many logits per block (float32: 16 MiB), within [MIN_BLOCK, V].
BLOCK_LOGITS = 2**22
MIN_BLOCK = 512


def vocab_block(vocab: int, positions: int, requested: int = 0) -> int:
    """Entries per vocabulary block for ``positions`` rows: ``requested`` if positive (capped at
    ``vocab``); else about ``BLOCK_LOGITS / positions``, preferring a divisor of ``vocab`` (a
    vocabulary with none near, e.g. a prime size, is padded to whole blocks)."""
    if requested > 0:
        return min(requested, vocab)
    target = min(vocab, max(MIN_BLOCK, BLOCK_LOGITS // max(positions, 1)))
    divisors = [d for d in range(max(1, target // 2), min(vocab, 2 * target) + 1) if vocab % d == 0]
    return min(divisors, key=lambda d: abs(d - target)) if divisors else target


def _blocks_ve(head_ve: jax.Array, block: int) -> jax.Array:
    """``[V, E]`` -> ``[K, C, E]`` (zero rows pad the last block when ``C`` does not divide ``V``)."""
    vocab = head_ve.shape[0]
    pad = (-vocab) % block
    if pad:
        head_ve = jnp.pad(head_ve, ((0, pad), (0, 0)))
    return head_ve.reshape(-1, block, head_ve.shape[1])


def _block_logits(hidden_ne, w_ce, index, block, vocab):
    """``[N, C]`` float32 logits of block ``index``; entries past the vocabulary are -inf."""
    logits = jnp.einsum("ne,ce->nc", hidden_ne, w_ce, preferred_element_type=jnp.float32)
    if vocab % block:
        real = index * block + jnp.arange(block) < vocab
        logits = jnp.where(real[None, :], logits, -jnp.inf)
    return logits


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _token_logps_ve(hidden_ne, head_ve, targets_n, block):
    return _forward(hidden_ne, head_ve, targets_n, block)[0]


def _forward(hidden_ne, head_ve, targets_n, block):
    vocab = head_ve.shape[0]
    blocks = _blocks_ve(head_ve, block)

    def one(carry, xs):  # online log-sum-exp over the blocks
        running_max, running_sum = carry
        index, w_ce = xs
        logits = _block_logits(hidden_ne, w_ce, index, block, vocab)
        new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
        running_sum = running_sum * jnp.exp(running_max - new_max) + jnp.sum(jnp.exp(logits - new_max[:, None]), -1)
        return (new_max, running_sum), None

    n = hidden_ne.shape[0]
    start = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32))
    (top, total), _ = jax.lax.scan(one, start, (jnp.arange(blocks.shape[0]), blocks))
    lse_n = top + jnp.log(total)
    target_logit = jnp.einsum("ne,ne->n", hidden_ne, head_ve[targets_n], preferred_element_type=jnp.float32)
    return target_logit - lse_n, lse_n


def _token_logps_ve_fwd(hidden_ne, head_ve, targets_n, block):
    out, lse_n = _forward(hidden_ne, head_ve, targets_n, block)
    return out, (hidden_ne, head_ve, targets_n, lse_n)


def _token_logps_ve_bwd(block, residuals, g_n):
    """d out_n / d logits_nv = onehot(target) - softmax: the softmax part block by block (each
    block's rows of the head gradient written once), the one-hot part as a gather / scatter."""
    hidden_ne, head_ve, targets_n, lse_n = residuals
    vocab = head_ve.shape[0]
    g_n = g_n.astype(jnp.float32)

    def one(dh_ne, xs):
        index, w_ce = xs
        probs = jnp.exp(_block_logits(hidden_ne, w_ce, index, block, vocab) - lse_n[:, None])
        d_logits = (-g_n[:, None] * probs).astype(w_ce.dtype)  # [N, C]
        dh_ne = dh_ne + jnp.einsum("nc,ce->ne", d_logits, w_ce, preferred_element_type=jnp.float32)
        dw_ce = jnp.einsum("nc,ne->ce", d_logits, hidden_ne, preferred_element_type=jnp.float32)
        return dh_ne, dw_ce.astype(head_ve.dtype)

    blocks = _blocks_ve(head_ve, block)
    dh_ne, dw_kce = jax.lax.scan(one, jnp.zeros(hidden_ne.shape, jnp.float32),
                                 (jnp.arange(blocks.shape[0]), blocks))
    dw_ve = dw_kce.reshape(-1, head_ve.shape[1])[:vocab]
    dh_ne = dh_ne + g_n[:, None] * head_ve[targets_n].astype(jnp.float32)
    dw_ve = dw_ve.at[targets_n].add((g_n[:, None] * hidden_ne.astype(jnp.float32)).astype(head_ve.dtype))
    return dh_ne.astype(hidden_ne.dtype), dw_ve, None


_token_logps_ve.defvjp(_token_logps_ve_fwd, _token_logps_ve_bwd)


def token_logps_by_vocab_block(hidden_ne: jax.Array, head: tuple[jax.Array, str], targets_n: jax.Array,
                               block: int = 0) -> jax.Array:
    """``log softmax(h W)[target]`` per position, float32 ``[N]``, over vocabulary blocks.

    Args:
      hidden_ne: ``[N, E]`` final hidden states (compute dtype).
      head: the LM head and its layout, ``([V, E], "ve")`` (a tied embedding) or ``([E, V], "ev")``
        (``models.llama.lm_head_weights``); an ``"ev"`` head is transposed once (a copy).
      targets_n: ``[N]`` int next-token ids.
      block: vocabulary entries per block (0: ``vocab_block``'s choice for ``N`` positions).

    Differentiable in ``hidden_ne`` and the head (``jax.custom_vjp``; no higher derivatives).
    """
    weights, layout = head
    head_ve = weights if layout == "ve" else weights.T
    block = vocab_block(head_ve.shape[0], hidden_ne.shape[0], block)
    return _token_logps_ve(hidden_ne, head_ve, targets_n, block)
