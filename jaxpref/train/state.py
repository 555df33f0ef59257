"""The functional train state: policy, reference, optimizer state, step and RNG.

The reference policy is part of the state, so every reference rule is an update of the state:

- frozen: set once (the starting policy) and never changed;
- trust region (TR-DPO/IPO/KTO, Gorbatovski et al. 2024), inside the jitted step,
  every ``tau`` steps ``ref <- alpha * policy + (1 - alpha) * ref`` (``alpha = 1``: a hard copy),
  built from ``optax.incremental_update`` (soft) and ``optax.periodic_update`` (every tau);
- reset at a round's start (SPPO / SELM iterations): ``ref <- policy``, i.e. a hard
  ``periodic_update`` with a period of one round.

When the reference does not change during a round its log-probs can be computed once
(``jaxpref.infer.scoring.reference_logps``) and the state carries no reference at all
(``ref_params=None``); the step then reads them from the batch.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxpref.objectives import INITIAL_LOSS_STATE
from jaxpref.runtime.sharding import Rules, param_shardings, replicated
from jaxpref.train.optim import start_schedule

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes.

    Attributes:
      step: int32 scalar, number of optimizer updates applied (over all rounds of a job).
      params: policy parameters (pytree).
      ref_params: reference parameters (same structure) or None when the step needs none.
      opt_state: optax state for ``params``.
      rng: PRNG key for stochastic steps.
      loss_state: float32 scalars a loss carries from step to step (``objectives.INITIAL_LOSS_STATE``:
        BCO's running reward baseline), or None in a checkpoint saved without it.
    """

    step: jax.Array
    params: PyTree
    ref_params: PyTree | None
    opt_state: PyTree
    rng: jax.Array
    loss_state: PyTree | None = None


def initial_loss_state() -> dict[str, jax.Array]:
    """A fresh ``TrainState.loss_state``."""
    return {k: jnp.asarray(v, jnp.float32) for k, v in INITIAL_LOSS_STATE.items()}


def create_train_state(params, tx: optax.GradientTransformation, *, rng, with_reference: bool = False,
                       ref_params=None) -> TrainState:
    """A fresh state at step 0; the reference (if any) is ``ref_params``, by default a copy of
    the policy."""
    if ref_params is None and with_reference:
        ref_params = jax.tree.map(jnp.copy, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, ref_params=ref_params, opt_state=tx.init(params), rng=rng,
        loss_state=initial_loss_state(),
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


# --- On a mesh ----------------------------------------------------------------------------------


def train_state_shardings(abstract_state: TrainState, tx: optax.GradientTransformation, mesh: Mesh,
                          rules: Rules) -> TrainState:
    """A ``TrainState`` of ``NamedSharding``s for ``abstract_state`` (e.g. from ``jax.eval_shape``).

    Policy and reference share the param shardings; every params-shaped tree inside the
    optimizer state (AdamW's ``mu``/``nu``) follows them (``optax.tree_map_params``); every
    other leaf (step, counts, schedule length, rng) is replicated.
    """
    params = param_shardings(abstract_state.params, mesh, rules)
    rep = replicated(mesh)
    opt_state = optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_state.opt_state, params, transform_non_params=lambda _: rep
    )
    return TrainState(
        step=rep,
        params=params,
        ref_params=None if abstract_state.ref_params is None else params,
        opt_state=opt_state,
        rng=rep,
        loss_state=None if abstract_state.loss_state is None else jax.tree.map(lambda _: rep,
                                                                                abstract_state.loss_state),
    )


def state_factory(tx: optax.GradientTransformation, shardings: TrainState, *, with_reference: bool = False):
    """A jitted ``create(params, ref_params, rng, step=0, total=1) -> TrainState`` laid out as
    ``shardings``: a fresh state at global ``step`` whose optimizer schedule
    (``train.optim.start_schedule``) runs ``total`` updates.

    Build it once and reuse it (one compilation per layout). ``ref_params=None`` with
    ``with_reference`` makes the reference a copy of ``params``. Inputs may be host arrays or
    arrays on any devices; the state holds copies, so they stay valid when the state is later
    donated, and the optimizer state is created directly in its sharded layout.
    """
    def create(p, r, key, step, total):
        ref = None if r is None else jax.tree.map(jnp.copy, r)
        state = create_train_state(jax.tree.map(jnp.copy, p), tx, rng=key, with_reference=with_reference,
                                   ref_params=ref)
        return state.replace(step=step, opt_state=start_schedule(state.opt_state, total))

    jitted = jax.jit(create, out_shardings=shardings)
    rep = shardings.step

    def factory(params, ref_params, rng, step: int = 0, total: int = 1):
        params = jax.device_put(params, shardings.params)
        if ref_params is not None:
            ref_params = jax.device_put(ref_params, shardings.params)
        return jitted(params, ref_params, jax.device_put(rng, shardings.rng), jax.device_put(np.int32(step), rep),
                      jax.device_put(np.int32(total), rep))

    return factory


def create_sharded_train_state(params: PyTree, tx: optax.GradientTransformation, shardings: TrainState, *,
                               rng: jax.Array, with_reference: bool = False,
                               ref_params: PyTree | None = None) -> TrainState:
    """``create_train_state`` laid out as ``shardings`` (``state_factory`` built and called once)."""
    return state_factory(tx, shardings, with_reference=with_reference)(params, ref_params, rng)
