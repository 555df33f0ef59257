"""Optimizers: gradient clipping, AdamW / RMSprop / SGD, and a warmup-cosine learning rate whose
length is part of the optimizer *state*, not of the compiled step.

The learning rate at update ``t`` of a run of ``T`` updates is optax's
``warmup_cosine_decay_schedule(0, lr, w, max(T, w + 1), end_value=f * lr)`` (``f`` = 0.1 by default) with
``w = min(warmup_steps, T - 1)``, evaluated with ``T`` read from the state
(``ScheduleState.total``). So one compiled train step serves rounds of any length (online rounds,
active-DPO re-trainings of growing label sets): ``start_schedule(opt_state, T)`` sets it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "rmsprop", "sgd")


class ScheduleState(NamedTuple):
    """``count``: updates done; ``total``: updates in the run (both int32 scalars)."""

    count: jax.Array
    total: jax.Array


def warmup_cosine_lr(count, total, *, peak: float, warmup_steps: int, end_fraction: float = 0.1):
    """The learning rate after ``count`` of ``total`` updates (traced ``count``/``total`` allowed).

    Equals ``optax.warmup_cosine_decay_schedule(0, peak, w, max(total, w + 1), end_fraction * peak)(count)``
    with ``w = min(warmup_steps, max(total - 1, 0))``.
    """
    count = jnp.asarray(count, jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    warmup = jnp.minimum(jnp.float32(warmup_steps), jnp.maximum(total - 1.0, 0.0))
    decay = jnp.maximum(total, warmup + 1.0) - warmup
    rising = peak * count / jnp.maximum(warmup, 1.0)
    t = jnp.minimum(count - warmup, decay)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay))
    falling = peak * ((1.0 - end_fraction) * cosine + end_fraction)
    return jnp.where(count < warmup, rising, falling)


def scale_by_warmup_cosine(peak: float, warmup_steps: int, end_fraction: float = 0.1) -> optax.GradientTransformation:
    """Multiplies updates by ``-warmup_cosine_lr(count, total)`` (a descent step), counting updates."""

    def init(params):
        del params
        return ScheduleState(count=jnp.zeros((), jnp.int32), total=jnp.ones((), jnp.int32))

    def update(updates, state, params=None):
        del params
        lr = warmup_cosine_lr(state.count, state.total, peak=peak, warmup_steps=warmup_steps,
                              end_fraction=end_fraction)
        updates = jax.tree.map(lambda g: (-lr * g).astype(g.dtype), updates)
        return updates, ScheduleState(count=optax.safe_increment(state.count), total=state.total)

    return optax.GradientTransformation(init, update)


def peak_learning_rate(ocfg, *, lora: bool = False) -> float:
    """``ocfg.learning_rate``, or with ``lora`` its ``lora_learning_rate`` where that is set (> 0):
    adapters usually want a larger rate than the full model (about 10x), so one config can serve
    both."""
    lora_lr = ocfg.get("lora_learning_rate", 0.0) or 0.0
    return float(lora_lr) if lora and lora_lr > 0 else float(ocfg.learning_rate)


def make_optimizer(ocfg, *, lora: bool = False) -> optax.GradientTransformation:
    """Clipped AdamW / RMSprop / SGD with the warmup-cosine schedule of the module docstring.

    ``ocfg``: ``name`` (adamw | rmsprop | sgd), ``learning_rate`` (with ``lora``:
    ``peak_learning_rate``), ``warmup_steps``, ``weight_decay`` (AdamW), ``max_grad_norm``
    (``inf``: no clipping) and optionally ``final_lr_fraction`` (the cosine's end value over the
    peak, default 0.1). Set the run length with ``start_schedule``.
    """
    if ocfg.name == "adamw":
        direction = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(ocfg.weight_decay))
    elif ocfg.name == "rmsprop":
        direction = optax.scale_by_rms()
    elif ocfg.name == "sgd":
        direction = optax.identity()
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {ocfg.name!r}; known: {', '.join(OPTIMIZERS)}")
    schedule = scale_by_warmup_cosine(peak_learning_rate(ocfg, lora=lora), ocfg.warmup_steps,
                                      ocfg.get("final_lr_fraction", 0.1))
    if ocfg.max_grad_norm == float("inf"):
        return optax.chain(direction, schedule)
    return optax.chain(optax.clip_by_global_norm(ocfg.max_grad_norm), direction, schedule)


def start_schedule(opt_state, total_steps: int):
    """``opt_state`` (of ``make_optimizer``) with its schedule set to a run of ``total_steps`` updates
    from update 0."""

    def reset(node):
        if isinstance(node, ScheduleState):
            return ScheduleState(count=jnp.zeros_like(node.count), total=jnp.full_like(node.total, total_steps))
        return node

    return jax.tree.map(reset, opt_state, is_leaf=lambda n: isinstance(n, ScheduleState))


def extend_schedule(opt_state, total_steps: int):
    """``opt_state`` with its schedule's length set to ``total_steps``, its count unchanged (a run
    resumed with more steps continues on the longer schedule)."""
    return jax.tree.map(
        lambda n: n._replace(total=jnp.full_like(n.total, total_steps)) if isinstance(n, ScheduleState) else n,
        opt_state, is_leaf=lambda n: isinstance(n, ScheduleState))
