"""Methods produce rounds; they never own a trainer.

Each module holds one job kind (``config.job``) as a ``Method``: which losses it trains with
(``objectives``), its own config checks (``validate``), ``make_round(ctx, index)`` (sample,
judge, pair, acquire -> a ``train.rounds.Round``, or None when done) and ``summarize`` (its
fields of ``summary.json``). ``METHODS`` maps ``config.job`` to them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

from jaxpref.config import ConfigError, require
from jaxpref.objectives import OBJECTIVES, LossError, objective_of

log = logging.getLogger("jaxpref")


@dataclasses.dataclass(frozen=True)
class Method:
    """A job kind.

    Attributes:
      name: its ``config.job``.
      make_round: ``(ctx, index) -> Round | None``.
      objectives: ``cfg -> losses it trains with`` (the rows of ``OBJECTIVES``).
      validate: ``cfg -> None``; raises ``ConfigError`` naming the key.
      summarize: ``(ctx, JobResult) -> dict`` of extra ``summary.json`` fields.
      evaluate_rounds: a quick held-out evaluation after every round (learning curves).
      evaluate_policy: the final held-out evaluation against the starting policy.
      random_init: start from a randomly initialised tiny model instead of its SFT policy.
      make_model: ``policy -> (model, params)`` of what is trained (default: the policy itself).
      uses_judge: the job's rounds are judged (``config.judge``).
    """

    name: str
    make_round: Callable[[Any, int], Any]
    objectives: Callable[[Any], tuple[str, ...]]
    validate: Callable[[Any], None]
    summarize: Callable[[Any, Any], dict]
    evaluate_rounds: bool = False
    evaluate_policy: bool = True
    random_init: bool = False
    make_model: Callable[[Any], tuple[Any, Any]] | None = None
    uses_judge: bool = False


def check_loss(cfg, *, groups: tuple[str, ...], extras: tuple[str, ...] = (), model: str = "lm",
               key: str = "loss", name: str | None = None) -> None:
    """Refuses a loss whose data the job cannot provide: its groups must be among ``groups``, its
    extras among ``extras``, its model kind ``model``."""
    loss = cfg[key] if name is None else name
    try:
        objective = objective_of(cfg, loss)
    except LossError as exc:
        raise ConfigError(f"config.{key if exc.key == 'loss' else exc.key}: {exc.problem}") from None
    provides = set(groups)
    ok = (set(objective.groups) <= provides and set(objective.extras) <= set(extras) | {"desirable"}
          and objective.model == model)
    if not ok:
        usable = sorted(n for n, o in OBJECTIVES.items() if set(o.groups) <= provides
                        and set(o.extras) <= set(extras) | {"desirable"} and o.model == model)
        raise ConfigError(f"config.{key}: the {cfg.job} job cannot train with {loss!r}; it can use {usable}")


TRUNCATION_WARNING = 0.2  # warn when more than this share of prompts or responses was cut
EPOCHS_WARNING = 4.0  # warn when a run makes more passes than this over a dataset


def load_own_data(cfg, tokenizer, kind: str, *, source: str | None = None, split: str | None = None,
                  key: str = "data.source"):
    """``config.data.source`` (or ``source``) tokenized as ``kind`` (``paired``, ``unpaired`` or
    ``sft``) with the config's length limits and bad-row policy: ``(examples, report dict)``.

    A source with no usable row raises ``ConfigError`` naming ``key``; a large share of truncated
    prompts or responses is warned about (``data.max_length`` / ``data.max_prompt_length``).
    """
    from jaxpref.data import load_and_encode

    source = cfg.data.source if source is None else source
    examples, report = load_and_encode(source, tokenizer, kind=kind, max_length=cfg.data.max_length,
                                       max_prompt_length=cfg.data.max_prompt_length, on_bad_row=cfg.data.on_bad_row,
                                       split=split or cfg.data.split)
    log.info("data: %s", report.summary())
    if not examples:
        why = "it has no rows" if report.total == 0 else f"every row was dropped ({report.summary()})"
        raise ConfigError(f"config.{key}: {source!r} gives no training examples: {why}")
    for part, count in (("prompts", report.truncated_prompt), ("responses", report.truncated_response)):
        if count > TRUNCATION_WARNING * report.kept:
            log.warning("data: %d of %d %s were truncated (%.0f%%): raise config.data.max_length (%d) / "
                        "config.data.max_prompt_length (%d) to keep more of them", count, report.kept, part,
                        100 * count / report.kept, cfg.data.max_length, cfg.data.max_prompt_length)
    return list(examples), report.to_dict()


def training_steps(cfg, num_examples: int, *, epoch_steps: int | None = None) -> int:
    """Steps of a round over ``num_examples`` own examples: ``ceil(num_epochs * N / batch_size)``
    (``ceil(num_epochs * epoch_steps)`` when given: a token budget's batches per epoch) when
    ``config.num_epochs > 0``, else ``config.num_steps``; warns when that is many epochs."""
    require(num_examples >= cfg.batch_size, "batch_size",
            f"{cfg.batch_size} is larger than the {num_examples} training examples; lower it")
    epoch_steps = epoch_steps or num_examples / cfg.batch_size
    steps = math.ceil(cfg.num_epochs * epoch_steps) if cfg.get("num_epochs", 0) > 0 else cfg.num_steps
    epochs = steps / epoch_steps
    if epochs > EPOCHS_WARNING:
        log.warning("training %d steps x batch %d = %.1f epochs of %d examples: set config.num_epochs "
                    "(e.g. 1-3) instead of config.num_steps", steps, cfg.batch_size, epochs, num_examples)
    return steps


def _registry() -> dict[str, Method]:
    from jaxpref.methods import active, offline, reward_model, rso, selm, sft, sppo

    return {m.name: m for m in (offline.METHOD, sft.METHOD, reward_model.METHOD, rso.METHOD, sppo.METHOD,
                                selm.METHOD, active.METHOD)}


def get_method(name: str) -> Method:
    """The method of ``config.job``; unknown names raise naming the key."""
    methods = _registry()
    require(name in methods, "job", f"unknown job {name!r}; known: {sorted(methods)}")
    return methods[name]
