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

Names follow TRL's ``loss_type``s (``sigmoid`` is ``dpo``), and a comma-separated list combines
losses as TRL does (``get_objective("sigmoid,bco_pair,sft", "0.8,0.2,1.0")``: MPO; ``"sigmoid,sft"``:
RPO). Adding a loss: one function in ``jaxpref.losses``, one row in ``OBJECTIVES`` (and its
hyper-parameters in ``HYPERPARAMETERS``), one config in ``configs/``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
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

    default: float | bool | str
    help: str
    check: Check


HYPERPARAMETERS: dict[str, HParam] = {
    "beta": HParam(0.1, "KL strength (RSO's gamma; SPPO's eta = 1/beta; ORPO's lambda; SimPO's beta)", POSITIVE),
    "label_smoothing": HParam(0.0, "assumed label-noise rate: conservative DPO, robust, EXO (needs > 0), AOT, CPO, "
                              "SimPO", Check(float, low=0, high=0.5, high_open=True)),
    "delta": HParam(1.0, "SLiC calibration margin", POSITIVE),
    "sft_weight": HParam(0.0, "SLiC regulariser: weight of the chosen response's NLL", NON_NEGATIVE),
    "desirable_weight": HParam(1.0, "KTO lambda_D, weight of desirable examples", POSITIVE),
    "undesirable_weight": HParam(1.0, "KTO lambda_U, weight of undesirable examples", POSITIVE),
    "selm_alpha": HParam(0.001, "SELM optimism weight alpha", NON_NEGATIVE),
    "ipo_average": HParam(True, "IPO on per-token average log-ratios (False: sums)", FLAG),
    "f_divergence_type": HParam("reverse_kl", "f-DPO regulariser (TRL's f_divergence_type)",
                                Check(str, choices=losses.F_DIVERGENCES)),
    "f_alpha_divergence_coef": HParam(0.5, "alpha of f_divergence_type='alpha_divergence'", POSITIVE),
    "ld_alpha": HParam(1.0, "LD-DPO: weight of the response tokens beyond the shorter response's length "
                       "(1: plain DPO)", Check(float, low=0, high=1)),
    "use_weighting": HParam(False, "WPO: weight each pair by its responses' length-normalised probabilities", FLAG),
    "discopop_tau": HParam(0.05, "DiscoPOP temperature tau", POSITIVE),
    "simpo_gamma": HParam(0.5, "SimPO / AlphaPO target reward margin gamma", NON_NEGATIVE),
    "cpo_alpha": HParam(1.0, "CPO (and SimPO, AlphaPO, as in TRL's CPOTrainer) weight of the chosen NLL; "
                        "0 for pure SimPO", NON_NEGATIVE),
    "alphapo_alpha": HParam(0.25, "AlphaPO reward shape alpha (TRL CPOConfig.alpha; 0 is SimPO)",
                            Check(float)),
    "cpo_loss_type": HParam("sigmoid", "CPO's preference term", Check(str, choices=losses.CPO_TYPES)),
}

# Options of how a response is scored (the train step's forward), not of the loss formula: LD-DPO's
# token weights and WPO's pair weights. Every DPO-family row reads them, as in TRL's DPOTrainer.
SCORING_HPARAMS = ("ld_alpha", "use_weighting")
F_DIVERGENCE = ("f_divergence_type", "f_alpha_divergence_coef")

# Loss state carried in the train state (``TrainState.loss_state``) for every job, so its layout
# does not depend on the loss: BCO's running reward baseline (TRL's RunningMoments' initial count).
INITIAL_LOSS_STATE = {"bco_running_mean": 0.0, "bco_count": 1e-24}


# --- objectives -----------------------------------------------------------------------------


class LossInputs(NamedTuple):
    """What ``compute`` receives. Dicts map group name -> ``[B]`` float32.

    ``policy``: the trained model's scores (summed completion log-probs, or reward-model scores);
    ``reference``: the reference's (empty when the objective needs none); ``lengths``: counted
    completion tokens; ``extras``: per-example arrays of the batch; ``loss_state``: the train
    state's ``loss_state`` (float32 scalars, see ``INITIAL_LOSS_STATE``).
    """

    policy: Mapping[str, jax.Array]
    reference: Mapping[str, jax.Array]
    lengths: Mapping[str, jax.Array]
    extras: Mapping[str, jax.Array]
    loss_state: Mapping[str, jax.Array] = {}


class LossOutput(NamedTuple):
    """What ``compute`` returns.

    ``losses``: ``[B]`` per-example losses (the step takes their mean); ``chosen_rewards`` /
    ``rejected_rewards``: ``[B]`` logged rewards (no gradient); ``chosen_valid`` /
    ``rejected_valid``: ``[B]`` bool, which rows' rewards count in the logged means (None: all;
    KTO: its desirable / undesirable rows); ``metrics``: extra scalars to log;
    ``loss_state``: the updated loss state entries (None: unchanged).
    """

    losses: jax.Array
    chosen_rewards: jax.Array
    rejected_rewards: jax.Array
    chosen_valid: jax.Array | None = None
    rejected_valid: jax.Array | None = None
    metrics: Mapping[str, jax.Array] | None = None
    loss_state: Mapping[str, jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss and what it needs from the data and the models.

    Attributes:
      groups: sequence groups the batch must carry.
      needs_reference: whether reference log-probs are computed.
      compute: ``(LossInputs, **hparams) -> LossOutput`` (or ``(losses, chosen_r, rejected_r)``).
      hparams: the ``HYPERPARAMETERS`` it reads (passed to ``compute`` by keyword, except the
        ``SCORING_HPARAMS``, which the train step applies).
      extras: per-example arrays the batch must carry (e.g. SPPO win rates).
      model: ``"lm"`` (scores are log-probs) or ``"reward_model"`` (scalar scores).
      batch_statistic: the loss of a row depends on other rows of the batch (KTO's reference
        point, AOT's sorting, BCO's baseline): under gradient accumulation it is per micro-batch.
      components: for a combined loss, its ``(name, weight)`` parts.
      prompt_nll: the loss reads ``policy["full_chosen"]`` (and ``lengths["full_chosen"]``): the
        chosen rows' log-prob over prompt and response (ORPO's NLL term).
    """

    groups: tuple[str, ...]
    needs_reference: bool
    compute: Callable[..., LossOutput | tuple]
    hparams: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    model: str = "lm"
    batch_statistic: bool = False
    components: tuple[tuple[str, float], ...] = ()
    prompt_nll: bool = False

    @property
    def paired(self) -> bool:
        return "chosen" in self.groups

    @property
    def per_example_reference(self) -> bool:
        """Whether each row's reference log-probs depend on that row alone (so they can be
        computed once per dataset): not for KTO's ``kl`` rows, built from the batch."""
        return "kl" not in self.groups

    def __call__(self, inputs: LossInputs, **hparams) -> LossOutput:
        """``compute`` with its output as a ``LossOutput``."""
        out = self.compute(inputs, **{k: v for k, v in hparams.items() if k not in SCORING_HPARAMS})
        return out if isinstance(out, LossOutput) else LossOutput(*out)


PAIR_WEIGHT = "pair_weight"  # the batch extra that marks a token-budget batch's filler slots (0)


def pair_mean(x: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean of ``[B]`` values over the real pairs: ``weight`` ``[B]`` (1 real, 0 filler) or None (all)."""
    if weight is None:
        return jnp.mean(x)
    return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _pair(x: LossInputs):
    return x.policy["chosen"], x.policy["rejected"], x.reference["chosen"], x.reference["rejected"]


def _pair_lengths(x: LossInputs):
    return {"chosen_lengths": x.lengths["chosen"], "rejected_lengths": x.lengths["rejected"]}


def _dpo(x, *, beta, label_smoothing, **f):
    return losses.dpo_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing, **f)


def _sigmoid_norm(x, *, beta, **f):
    return losses.sigmoid_norm_loss(*_pair(x), beta=beta, **_pair_lengths(x), **f)


def _ipo(x, *, beta, ipo_average, **f):
    return losses.ipo_loss(*_pair(x), beta=beta, **(_pair_lengths(x) if ipo_average else {}), **f)


def _hinge(x, *, beta, **f):
    return losses.hinge_loss(*_pair(x), beta=beta, **f)


def _exo_pair(x, *, beta, label_smoothing, **f):
    return losses.exo_pair_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing, **f)


def _nca_pair(x, *, beta):
    return losses.nca_pair_loss(*_pair(x), beta=beta)


def _robust(x, *, beta, label_smoothing, **f):
    return losses.robust_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing, **f)


def _bco_pair(x, *, beta):
    """BCO with its running baseline: the batch's rewards update the running mean first, and the
    updated mean is the baseline ``delta`` (TRL <= 0.11's order)."""
    pc, pr, rc, rr = _pair(x)
    mean, count = losses.bco_running_mean(x.loss_state["bco_running_mean"], x.loss_state["bco_count"],
                                          beta * (pc - rc), beta * (pr - rr))
    out = losses.bco_pair_loss(pc, pr, rc, rr, beta=beta, delta=mean)
    return LossOutput(*out, metrics={"bco_baseline": mean},
                      loss_state={"bco_running_mean": mean, "bco_count": count})


def _aot(x, *, beta, label_smoothing):
    return losses.aot_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing)


def _aot_unpaired(x, *, beta, label_smoothing):
    return losses.aot_unpaired_loss(*_pair(x), beta=beta, label_smoothing=label_smoothing)


def _apo_zero(x, *, beta):
    return losses.apo_zero_loss(*_pair(x), beta=beta)


def _apo_down(x, *, beta):
    return losses.apo_down_loss(*_pair(x), beta=beta)


def _discopop(x, *, beta, discopop_tau, **f):
    return losses.discopop_loss(*_pair(x), beta=beta, discopop_tau=discopop_tau, **f)


def _slic(x, *, delta, sft_weight):
    return losses.slic_loss(x.policy["chosen"], x.policy["rejected"], delta=delta, sft_weight=sft_weight)


def _kto_pair(x, *, beta):
    return losses.kto_pair_loss(*_pair(x), beta=beta)


def _sppo(x, *, beta):
    return losses.sppo_loss(*_pair(x), x.extras["chosen_probs"], x.extras["rejected_probs"], beta=beta)


def _sppo_single(x, *, beta):
    return losses.sppo_single_loss(*_pair(x), x.extras["pair_probs"], beta=beta)


def _sppo_hard(x, *, beta):
    return losses.sppo_hard_loss(*_pair(x), beta=beta)


def _selm(x, *, beta, selm_alpha):
    return losses.selm_loss(*_pair(x), x.policy["sample"], x.reference["sample"], beta=beta, alpha=selm_alpha)


def _unpaired_output(per_example, rewards, desirable, metrics):
    """KTO-style output: desirable rows' rewards are the "chosen" ones, undesirable the "rejected"
    ones, and only those rows count in the logged means (as TRL's KTOTrainer logs them)."""
    desirable = jnp.asarray(desirable, bool)
    return LossOutput(per_example, rewards, rewards, chosen_valid=desirable, rejected_valid=~desirable,
                      metrics=metrics)


def _kto(x, *, beta, desirable_weight, undesirable_weight):
    kl = losses.kto_kl_estimate(x.policy["kl"], x.reference["kl"])
    per_example, rewards = losses.kto_loss(
        x.policy["completion"], x.reference["completion"], x.extras["desirable"], beta=beta, kl=kl,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    return _unpaired_output(per_example, rewards, x.extras["desirable"], {"kl": kl})


def _apo_zero_unpaired(x, *, beta, desirable_weight, undesirable_weight):
    per_example, rewards = losses.apo_zero_unpaired_loss(
        x.policy["completion"], x.reference["completion"], x.extras["desirable"], beta=beta,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    return _unpaired_output(per_example, rewards, x.extras["desirable"], {})


def _cpo(x, *, beta, label_smoothing, cpo_alpha, cpo_loss_type):
    return losses.cpo_loss(x.policy["chosen"], x.policy["rejected"], beta=beta, **_pair_lengths(x),
                           loss_type=cpo_loss_type, label_smoothing=label_smoothing, cpo_alpha=cpo_alpha)


def _simpo(x, *, beta, label_smoothing, cpo_alpha, simpo_gamma):
    return losses.simpo_loss(x.policy["chosen"], x.policy["rejected"], beta=beta, **_pair_lengths(x),
                             simpo_gamma=simpo_gamma, label_smoothing=label_smoothing, cpo_alpha=cpo_alpha)


def _alphapo(x, *, beta, label_smoothing, cpo_alpha, simpo_gamma, alphapo_alpha):
    return losses.alphapo_loss(x.policy["chosen"], x.policy["rejected"], beta=beta, **_pair_lengths(x),
                               alpha=alphapo_alpha, simpo_gamma=simpo_gamma, label_smoothing=label_smoothing,
                               cpo_alpha=cpo_alpha)


def _orpo(x, *, beta):
    # ORPO's NLL runs over the chosen row's prompt and response (TRL's ORPOTrainer and the ORPO code).
    nll = losses.sft_loss(x.policy["full_chosen"], x.lengths["full_chosen"])
    return losses.orpo_loss(x.policy["chosen"], x.policy["rejected"], beta=beta, **_pair_lengths(x), nll=nll)


def _sft(x):
    logps = x.policy["completion"]
    per_example = losses.sft_loss(logps, x.lengths["completion"])
    return per_example, jax.lax.stop_gradient(logps), jnp.zeros_like(logps)


def _sft_chosen(x):
    """TRL DPO's ``sft`` loss type: the token-mean NLL of the chosen responses."""
    logps = x.policy["chosen"]
    return (losses.sft_loss(logps, x.lengths["chosen"]), jax.lax.stop_gradient(logps),
            jax.lax.stop_gradient(x.policy["rejected"]))


def _bradley_terry(x):
    s_w, s_l = x.policy["chosen"], x.policy["rejected"]
    return losses.bradley_terry_loss(s_w, s_l), jax.lax.stop_gradient(s_w), jax.lax.stop_gradient(s_l)


PAIR = ("chosen", "rejected")
UNPAIRED = ("completion", "kl")


def _ref_pair(compute, *hparams, f_divergence: bool = False, **kw) -> Objective:
    """A reference-based pair loss of TRL's DPO family: reads the scoring options (and the
    f-divergence ones where TRL allows them)."""
    return Objective(PAIR, True, compute, (*hparams, *(F_DIVERGENCE if f_divergence else ()), *SCORING_HPARAMS), **kw)


def _free_pair(compute, *hparams) -> Objective:
    """A reference-free pair loss (CPO, SimPO, AlphaPO, ORPO, SLiC)."""
    return Objective(PAIR, False, compute, hparams)


_CPO = ("beta", "label_smoothing", "cpo_alpha")

OBJECTIVES: dict[str, Objective] = {
    # TRL DPOTrainer loss types (``sigmoid`` = ``dpo`` = RSO sigmoid-norm; ``hinge`` = RSO hinge-norm)
    "dpo": _ref_pair(_dpo, "beta", "label_smoothing", f_divergence=True),
    "sigmoid_norm": _ref_pair(_sigmoid_norm, "beta", f_divergence=True),
    "ipo": _ref_pair(_ipo, "beta", "ipo_average", f_divergence=True),
    "hinge": _ref_pair(_hinge, "beta", f_divergence=True),
    "exo_pair": _ref_pair(_exo_pair, "beta", "label_smoothing", f_divergence=True),
    "nca_pair": _ref_pair(_nca_pair, "beta"),
    "robust": _ref_pair(_robust, "beta", "label_smoothing", f_divergence=True),
    "bco_pair": _ref_pair(_bco_pair, "beta", batch_statistic=True),
    "sppo_hard": _ref_pair(_sppo_hard, "beta"),
    "aot": _ref_pair(_aot, "beta", "label_smoothing", batch_statistic=True),
    "aot_unpaired": _ref_pair(_aot_unpaired, "beta", "label_smoothing", batch_statistic=True),
    "apo_zero": _ref_pair(_apo_zero, "beta"),
    "apo_down": _ref_pair(_apo_down, "beta"),
    "discopop": _ref_pair(_discopop, "beta", "discopop_tau", f_divergence=True),
    "kto_pair": _ref_pair(_kto_pair, "beta", batch_statistic=True),
    # self-play and online
    "sppo": Objective(PAIR, True, _sppo, ("beta",), extras=("chosen_probs", "rejected_probs")),
    "sppo_single": Objective(PAIR, True, _sppo_single, ("beta",), extras=("pair_probs",)),
    "selm": Objective(PAIR + ("sample",), True, _selm, ("beta", "selm_alpha")),
    # unpaired (TRL KTOTrainer loss types)
    "kto": Objective(UNPAIRED, True, _kto, ("beta", "desirable_weight", "undesirable_weight"),
                     extras=("desirable",), batch_statistic=True),
    "apo_zero_unpaired": Objective(("completion",), True, _apo_zero_unpaired,
                                   ("beta", "desirable_weight", "undesirable_weight"), extras=("desirable",)),
    # reference-free (TRL CPOTrainer / ORPOTrainer)
    "cpo": _free_pair(_cpo, *_CPO, "cpo_loss_type"),
    "simpo": _free_pair(_simpo, *_CPO, "simpo_gamma"),
    "alphapo": _free_pair(_alphapo, *_CPO, "simpo_gamma", "alphapo_alpha"),
    "orpo": Objective(PAIR, False, _orpo, ("beta",), prompt_nll=True),
    "slic": _free_pair(_slic, "delta", "sft_weight"),
    # likelihood and reward models
    "sft": Objective(("completion",), False, _sft),  # token-mean NLL of the completions
    "bradley_terry": Objective(PAIR, False, _bradley_terry, model="reward_model"),  # reward-model training
}

# TRL's names for rows that jaxpref names after the paper.
ALIASES = {"sigmoid": "dpo"}
# In a combination with pair losses, ``sft`` is TRL DPO's ``sft``: the NLL of the chosen responses.
_SFT_ON_CHOSEN = Objective(PAIR, False, _sft_chosen)


class LossError(ValueError):
    """A loss spec that cannot be built: ``key`` is the config key at fault (``loss`` or
    ``loss_weights``), ``problem`` says why; the message is ``config.<key>: <problem>``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config.{key}: {problem}")
        self.key, self.problem = key, problem


def loss_names() -> list[str]:
    """Every name ``config.loss`` accepts (alone or in a comma-separated combination)."""
    return sorted(set(OBJECTIVES) | set(ALIASES))


def split_loss(name: str) -> list[str]:
    """``"sigmoid, sft"`` -> ``["sigmoid", "sft"]``."""
    return [part.strip() for part in str(name).split(",") if part.strip()]


def parse_weights(weights: str | Sequence[float] | None, count: int) -> tuple[float, ...]:
    """``config.loss_weights`` (``"0.8,0.2,1.0"``, a sequence, or empty: all 1) as ``count`` floats."""
    if weights is None or (isinstance(weights, str) and not weights.strip()):
        return (1.0,) * count
    parts = [w.strip() for w in weights.split(",")] if isinstance(weights, str) else list(weights)
    try:
        values = tuple(float(w) for w in parts)
    except ValueError as exc:
        raise LossError("loss_weights", f"not a comma-separated list of numbers: {weights!r}") from exc
    if len(values) != count:
        raise LossError("loss_weights", f"{len(values)} weights for {count} losses ({weights!r})")
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise LossError("loss_weights", f"weights must be finite and >= 0, got {weights!r}")
    return values


def _row(name: str) -> Objective:
    key = ALIASES.get(name, name)
    if key not in OBJECTIVES:
        raise LossError("loss", f"unknown loss {name!r}; known: {loss_names()}")
    return OBJECTIVES[key]


@functools.cache
def _combined(parts: tuple[str, ...], weights: tuple[float, ...]) -> Objective:
    rows = [_row(p) for p in parts]
    paired = any(r.paired for r in rows)
    rows = [_SFT_ON_CHOSEN if p == "sft" and paired else r for p, r in zip(parts, rows)]
    models = {r.model for r in rows}
    if len(models) > 1 or "reward_model" in models:
        raise LossError("loss", f"{','.join(parts)!r} mixes reward-model and language-model losses")
    kinds = {r.paired for r in rows}
    if len(kinds) > 1:
        raise LossError("loss", f"{','.join(parts)!r} mixes paired and unpaired (KTO) losses")
    groups = tuple(dict.fromkeys(g for r in rows for g in r.groups))
    hparams = tuple(dict.fromkeys(h for r in rows for h in r.hparams))
    extras = tuple(dict.fromkeys(e for r in rows for e in r.extras))
    # Logged rewards come from the first loss with a reference (TRL logs beta * log-ratios whatever the mix).
    lead = next((i for i, r in enumerate(rows) if r.needs_reference), 0)

    def compute(x: LossInputs, **hp) -> LossOutput:
        total, metrics, state, outs = 0.0, {}, {}, []
        for part, row, w in zip(parts, rows, weights):
            out = row(x, **{h: hp[h] for h in row.hparams if h in hp})
            outs.append(out)
            total = total + w * out.losses
            metrics[f"loss_{part}"] = pair_mean(out.losses, x.extras.get(PAIR_WEIGHT))
            metrics.update(out.metrics or {})
            state.update(out.loss_state or {})
        return outs[lead]._replace(losses=total, metrics=metrics, loss_state=state or None)

    return Objective(groups, any(r.needs_reference for r in rows), compute, hparams, extras, rows[0].model,
                     any(r.batch_statistic for r in rows), tuple(zip(parts, weights)),
                     any(r.prompt_nll for r in rows))


def get_objective(name: str, weights: str | Sequence[float] | None = None) -> Objective:
    """Looks up a loss by name (a row of ``OBJECTIVES``, a TRL alias such as ``sigmoid``, or a
    comma-separated combination weighted by ``weights``); unknown names raise with the list of
    known ones. A single name with no weights is its row itself."""
    parts = split_loss(name)
    if not parts:
        raise LossError("loss", f"empty loss name {name!r}; known: {loss_names()}")
    values = parse_weights(weights, len(parts))
    if len(parts) == 1 and values == (1.0,):
        return _row(parts[0])
    return _combined(tuple(parts), values)


def objective_of(cfg: Mapping[str, Any], name: str | None = None) -> Objective:
    """The objective a job trains ``name`` with (default ``cfg.loss``): ``cfg.loss`` is weighted by
    ``cfg.loss_weights``; any other name (a job's fixed loss, e.g. ``sft``) is unweighted."""
    job_loss = cfg.get("loss")
    name = job_loss if name is None else name
    return get_objective(name, cfg.get("loss_weights", "") if name == job_loss else None)


def hparams_of(cfg: Mapping[str, Any], objective: Objective) -> dict[str, Any]:
    """The config values of the hyper-parameters ``objective`` reads."""
    return {name: cfg[name] for name in objective.hparams}


def default_hparams(objective: Objective, **overrides: float | bool) -> dict[str, Any]:
    """The hyper-parameters ``objective`` reads at their declared defaults, with ``overrides``
    (names it does not read are ignored, so one set of overrides serves several objectives)."""
    return {name: overrides.get(name, HYPERPARAMETERS[name].default) for name in objective.hparams}
