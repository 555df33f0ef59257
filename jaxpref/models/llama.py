"""Llama-family decoder (Llama, Mistral, Qwen2) in flax.linen, with a KV cache.

The decoder layers are stacked along a leading ``layers`` axis and run with ``nn.scan``, so
compile time does not grow with depth; stacks of up to 8 layers are unrolled by default
(``CausalLM.scan_unroll``), which makes small models' steps faster on CPU. Params are a
plain pytree (see ``logical_axes`` for the layout); call the model through ``forward``
(training / scoring) or ``forward_cached`` (prefill + decode for sampling).

For decoding, ``CausalLM(scan_layers=False)`` runs the layers as ``L`` separate modules
(``layers_0`` ... params, from ``unstack_layers``): inside a decode loop each layer then reads
its own weight and cache buffers, where a scan would copy layer ``l``'s slice out of the
stacked arrays at every token. ``decode_model_and_params`` also fuses q/k/v and gate/up
(``fused_projections``); ``sampling.generate`` and ``sample_responses`` build it before their
``jit``.

Shape letters: B batch, T new tokens, S cache slots (keys), L layers, E hidden size,
H query heads, K key/value heads, G = H // K, D head dim, F MLP size, V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import ModelConfig, as_model_config

Array = jax.Array
DType = Any

INIT_STD = 0.02
_MASKED_SCORE = float(np.finfo(np.float32).min)


class KVCache(NamedTuple):
    """Keys/values of every layer for ``S`` slots (written by ``forward_cached``).

    ``k, v``: tuples of ``L`` arrays ``[B, K, S, D]`` (keys already rotated by RoPE). One
    buffer per layer lets a decode loop update each in place; slots are the second-minor
    dim so attention reads them without a transpose.
    ``mask``: ``[B, S]`` int32, 1 where the slot holds a real token.
    """

    k: tuple[Array, ...]
    v: tuple[Array, ...]
    mask: Array


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype: DType = jnp.float32) -> KVCache:
    """An all-zero cache with ``max_length`` slots per row (no slot valid)."""
    shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
        mask=jnp.zeros((batch_size, max_length), jnp.int32),
    )


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """``[D/2]`` float32 RoPE frequencies, with Llama-3 scaling applied when configured.

    Llama 3 (https://arxiv.org/abs/2407.21783): frequencies whose wavelength exceeds
    ``original_max_position_embeddings / low_freq_factor`` are divided by ``factor``; those
    shorter than ``original / high_freq_factor`` are kept; the band in between interpolates
    linearly in ``original / wavelength``.
    """
    dim = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    scaling = config.rope_scaling
    if scaling is not None:
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        original_length = scaling["original_max_position_embeddings"]
        wavelength = 2 * np.pi / inv_freq
        smooth = (original_length / wavelength - low) / (high - low)
        interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = np.where(
            wavelength > original_length / low,
            inv_freq / factor,
            np.where(wavelength < original_length / high, inv_freq, interpolated),
        )
    return inv_freq.astype(np.float32)


def _rope_tables(config: ModelConfig, positions_bt: Array) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``[B, T, D]`` float32, in the rotate-half layout."""
    angles = positions_bt[..., None].astype(jnp.float32) * rope_inverse_frequencies(config)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def _apply_rope(x_btnd: Array, cos_btd: Array, sin_btd: Array) -> Array:
    """Rotates each head of ``x`` (``[B, T, N, D]``); computed in float32."""
    x = x_btnd.astype(jnp.float32)
    first, second = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    out = x * cos_btd[:, :, None, :] + rotated * sin_btd[:, :, None, :]
    return out.astype(x_btnd.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    eps: float
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


class Attention(nn.Module):
    """Grouped-query attention with RoPE, over fresh keys or over a layer's cache.

    ``fused_projections``: one ``qkv`` kernel ``[E, H + 2K, D]`` (q, k, v concatenated over
    heads, see ``fuse_projections``) instead of three, i.e. one matmul instead of three.
    """

    config: ModelConfig
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    fused_projections: bool = False

    @nn.compact
    def __call__(
        self,
        x_bte: Array,
        rope: tuple[Array, Array],
        attend_bts: Array,
        layer_kv: tuple[Array, Array] | None,
        cache_index: Array | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """``x``: ``[B, T, E]``; ``attend``: ``[B, T, S]`` bool (query t may see key s).

        Without a cache the keys are the T new tokens (S == T) and ``attend`` must be causal by
        index (no query sees a later key: every mask jaxpref builds), which the blocked attention
        of long sequences relies on. With ``layer_kv`` (each
        ``[B, K, S, D]``) the new keys/values are written at ``cache_index`` first and the
        updated pair is returned.
        """
        cfg = self.config
        dense = functools.partial(
            nn.DenseGeneral,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(INIT_STD),
        )
        heads, kv_heads = cfg.num_heads, cfg.num_kv_heads
        if self.fused_projections:
            qkv = dense((heads + 2 * kv_heads, cfg.head_dim), use_bias=cfg.attention_bias, name="qkv")(x_bte)
            q_btnd, k_btkd, v_btkd = jnp.split(qkv, [heads, heads + kv_heads], axis=2)
        else:
            q_btnd = dense((heads, cfg.head_dim), use_bias=cfg.attention_bias, name="q")(x_bte)
            k_btkd = dense((kv_heads, cfg.head_dim), use_bias=cfg.attention_bias, name="k")(x_bte)
            v_btkd = dense((kv_heads, cfg.head_dim), use_bias=cfg.attention_bias, name="v")(x_bte)
        q_btnd = _apply_rope(q_btnd, *rope)
        k_btkd = _apply_rope(k_btkd, *rope)

        new_kv = None
        if layer_kv is None:
            keys, values, key_spec = k_btkd, v_btkd, "bskd"
        else:
            cache_k, cache_v = layer_kv
            start = (0, 0, cache_index, 0)
            cache_k = jax.lax.dynamic_update_slice(cache_k, k_btkd.transpose(0, 2, 1, 3).astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, v_btkd.transpose(0, 2, 1, 3).astype(cache_v.dtype), start)
            new_kv = (cache_k, cache_v)
            keys, values, key_spec = cache_k.astype(self.dtype), cache_v.astype(self.dtype), "bksd"

        b, t = x_bte.shape[:2]
        groups = cfg.num_heads // cfg.num_kv_heads
        q_btkgd = q_btnd.reshape(b, t, cfg.num_kv_heads, groups, cfg.head_dim)
        attend = functools.partial(_attend, key_spec=key_spec, scale=cfg.head_dim**-0.5, dtype=self.dtype)
        if layer_kv is None and t > ATTENTION_BLOCK:
            # Causal by index: queries [i, j) see keys [0, j) only, so each block of queries runs
            # against the keys up to its end and the masked upper triangle is never computed
            # (about half the work and a block's share of the [B, K, G, T, T] scores).
            starts = range(0, t, ATTENTION_BLOCK)
            out_btkgd = jnp.concatenate([
                attend(q_btkgd[:, i:i + ATTENTION_BLOCK], keys[:, :i + ATTENTION_BLOCK],
                       values[:, :i + ATTENTION_BLOCK], attend_bts[:, i:i + ATTENTION_BLOCK, :i + ATTENTION_BLOCK])
                for i in starts], axis=1)
        else:
            out_btkgd = attend(q_btkgd, keys, values, attend_bts)
        out_btnd = out_btkgd.reshape(b, t, cfg.num_heads, cfg.head_dim)
        out_bte = dense(cfg.hidden_size, axis=(-2, -1), use_bias=False, name="o")(out_btnd)
        return out_bte, new_kv


# Queries per block of the blocked causal attention (training and scoring forwards longer than one
# block; ``Attention``). Measured on SmolLM2-135M layers (forward + backward, remat on, 2-core CPU):
# 128 is 16% faster than 256 on a 2048-token row (less of the upper triangle computed) and equal
# at 512-1024 tokens; 64 is no faster than 128 and compiles twice as long.
ATTENTION_BLOCK = 128


def _attend(q_btkgd: Array, keys: Array, values: Array, attend_bts: Array, *, key_spec: str, scale: float,
            dtype: DType) -> Array:
    """Grouped-query softmax attention: ``q`` ``[B, T, K, G, D]``, keys/values ``[B, S, K, D]``
    (``key_spec`` "bskd") or ``[B, K, S, D]`` ("bksd"), ``attend`` ``[B, T, S]`` bool ->
    ``[B, T, K, G, D]``; scores and softmax in float32.

    The softmax is normalised after the values are summed, ``(exp(s - max) @ v) / sum(exp(s - max))``:
    the ``[.., T, D]`` output is divided instead of the ``[.., T, S]`` weights, so normalised
    weights are never written and the backward pass has no ``sum(dp * p)`` over them (the same
    function up to float32 rounding). Measured on a 2-core CPU with SmolLM2-135M's layers (2 layers,
    forward + remat + backward, 8 rows of 1536 tokens, runs alternating): 10.1 s against 10.8 s
    normalising the weights (the attention alone: 1.26 s against 1.44 s); equal at 384 tokens and
    within noise at 768.
    """
    scores = jnp.einsum(f"btkgd,{key_spec}->bkgts", q_btkgd, keys, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(attend_bts[:, None, None], scores, _MASKED_SCORE)
    top_bkgt1 = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    weights = jnp.exp(scores - top_bkgt1)
    total_btkg = jnp.sum(weights, axis=-1).transpose(0, 3, 1, 2)
    # In ``dtype`` (XLA:CPU has no bf16 x bf16 -> f32 dot for the cache's "bksd" layout), divided in float32.
    if key_spec == "bksd":
        # The cache's layout: per (b, k) a plain [G*T, S] x [S, D] product, then the output
        # transposed; XLA:CPU ran the einsum straight to "btkgd" as a slow batched dot (a decode
        # step of SmolLM2, 64 rows, 58 slots: 1.0 ms against 0.17 ms per layer).
        out = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(dtype), values).transpose(0, 3, 1, 2, 4)
    else:
        out = jnp.einsum(f"bkgts,{key_spec}->btkgd", weights.astype(dtype), values)
    return (out.astype(jnp.float32) / total_btkg[..., None]).astype(dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``.

    ``fused_projections``: one ``gate_up`` kernel ``[E, 2F]`` instead of ``gate`` and ``up``.
    """

    config: ModelConfig
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    fused_projections: bool = False

    @nn.compact
    def __call__(self, x_bte: Array) -> Array:
        dense = functools.partial(
            nn.Dense,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.normal(INIT_STD),
        )
        size = self.config.intermediate_size
        if self.fused_projections:
            gate, up = jnp.split(dense(2 * size, name="gate_up")(x_bte), 2, axis=-1)
        else:
            gate, up = dense(size, name="gate")(x_bte), dense(size, name="up")(x_bte)
        hidden = nn.silu(gate) * up
        return dense(self.config.hidden_size, name="down")(hidden)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h += attn(norm(h)); h += mlp(norm(h))``. Scanned over layers."""

    config: ModelConfig
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    fused_projections: bool = False

    @nn.compact
    def __call__(
        self,
        h_bte: Array,
        rope: tuple[Array, Array],
        attend_bts: Array,
        layer_kv: tuple[Array, Array] | None,
        cache_index: Array | None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        eps = self.config.rms_norm_eps
        attn_in = RMSNorm(eps, name="attn_norm", **kw)(h_bte)
        fused = self.fused_projections
        attn = Attention(self.config, fused_projections=fused, name="attn", **kw)
        attn_out, new_kv = attn(attn_in, rope, attend_bts, layer_kv, cache_index)
        # The residual stream keeps its dtype even when a projection returns float32 (a LoRA
        # adapter's float32 branch under bf16 compute): the scanned carry's type is fixed.
        h_bte = h_bte + attn_out.astype(h_bte.dtype)
        mlp = MLP(self.config, fused_projections=fused, name="mlp", **kw)
        h_bte = h_bte + mlp(RMSNorm(eps, name="mlp_norm", **kw)(h_bte)).astype(h_bte.dtype)
        return h_bte, new_kv


class CausalLM(nn.Module):
    """Llama-family causal LM. Prefer ``forward`` / ``forward_cached`` to calling it directly.

    ``dtype`` is the compute dtype (activations, matmuls); softmax, norms, RoPE and the
    logits are float32 regardless. ``remat`` checkpoints each layer (recompute in backward).
    ``scan_layers=False`` takes ``unstack_layers`` params (for decode loops, see the module
    docstring); ``fused_projections`` takes ``fuse_projections`` params (q/k/v and gate/up
    each one matmul). ``scan_unroll``: layers per iteration of the scanned stack (see
    ``scan_unroll_length``); the params layout is the same for every value.
    """

    config: ModelConfig
    dtype: DType = jnp.float32
    param_dtype: DType = jnp.float32
    remat: bool | str = False  # True: recompute each layer; "dots": all but its projections' outputs
    scan_layers: bool = True
    fused_projections: bool = False
    return_hidden: bool = False  # return final-norm hidden states [B, T, E] instead of logits
    scan_unroll: int = 0  # 0 auto, -1 all layers, n > 0 that many (see scan_unroll_length)
    # Vocabulary entries per LM-head block when the train step computes log-probs from hidden states
    # a block at a time (``head_block_size``; unused by ``__call__``): 0 auto, -1 off.
    logits_chunk: int = 0

    @nn.compact
    def __call__(
        self,
        input_ids_bt: Array,
        positions_bt: Array,
        attend_bts: Array,
        kv: tuple[Array, Array] | None = None,
        cache_index: Array | None = None,
        output_index: Array | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """Returns ``(logits [B, T, V] float32, new (k, v) or None)``.

        ``positions``: ``[B, T]`` int RoPE positions. ``attend``: ``[B, T, S]`` bool, which
        keys each query sees (S == T without a cache). ``kv``: the cache's ``(k, v)``, each a
        tuple of ``L`` arrays ``[B, K, S, D]``; the new tokens are written at slot
        ``cache_index``. ``output_index``: ``[B, N]`` int; if given, only the outputs at
        these positions are computed (logits ``[B, N, V]``), e.g. those that score tokens.
        """
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            embedding_init=nn.initializers.normal(INIT_STD),
            name="embed",
            **kw,
        )
        h_bte = embed(input_ids_bt)
        rope = _rope_tables(cfg, positions_bt)

        # remat saves activation memory only in a rolled loop (tiny, unrolled: 367 vs 390 MiB
        # of temporaries without remat; rolled: 106 MiB), so auto keeps the loop rolled with it.
        unroll = scan_unroll_length(self.scan_unroll, cfg.num_layers, remat=self.remat)
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if self.remat == "dots" else None
        layer = nn.remat(DecoderLayer, prevent_cse=False, policy=policy) if self.remat else DecoderLayer
        kw_layer = dict(kw, fused_projections=self.fused_projections)
        if self.scan_layers:
            stack = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},  # dropout: LoRA adapters (models.lora)
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=cfg.num_layers,
                unroll=unroll,
            )
            stacked_kv = None if kv is None else (jnp.stack(kv[0]), jnp.stack(kv[1]))
            h_bte, new_kv = stack(cfg, name="layers", **kw_layer)(h_bte, rope, attend_bts, stacked_kv, cache_index)
            if new_kv is not None:
                new_kv = (tuple(new_kv[0]), tuple(new_kv[1]))
        else:
            new_k, new_v = [], []
            for i in range(cfg.num_layers):
                layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                h_bte, layer_new_kv = layer(cfg, name=f"layers_{i}", **kw_layer)(
                    h_bte, rope, attend_bts, layer_kv, cache_index
                )
                if layer_new_kv is not None:
                    new_k.append(layer_new_kv[0])
                    new_v.append(layer_new_kv[1])
            new_kv = None if kv is None else (tuple(new_k), tuple(new_v))
        h_bte = RMSNorm(cfg.rms_norm_eps, name="final_norm", **kw)(h_bte)
        if output_index is not None:
            h_bte = jnp.take_along_axis(h_bte, output_index[..., None], axis=1)
        if self.return_hidden:
            return h_bte, new_kv

        if cfg.tie_word_embeddings:
            table_ve = embed.embedding.astype(self.dtype)
            logits = jnp.einsum("bte,ve->btv", h_bte, table_ve, preferred_element_type=jnp.float32)
        else:
            logits = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                kernel_init=nn.initializers.normal(INIT_STD),
                dot_general=functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32),
                name="lm_head",
                **kw,
            )(h_bte)
        return logits.astype(jnp.float32), new_kv


AUTO_UNROLL_MAX_LAYERS = 8


def scan_unroll_length(scan_unroll: int, num_layers: int, *, remat: bool = False) -> int:
    """Layers per iteration of the scanned stack: ``scan_unroll`` if positive, all layers for
    -1, and for 0 (auto) all layers up to ``AUTO_UNROLL_MAX_LAYERS``, else 1 (a rolled loop).
    Auto with ``remat`` is 1: per-layer recomputation saves memory only in a rolled loop
    (unrolled, XLA keeps the activations; measured with ``compiled.memory_analysis()``).

    Unrolled, XLA sees each layer's ops and buffers directly instead of through the loop's
    stacked slices. Measured on CPU (2026-11-30): the 5-layer tiny benchmark's DPO step +6-12%
    tokens/s; at 12 layers +3% (noise level); for a 30-layer SmolLM2-shaped model full
    unrolling doubled the train step's compile time (6.7 -> 12.9 s), hence the auto limit.
    """
    if scan_unroll == 0:
        return num_layers if num_layers <= AUTO_UNROLL_MAX_LAYERS and not remat else 1
    if scan_unroll == -1:
        return num_layers
    if scan_unroll < -1:
        raise ValueError(f"scan_unroll must be -1 (all layers), 0 (auto) or a positive count, got {scan_unroll}")
    return min(scan_unroll, num_layers)


def attend_mask(key_valid_bs: Array, query_slot_t: Array, key_slot_s: Array, sliding_window: int | None) -> Array:
    """``[B, T, S]`` bool: key is a real token, not after the query, and within the window."""
    distance_ts = query_slot_t[:, None] - key_slot_s[None, :]
    allowed_ts = distance_ts >= 0
    if sliding_window is not None:
        allowed_ts &= distance_ts < sliding_window
    return allowed_ts[None] & (key_valid_bs[:, None, :] > 0)


def default_positions(attention_mask_bt: Array) -> Array:
    """``cumsum(mask) - 1`` clipped at 0: RoPE positions for left- or right-padded rows."""
    return jnp.maximum(jnp.cumsum(attention_mask_bt, axis=-1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="model")
def forward(
    model: CausalLM,
    params: Any,
    input_ids: Array,
    attention_mask: Array | None = None,
    positions: Array | None = None,
) -> Array:
    """Logits ``[B, T, V]`` float32 of a full sequence.

    ``input_ids``: ``[B, T]`` int. ``attention_mask``: ``[B, T]`` 1 on real tokens (default
    all ones); padded keys are never attended to, and logits at padded positions are
    meaningless. ``positions``: ``[B, T]`` RoPE positions (default ``default_positions``).
    Attention is causal by index and, with a sliding window, limited by index distance.
    Jitted with ``model`` static (one compilation per model and input shapes).
    """
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask)
    slots = jnp.arange(input_ids.shape[1])
    attend = attend_mask(attention_mask, slots, slots, model.config.sliding_window)
    logits, _ = model.apply({"params": params}, input_ids, positions, attend)
    return logits


@functools.partial(jax.jit, static_argnames="model")
def forward_cached(
    model: CausalLM,
    params: Any,
    input_ids: Array,
    attention_mask: Array,
    cache: KVCache,
    cache_index: Array | int,
    output_index: Array | None = None,
) -> tuple[Array, KVCache]:
    """Runs ``T`` new tokens against the cache; returns ``(logits [B, T, V] f32, new cache)``.

    ``output_index`` ``[B, N]`` (positions among the ``T`` new tokens): the LM head runs only
    there and the logits are ``[B, N, V]`` (a prefill needs only its last position's).

    The new tokens fill slots ``[cache_index, cache_index + T)`` (``cache.mask`` there is
    set to ``attention_mask`` ``[B, T]``). Their positions continue each row's count of
    valid slots before ``cache_index``. A query sees valid slots up to its own (and within
    the sliding window by slot distance). Jitted with ``model`` static; ``cache_index`` is
    traced, so all decode steps share one compilation. Wrap it in your own ``jax.jit`` with
    ``donate_argnames="cache"`` to update the cache in place.
    """
    cache_index = jnp.asarray(cache_index, jnp.int32)
    num_new, num_slots = input_ids.shape[1], cache.mask.shape[1]
    slots = jnp.arange(num_slots)
    valid_before_b = jnp.sum(cache.mask * (slots < cache_index), axis=1)
    positions = valid_before_b[:, None] + default_positions(attention_mask)
    mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask.astype(jnp.int32), (0, cache_index))
    query_slots = cache_index + jnp.arange(num_new)
    attend = attend_mask(mask, query_slots, slots, model.config.sliding_window)
    logits, (k, v) = model.apply({"params": params}, input_ids, positions, attend, (cache.k, cache.v), cache_index,
                                 output_index)
    return logits, KVCache(k, v, mask)


def unstack_layers(params: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
    """Params for ``CausalLM(scan_layers=False)``: ``layers`` ``[L, ...]`` -> ``layers_0`` ... ``layers_{L-1}``.

    Each layer's arrays are copies (separate buffers) when run under ``jit``.
    """
    out = {name: value for name, value in params.items() if name != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def _fuse_layer(layer: Mapping[str, Any]) -> dict[str, Any]:
    """One layer's (or the stacked layers') params with ``attn/{q,k,v}`` -> ``attn/qkv`` and
    ``mlp/{gate,up}`` -> ``mlp/gate_up`` (see ``fuse_projections``)."""
    attn, mlp = layer["attn"], layer["mlp"]
    qkv = {"kernel": jnp.concatenate([attn[n]["kernel"] for n in "qkv"], axis=-2)}
    if "bias" in attn["q"]:
        qkv["bias"] = jnp.concatenate([attn[n]["bias"] for n in "qkv"], axis=-2)
    gate_up = {"kernel": jnp.concatenate([mlp["gate"]["kernel"], mlp["up"]["kernel"]], axis=-1)}
    return {
        **layer,
        "attn": {"qkv": qkv, "o": attn["o"]},
        "mlp": {"gate_up": gate_up, "down": mlp["down"]},
    }


def fuse_projections(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params for ``fused_projections=True`` from unfused ones (stacked or per-layer).

    In every layer, ``attn/{q,k,v}`` become ``attn/qkv`` (kernels concatenated on the heads
    axis, biases too) and ``mlp/{gate,up}`` become ``mlp/gate_up`` (concatenated on the
    output axis). Both axes are counted from the end, so stacked ``[L, ...]`` leaves work too.
    """
    return {
        name: _fuse_layer(value) if name == "layers" or name.startswith("layers_") else value
        for name, value in params.items()
    }


@jax.jit
def _decode_layer(layers: Mapping[str, Any], index: Array) -> dict[str, Any]:
    """Layer ``index`` (a traced int32 scalar) of stacked, unfused layer params, fused (copies)."""
    return _fuse_layer(jax.tree.map(lambda x: x[index], layers))


def decode_model_and_params(model: CausalLM, params: Mapping[str, Any]) -> tuple[CausalLM, dict[str, Any]]:
    """The layout a decode loop should run: layers unrolled, projections fused.

    Returns ``(model', params')`` computing the same function as ``(model, params)``
    (stacked, unfused); the params are ``fuse_projections(unstack_layers(params, L))``, new
    buffers built one layer at a time by one small compiled function (slice and fuse).

    Call it once, before the decode loop's ``jit`` (``sampling.generate`` and
    ``sample_responses`` do), and pass the result in: building the layout inside that ``jit``
    makes XLA compile every layer's slices and concatenations into the loop's program. On
    SmolLM2-135M (64 rows, 48 new tokens, 2-core CPU) the sampler compiled in 3.4 s on prepared
    params against 9.2 s, and decoded at the same speed. It also works on traced params.
    """
    if not model.scan_layers or model.fused_projections:
        raise ValueError("decode_model_and_params expects a scanned, unfused model")
    out = {name: value for name, value in params.items() if name != "layers"}
    for i in range(model.config.num_layers):
        out[f"layers_{i}"] = _decode_layer(params["layers"], jnp.int32(i))
    return model.clone(scan_layers=False, fused_projections=True), out


def init_params(model: CausalLM, rng: Array) -> Any:
    """Random params for ``model`` (jit this with ``out_shardings`` to init sharded)."""
    ids = jnp.zeros((1, 1), jnp.int32)
    return model.init(rng, ids, ids, jnp.ones((1, 1, 1), bool))["params"]


# Compiled once per model (same config and dtypes), whatever the seed.
_jitted_init_params = jax.jit(init_params, static_argnames="model")


def init_model(
    config: ModelConfig | Mapping[str, Any],
    *,
    seed: int = 0,
    dtype: DType = jnp.float32,
    param_dtype: DType = jnp.float32,
    remat: bool = False,
) -> tuple[CausalLM, Any]:
    """``(model, params)`` with normal(0.02) weights, unit norm scales and zero biases.

    ``config``: a ``ModelConfig``, or a dict / ``ConfigDict`` of its fields.
    """
    model = CausalLM(as_model_config(config), dtype=dtype, param_dtype=param_dtype, remat=remat)
    return model, _jitted_init_params(model, jax.random.key(seed))


# Logical axis names of each param, keyed by its path below the model (or below "layers",
# whose leaves all get a leading "layers" axis).
_TOP_LEVEL_AXES = {
    ("embed", "embedding"): ("vocab", "embed"),
    ("final_norm", "scale"): ("embed",),
    ("lm_head", "kernel"): ("embed", "vocab"),
    ("score", "kernel"): ("embed", None),  # reward models (models.reward): [E, 1]
}
_LORA_AXES = {"q": ("embed", "q_heads"), "k": ("embed", "kv_heads"), "v": ("embed", "kv_heads"),
              "o": ("q_heads", "embed"), "gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed")}
_LAYER_AXES = {
    ("attn_norm", "scale"): ("embed",),
    ("attn", "q", "kernel"): ("embed", "q_heads", "head_dim"),
    ("attn", "q", "bias"): ("q_heads", "head_dim"),
    ("attn", "k", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("attn", "k", "bias"): ("kv_heads", "head_dim"),
    ("attn", "v", "kernel"): ("embed", "kv_heads", "head_dim"),
    ("attn", "v", "bias"): ("kv_heads", "head_dim"),
    ("attn", "o", "kernel"): ("q_heads", "head_dim", "embed"),
    ("mlp_norm", "scale"): ("embed",),
    ("mlp", "gate", "kernel"): ("embed", "mlp"),
    ("mlp", "up", "kernel"): ("embed", "mlp"),
    ("mlp", "down", "kernel"): ("mlp", "embed"),
}


def param_logical_axes(path: tuple[str, ...]) -> tuple[str | None, ...]:
    """Logical axis names of the param at ``path`` (e.g. ``('layers', 'attn', 'q', 'kernel')``);
    a reward model's ``backbone/...`` params are named as the LM's."""
    if path[0] == "backbone":
        return param_logical_axes(path[1:])
    if path[0] == "layers" and path[-1] in ("kernel_lora_a", "kernel_lora_b"):
        # LoRA adapters (models.lora): A [L, d_in, r], B [L, r, d_out], d_in / d_out split like the
        # kernel's input / output axes (flattened heads follow their heads axis).
        d_in, d_out = _LORA_AXES[path[-2]]
        return ("layers", d_in, None) if path[-1] == "kernel_lora_a" else ("layers", None, d_out)
    if path[0] == "layers" and path[1:] in _LAYER_AXES:
        return ("layers",) + _LAYER_AXES[path[1:]]
    if path in _TOP_LEVEL_AXES:
        return _TOP_LEVEL_AXES[path]
    raise KeyError(f"no logical axes for param {'/'.join(path)}")


def logical_axes(params: Any) -> Any:
    """Same tree as ``params`` with, at each leaf, a tuple of logical axis names per dim.

    Names come from ``{'layers', 'vocab', 'embed', 'q_heads', 'kv_heads', 'head_dim',
    'mlp'}``. The leaves are tuples, so map over the result with
    ``is_leaf=lambda x: isinstance(x, tuple)``. Works on arrays or ``ShapeDtypeStruct``s.
    """

    def axes_of(key_path: Any, _leaf: Any) -> tuple[str | None, ...]:
        return param_logical_axes(tuple(str(k.key) for k in key_path))

    return jax.tree_util.tree_map_with_path(axes_of, params)


def count_params(params: Any) -> int:
    """Total number of scalars in the params tree."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree_util.tree_leaves(params)))


AUTO_CHUNK_MIN_VOCAB = 16384  # below this the [B, T, V] logits are small: no blocks (auto)


def head_block_size(model) -> int | None:
    """How the train step runs ``model``'s LM head (``train.step.chunked_token_logps``): None, one
    full ``[B, T, V]``; else by vocabulary blocks of that many entries, 0 meaning sized for the
    batch (``models.lm_head.vocab_block``). ``model.logits_chunk``: a positive size, -1 off, 0 auto
    (blocks when the vocabulary has at least ``AUTO_CHUNK_MIN_VOCAB`` entries)."""
    chunk = getattr(model, "logits_chunk", -1)
    if chunk == 0:
        return 0 if model.config.vocab_size >= AUTO_CHUNK_MIN_VOCAB else None
    return chunk if chunk > 0 else None


def lm_head_weights(model, params) -> tuple[Array, str]:
    """The LM head in its stored layout and compute dtype, with its einsum letters: the tied
    embedding ``([V, E], "ve")`` or ``lm_head`` ``([E, V], "ev")``. (Transposing the tied table
    would copy it, and its gradient back, in every step.)"""
    if model.config.tie_word_embeddings:
        return params["embed"]["embedding"].astype(model.dtype), "ve"
    return params["lm_head"]["kernel"].astype(model.dtype), "ev"
