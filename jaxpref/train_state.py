"""The functional train state: policy, reference, optimizer state, step and RNG.

The reference policy is part of the state so that the trust-region methods (TR-DPO/IPO/KTO,
Gorbatovski et al. 2024) can update it inside the jitted step:

    every ``tau`` steps:  ref <- alpha * policy + (1 - alpha) * ref     (alpha = 1: hard copy)

built from ``optax.incremental_update`` (soft) and ``optax.periodic_update`` (every tau).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, number of optimizer updates applied.
      params: policy parameters (pytree).
      ref_params: reference parameters (same structure) or None when no reference is needed.
      opt_state: optax state for ``params``.
      rng: PRNG key for stochastic steps.
    """

    step: jax.Array
    params: PyTree
    ref_params: PyTree | None
    opt_state: PyTree
    rng: jax.Array


def create_train_state(params, tx: optax.GradientTransformation, *, rng, with_reference: bool) -> TrainState:
    """A fresh state at step 0; the reference (if any) starts as a copy of the policy."""
    ref = jax.tree.map(jnp.copy, params) if with_reference else None
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, ref_params=ref, opt_state=tx.init(params), rng=rng
    )


def update_reference(state: TrainState, *, every: int, alpha: float) -> TrainState:
    """Trust-region reference update, applied when ``state.step`` is a multiple of ``every``.

    Call after the optimizer update (so ``state.step`` counts the updates done). ``every <= 0``
    disables updates (the reference stays frozen).
    """
    if every <= 0 or state.ref_params is None:
        return state
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"ref_update_alpha must be in (0, 1], got {alpha}")
    blended = optax.incremental_update(state.params, state.ref_params, step_size=alpha)
    new_ref = optax.periodic_update(blended, state.ref_params, state.step, every)
    return state.replace(ref_params=new_ref)
