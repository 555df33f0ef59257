"""One table that says what each loss needs, so a single train step serves every method.

A train batch is a dict of named *sequence groups* (``chosen``, ``rejected``, ``completion``,
``kl``, ``sample``), each ``Sequences(ids, attention_mask, completion_mask)`` of shape
``[B, T]``, plus per-example ``extras`` (labels, win rates). The step runs one fused forward
over all groups, turns them into per-group log-probs, and hands them to the objective's
``compute``. Methods differ only by a row of ``OBJECTIVES`` (and, for the trust-region ones,
by the reference-update rule in the config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpref import losses


class Sequences(NamedTuple):
    """``[B, T]`` int32 arrays (see ``jaxpref.batches`` for the padding contract)."""

    ids: jax.Array
    attention_mask: jax.Array
    completion_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class LossHParams:
    """The hyper-parameters a loss may read (a small hashable subset of the config)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    delta: float = 1.0  # SLiC margin
    sft_weight: float = 0.0  # SLiC regulariser
    desirable_weight: float = 1.0  # KTO lambda_D
    undesirable_weight: float = 1.0  # KTO lambda_U
    selm_alpha: float = 0.001  # SELM optimism weight
    ipo_average: bool = True  # IPO on per-token average log-ratios


class LossInputs(NamedTuple):
    """What ``compute`` receives. Dicts map group name -> ``[B]`` float32."""

    policy: Mapping[str, jax.Array]
    reference: Mapping[str, jax.Array]
    lengths: Mapping[str, jax.Array]
    extras: Mapping[str, jax.Array]


LossOutput = tuple[jax.Array, jax.Array, jax.Array]  # losses, chosen rewards, rejected rewards


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss and what it needs from the data and the models.

    Attributes:
      groups: sequence groups the batch must carry.
      needs_reference: whether reference log-probs are computed.
      extras: per-example arrays the batch must carry (e.g. SPPO win rates).
      compute: ``(LossInputs, LossHParams) -> (losses[B], chosen_rewards[B], rejected_rewards[B])``.
    """

    groups: tuple[str, ...]
    needs_reference: bool
    compute: Callable[[LossInputs, LossHParams], LossOutput]
    extras: tuple[str, ...] = ()

    @property
    def paired(self) -> bool:
        return "chosen" in self.groups


def _pair(x: LossInputs):
    return x.policy["chosen"], x.policy["rejected"], x.reference["chosen"], x.reference["rejected"]


def _dpo(x, hp):
    return losses.dpo_loss(*_pair(x), beta=hp.beta, label_smoothing=hp.label_smoothing)


def _ipo(x, hp):
    lengths = dict(chosen_lengths=x.lengths["chosen"], rejected_lengths=x.lengths["rejected"]) if hp.ipo_average else {}
    return losses.ipo_loss(*_pair(x), beta=hp.beta, **lengths)


def _hinge(x, hp):
    return losses.hinge_loss(*_pair(x), beta=hp.beta)


def _slic(x, hp):
    return losses.slic_loss(x.policy["chosen"], x.policy["rejected"], delta=hp.delta, sft_weight=hp.sft_weight)


def _kto_pair(x, hp):
    return losses.kto_pair_loss(*_pair(x), beta=hp.beta)


def _sppo(x, hp):
    return losses.sppo_loss(*_pair(x), x.extras["chosen_probs"], x.extras["rejected_probs"], beta=hp.beta)


def _sppo_hard(x, hp):
    return losses.sppo_hard_loss(*_pair(x), beta=hp.beta)


def _selm(x, hp):
    return losses.selm_loss(
        *_pair(x), x.policy["sample"], x.reference["sample"], beta=hp.beta, alpha=hp.selm_alpha
    )


def _kto(x, hp):
    kl = losses.kto_kl_estimate(x.policy["kl"], x.reference["kl"])
    desirable = x.extras["desirable"]
    per_example, rewards = losses.kto_loss(
        x.policy["completion"],
        x.reference["completion"],
        desirable,
        beta=hp.beta,
        kl=kl,
        desirable_weight=hp.desirable_weight,
        undesirable_weight=hp.undesirable_weight,
    )
    # Report rewards of desirable rows as "chosen" and undesirable as "rejected" (NaN-free: 0 elsewhere).
    return per_example, jnp.where(desirable, rewards, 0.0), jnp.where(desirable, 0.0, rewards)


PAIR = ("chosen", "rejected")

OBJECTIVES: dict[str, Objective] = {
    "dpo": Objective(PAIR, True, _dpo),  # = RSO sigmoid-norm
    "ipo": Objective(PAIR, True, _ipo),
    "hinge": Objective(PAIR, True, _hinge),  # RSO hinge-norm
    "slic": Objective(PAIR, False, _slic),
    "kto_pair": Objective(PAIR, True, _kto_pair),
    "sppo": Objective(PAIR, True, _sppo, extras=("chosen_probs", "rejected_probs")),
    "sppo_hard": Objective(PAIR, True, _sppo_hard),
    "selm": Objective(PAIR + ("sample",), True, _selm),
    "kto": Objective(("completion", "kl"), True, _kto, extras=("desirable",)),
}


def get_objective(name: str) -> Objective:
    """Looks up a loss by name; unknown names raise with the list of known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"config.loss: unknown loss {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]
