"""Pieces shared by the online methods (RSO, SPPO, SELM, active DPO).

Each round of an online method: sample responses from a policy (``sample_k``), judge them,
build a ``RoundData`` of sequence groups + per-example extras, precompute the (frozen for the
round) reference log-probs, and run the common train step over shuffled batches of it
(``train_round``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpref.batches import bucket_length, default_buckets, pad_sequences
from jaxpref.checkpointing import Checkpointer
from jaxpref.compiler_options import train_compiler_options
from jaxpref.components import make_optimizer
from jaxpref.evaluation import sample_responses
from jaxpref.host_memory import CompileAhead
from jaxpref.loop import LoopStats, run_steps
from jaxpref.objectives import LossHParams, Objective, Sequences
from jaxpref.train_state import create_train_state
from jaxpref.train_step import make_train_step, reference_logps

log = logging.getLogger("jaxpref")

TokenLists = Sequence[Sequence[int]]


@dataclasses.dataclass
class RoundData:
    """A round's training set: ``groups[name]`` is ``Sequences`` of ``[N, T]`` numpy arrays,
    ``extras[name]`` a ``[N]`` array."""

    groups: dict[str, Sequences]
    extras: dict[str, np.ndarray]

    @property
    def size(self) -> int:
        return int(next(iter(self.groups.values())).ids.shape[0])


def build_round_data(prompts: TokenLists, responses: dict[str, TokenLists], *, pad_id: int,
                     extras: dict[str, np.ndarray] | None = None) -> RoundData:
    """Pads ``prompt + responses[name]`` rows of every group to one shared bucketed length."""
    longest = max(len(p) + len(r) for rs in responses.values() for p, r in zip(prompts, rs))
    length = bucket_length(longest, default_buckets(max(longest, 16)))
    groups = {name: Sequences(*pad_sequences(prompts, rs, length=length, pad_id=pad_id))
              for name, rs in responses.items()}
    return RoundData(groups, {k: np.asarray(v) for k, v in (extras or {}).items()})


def sample_k(model, params, prompts: TokenLists, k: int, rng, *, pad_id: int, eos_id: int, sampling) -> tuple[
        list[list[list[int]]], np.ndarray]:
    """``k`` sampled responses per prompt: ``(responses[n][k], model_logps[n, k])``.

    ``sampling`` has ``max_new_tokens, batch_size, temperature, top_k, top_p``.
    """
    flat = [p for p in prompts for _ in range(k)]
    responses, logps = sample_responses(
        model, params, flat, rng, eos_id=eos_id, pad_id=pad_id, max_new_tokens=sampling.max_new_tokens,
        batch_size=sampling.batch_size, temperature=sampling.temperature, top_k=sampling.top_k,
        top_p=sampling.top_p,
    )
    grouped = [responses[i * k : (i + 1) * k] for i in range(len(prompts))]
    return grouped, logps.reshape(len(prompts), k)


def add_reference_logps(reference_fn, ref_params, data: RoundData, names: Sequence[str], *,
                        batch_size: int) -> RoundData:
    """Adds ``ref_<name>`` extras: reference log-probs of every row of every group (one pass).

    ``reference_fn(params, groups)``: a jitted ``reference_logps`` over ``names``
    (``Trainer.reference_pass``).
    """
    out = {n: [] for n in names}
    n_rows = data.size
    for start in range(0, n_rows, batch_size):
        idx = np.arange(start, start + batch_size) % n_rows  # wrap: one shape, one compile
        groups = {n: Sequences(*(a[idx] for a in data.groups[n])) for n in names}
        logps = reference_fn(ref_params, groups)
        for n in names:
            out[n].append(np.asarray(logps[n])[: min(batch_size, n_rows - start)])
    extras = {**data.extras, **{f"ref_{n}": np.concatenate(v) for n, v in out.items()}}
    return RoundData(data.groups, extras)


def round_batches(data: RoundData, *, batch_size: int, seed: int, first_step: int):
    """``batch_at(global_step)``: shuffled batches of ``data``, a pure function of the step."""
    if data.size < batch_size:
        raise ValueError(f"round has {data.size} examples < batch_size {batch_size}")
    per_epoch = data.size // batch_size

    def batch_at(step: int):
        epoch, pos = divmod(step - first_step, per_epoch)
        order = np.random.default_rng([seed, first_step, epoch]).permutation(data.size)
        idx = order[pos * batch_size : (pos + 1) * batch_size]
        groups = {n: Sequences(*(a[idx] for a in g)) for n, g in data.groups.items()}
        return groups, {k: v[idx] for k, v in data.extras.items()}

    return batch_at


@dataclasses.dataclass
class Trainer:
    """Trains a policy on ``RoundData`` with a given objective; one per job."""

    model: Any
    cfg: Any
    logger: Any
    hparams: LossHParams
    _steps: dict = dataclasses.field(default_factory=dict, init=False, repr=False)
    _reference_fns: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def round_step(self, objective: Objective, steps: int) -> tuple[optax.GradientTransformation, Any]:
        """``(tx, jitted step)`` for a round of ``steps`` steps, built once per objective and round
        length: rounds of equal length (SPPO iterations, SELM rounds) reuse one compiled step
        instead of recompiling it (the optimizer's schedule length is baked into the step)."""
        key = (objective, steps)
        if key not in self._steps:
            tx = make_optimizer(self.cfg.optimizer, steps)
            step_fn = jax.jit(make_train_step(self.model, objective, self.hparams, tx), donate_argnums=0,
                              compiler_options=train_compiler_options(self.model.config.hidden_size))
            self._steps[key] = (tx, CompileAhead(step_fn))  # keeps its executables across rounds
        return self._steps[key]

    def reference_pass(self, names: tuple[str, ...]):
        """The jitted reference pass over ``names``, compiled once per job, not per round."""
        if names not in self._reference_fns:
            self._reference_fns[names] = jax.jit(lambda p, g: reference_logps(self.model, p, g, names))
        return self._reference_fns[names]

    def train_round(self, params, ref_params, data: RoundData, objective: Objective, *, steps: int,
                    first_step: int, seed: int, desc: str) -> tuple[Any, LoopStats]:
        """Fresh optimizer, frozen reference (precomputed log-probs); returns the new params."""
        if objective.needs_reference:
            names = tuple(objective.groups)
            data = add_reference_logps(self.reference_pass(names), ref_params, data, names,
                                       batch_size=self.cfg.batch_size)
        tx, step_fn = self.round_step(objective, steps)
        state = create_train_state(jax.tree.map(jnp.copy, params), tx, rng=jax.random.PRNGKey(seed),
                                   with_reference=False)
        state = state.replace(step=jnp.int32(first_step))
        batch_at = round_batches(data, batch_size=self.cfg.batch_size, seed=seed, first_step=first_step)
        state, stats = run_steps(step_fn, state, batch_at, start=first_step, stop=first_step + steps,
                                 logger=self.logger, log_every=self.cfg.log_every, desc=desc)
        return state.params, stats


def pick_best_worst(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``[n, k]`` scores: ``(best_idx, worst_idx, informative)``; rows whose scores
    are all equal are not informative."""
    best, worst = np.argmax(scores, axis=1), np.argmin(scores, axis=1)
    informative = scores.max(axis=1) > scores.min(axis=1)
    return best, worst, informative


class RoundCheckpoints:
    """Checkpoints at round ends: a pytree (policy, reference, ...) plus JSON metadata.

    A killed online job resumes at the round after the last completed one (rounds are the unit
    of work: their data are sampled from the round's starting policy).
    """

    def __init__(self, directory: str, *, keep: int = 2):
        self._ckpt = Checkpointer(directory, max_to_keep=keep)

    def resume(self, template) -> tuple[int, Any, dict]:
        """``(next_round, tree, meta)``; ``(0, template, {})`` when nothing was saved."""
        if self._ckpt.latest_step() is None:
            return 0, template, {}
        tree, meta = self._ckpt.restore(template)
        log.info("resuming after round %d", meta["round"])
        return int(meta["round"]) + 1, tree, meta

    def save(self, round_index: int, tree, meta: dict) -> None:
        self._ckpt.save(round_index + 1, tree, {**meta, "round": round_index})

    def close(self) -> None:
        self._ckpt.close()
