"""One table that says what each loss needs, so a single train step serves every method.

A train batch is a dict of named *sequence groups* (``chosen``, ``rejected``, ``completion``,
``kl``, ``sample``), each ``Sequences(ids, attention_mask, completion_mask)`` of shape
``[B, T]``, plus per-example ``extras`` (labels, win rates, precomputed reference log-probs).
The step scores every group in one fused forward (``jaxpref.train.step.sequence_scores``: summed
completion log-probs for a language model, the scalar score for a reward model) and hands the
``[B]`` results to the objective's ``compute``. Jobs differ only by a row of ``OBJECTIVES``, the
data they feed it, and the reference rule of their rounds.

Loss hyper-parameters are declared once, in ``HYPERPARAMETERS`` (default, one-line help, valid
range). The job config gets one top-level key per entry (``jaxpref.config``), config validation
checks them from here, each ``Objective`` lists the ones it reads (``hparams``), and
``summary.json`` reports exactly those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpref import losses
from jaxpref.checks import FLAG, NON_NEGATIVE, POSITIVE, Check


class Sequences(NamedTuple):
    """``[B, T]`` int32 arrays (see ``jaxpref.data.batches`` for the padding contract)."""

    ids: jax.Array
    attention_mask: jax.Array
    completion_mask: jax.Array


# --- hyper-parameters ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HParam:
    """A loss hyper-parameter: its default, a one-line help, and its valid values."""

    default: float | bool
    help: str
    check: Check


HYPERPARAMETERS: dict[str, HParam] = {
    "beta": HParam(0.1, "KL strength (RSO's gamma; SPPO's eta = 1/beta)", POSITIVE),
    "label_smoothing": HParam(0.0, "conservative DPO: assumed label-noise rate",
                              Check(float, low=0, high=0.5, high_open=True)),
    "delta": HParam(1.0, "SLiC calibration margin", POSITIVE),
    "sft_weight": HParam(0.0, "SLiC regulariser: weight of the chosen response's NLL", NON_NEGATIVE),
    "desirable_weight": HParam(1.0, "KTO lambda_D, weight of desirable examples", POSITIVE),
    "undesirable_weight": HParam(1.0, "KTO lambda_U, weight of undesirable examples", POSITIVE),
    "selm_alpha": HParam(0.001, "SELM optimism weight alpha", NON_NEGATIVE),
    "ipo_average": HParam(True, "IPO on per-token average log-ratios (False: sums)", FLAG),
}


# --- objectives -----------------------------------------------------------------------------


class LossInputs(NamedTuple):
    """What ``compute`` receives. Dicts map group name -> ``[B]`` float32.

    ``policy``: the trained model's scores (summed completion log-probs, or reward-model scores);
    ``reference``: the reference's (empty when the objective needs none); ``lengths``: counted
    completion tokens; ``extras``: per-example arrays of the batch.
    """

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
      compute: ``(LossInputs, **hparams) -> (losses[B], chosen_rewards[B], rejected_rewards[B])``.
      hparams: the ``HYPERPARAMETERS`` it reads (passed to ``compute`` by keyword).
      extras: per-example arrays the batch must carry (e.g. SPPO win rates).
      model: ``"lm"`` (scores are log-probs) or ``"reward_model"`` (scalar scores).
    """

    groups: tuple[str, ...]
    needs_reference: bool
    compute: Callable[..., LossOutput]
    hparams: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    model: str = "lm"

    @property
    def paired(self) -> bool:
        return "chosen" in self.groups

    @property
    def per_example_reference(self) -> bool:
        """Whether each row's reference log-probs depend on that row alone (so they can be
        computed once per dataset): not for KTO's ``kl`` rows, built from the batch."""
        return "kl" not in self.groups


def _pair(x: LossInputs):
    return x.policy["chosen"], x.policy["rejected"], x.reference["chosen"], x.reference["rejected"]


def _dpo(x, *, beta, label_smoothing):
    return losses.dpo_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing)


def _ipo(x, *, beta, ipo_average):
    lengths = dict(chosen_lengths=x.lengths["chosen"], rejected_lengths=x.lengths["rejected"]) if ipo_average else {}
    return losses.ipo_loss(*_pair(x), beta=beta, **lengths)


def _hinge(x, *, beta):
    return losses.hinge_loss(*_pair(x), beta=beta)


def _slic(x, *, delta, sft_weight):
    return losses.slic_loss(x.policy["chosen"], x.policy["rejected"], delta=delta, sft_weight=sft_weight)


def _kto_pair(x, *, beta):
    return losses.kto_pair_loss(*_pair(x), beta=beta)


def _sppo(x, *, beta):
    return losses.sppo_loss(*_pair(x), x.extras["chosen_probs"], x.extras["rejected_probs"], beta=beta)


def _sppo_hard(x, *, beta):
    return losses.sppo_hard_loss(*_pair(x), beta=beta)


def _selm(x, *, beta, selm_alpha):
    return losses.selm_loss(*_pair(x), x.policy["sample"], x.reference["sample"], beta=beta, alpha=selm_alpha)


def _kto(x, *, beta, desirable_weight, undesirable_weight):
    kl = losses.kto_kl_estimate(x.policy["kl"], x.reference["kl"])
    desirable = x.extras["desirable"]
    per_example, rewards = losses.kto_loss(
        x.policy["completion"], x.reference["completion"], desirable, beta=beta, kl=kl,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    # Report rewards of desirable rows as "chosen" and undesirable as "rejected" (NaN-free: 0 elsewhere).
    return per_example, jnp.where(desirable, rewards, 0.0), jnp.where(desirable, 0.0, rewards)


def _sft(x):
    logps = x.policy["completion"]
    per_example = losses.sft_loss(logps, x.lengths["completion"])
    return per_example, jax.lax.stop_gradient(logps), jnp.zeros_like(logps)


def _bradley_terry(x):
    s_w, s_l = x.policy["chosen"], x.policy["rejected"]
    return losses.bradley_terry_loss(s_w, s_l), jax.lax.stop_gradient(s_w), jax.lax.stop_gradient(s_l)


PAIR = ("chosen", "rejected")
UNPAIRED = ("completion", "kl")

OBJECTIVES: dict[str, Objective] = {
    "dpo": Objective(PAIR, True, _dpo, ("beta", "label_smoothing")),  # = RSO sigmoid-norm
    "ipo": Objective(PAIR, True, _ipo, ("beta", "ipo_average")),
    "hinge": Objective(PAIR, True, _hinge, ("beta",)),  # RSO hinge-norm
    "slic": Objective(PAIR, False, _slic, ("delta", "sft_weight")),
    "kto_pair": Objective(PAIR, True, _kto_pair, ("beta",)),
    "sppo": Objective(PAIR, True, _sppo, ("beta",), extras=("chosen_probs", "rejected_probs")),
    "sppo_hard": Objective(PAIR, True, _sppo_hard, ("beta",)),
    "selm": Objective(PAIR + ("sample",), True, _selm, ("beta", "selm_alpha")),
    "kto": Objective(UNPAIRED, True, _kto, ("beta", "desirable_weight", "undesirable_weight"),
                     extras=("desirable",)),
    "sft": Objective(("completion",), False, _sft),  # token-mean NLL of the completions
    "bradley_terry": Objective(PAIR, False, _bradley_terry, model="reward_model"),  # reward-model training
}


def get_objective(name: str) -> Objective:
    """Looks up a loss by name; unknown names raise with the list of known ones."""
    if name not in OBJECTIVES:
        raise ValueError(f"config.loss: unknown loss {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def hparams_of(cfg: Mapping[str, Any], objective: Objective) -> dict[str, Any]:
    """The config values of the hyper-parameters ``objective`` reads."""
    return {name: cfg[name] for name in objective.hparams}


def default_hparams(objective: Objective, **overrides: float | bool) -> dict[str, Any]:
    """The hyper-parameters ``objective`` reads at their declared defaults, with ``overrides``
    (names it does not read are ignored, so one set of overrides serves several objectives)."""
    return {name: overrides.get(name, HYPERPARAMETERS[name].default) for name in objective.hparams}
