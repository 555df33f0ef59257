"""Rounds: every job is a sequence of them, each plain data, and one ``Trainer`` runs them all.

A ``Round`` says what to train on (a ``TrainingSet``), with which objective, for how many
steps, from which params (``init``: where the previous round ended, or the starting policy),
and against which reference (``Reference``). The offline job is one round; SFT and reward
models are one round of the ``sft`` / ``bradley_terry`` objectives; SPPO and SELM are one
round per iteration with the reference reset to the round's starting policy; active DPO is one
round per acquisition, re-trained from the starting policy.

``Trainer.train(round, params)`` runs a round on the job's mesh: one compiled step per
(objective, reference layout) for the whole job (``make_optimizer``'s schedule length lives in
the optimizer state, so rounds of any length share it), one loop (``run_steps``: progress,
metrics, non-finite handling, preemption), one reference mechanism (``train.state``), and one
checkpoint layout (the ``TrainState`` plus JSON metadata naming the round).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.config import ConfigError, as_record, require
from jaxpref.data.batches import packed_length
from jaxpref.data.stream import BatchStream, TokenBudgetError
from jaxpref.data.training_set import TrainingSet
from jaxpref.infer import reference_cache
from jaxpref.infer.scoring import reference_logps_of
from jaxpref.models.llama import head_block_size
from jaxpref.objectives import PAIR, hparams_of, objective_of
from jaxpref.runtime import sharding
from jaxpref.runtime.checkpointing import Checkpointer, CheckpointError
from jaxpref.runtime.compiler_options import train_compiler_options
from jaxpref.runtime.host_memory import DEFAULT_MAX_EXECUTABLES, CompileAhead
from jaxpref.train.loop import LoopStats, run_steps
from jaxpref.train.optim import extend_schedule, make_optimizer, peak_learning_rate
from jaxpref.train.state import (
    TrainState,
    create_train_state,
    initial_loss_state,
    state_factory,
    train_state_shardings,
)
from jaxpref.train.step import PLAIN, Scoring, batch_groups, make_train_step, scoring_of

log = logging.getLogger("jaxpref")

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Reference:
    """The reference policy a round's loss compares against.

    Attributes:
      start: ``"sft"`` (the job's starting policy) or ``"round_start"`` (the policy the round
        starts from: SPPO / SELM iterations, i.e. a hard reference update once per round).
      every, alpha: trust-region updates inside the round, every ``every`` steps (0: frozen).
      precompute: when the reference is frozen for the round (and the objective's groups are
        per-example), compute its log-probs once before the round instead of in every step; the
        train state then carries no reference.
    """

    start: str = "sft"
    every: int = 0
    alpha: float = 1.0
    precompute: bool = True

    def __post_init__(self):
        if self.start not in ("sft", "round_start"):
            raise ValueError(f"Reference.start must be 'sft' or 'round_start', got {self.start!r}")


@dataclasses.dataclass
class Round:
    """One unit of training.

    Attributes:
      name: progress and log label ("sppo it2").
      data: the training set (examples + per-example extras).
      objective: a row of ``objectives.OBJECTIVES``.
      steps: optimizer steps of the round (a fresh optimizer state each round).
      seed: shuffling seed of the round's batches.
      init: ``"continue"`` (params where the previous round ended) or ``"sft"`` (the starting policy).
      reference: the reference rule.
      sampled: the data came from sampling (saved with the checkpoints, so that a round
        interrupted midway resumes on the same data).
      shapes: ``(max prompt tokens, max response tokens)`` fixed for the job (online rounds): every
        batch is padded to their sum (and packed pairs to fixed sizes), so every round's step has
        the same shapes; None: bucketed per batch.
      info: JSON-able facts about the round for its history record.
      eval_index: which evaluation draw the round's quick evaluation uses (default: the round's
        index); rounds meant to be compared on the same held-out samples share it.
      order: how batches are drawn (``data.stream.BatchStream``): shuffled ``"epochs"`` or
        ``"replacement"``.
      sampler_logps: ``{"ref_<group>": [N] float32}``, each example's log-probs (temperature 1,
        summed over its completion tokens) under the params that sampled it, as the sampler
        computed them. With a ``Reference("round_start")`` the sampling params are the
        reference, so a precomputed reference reads these instead of running a reference pass
        (for the plain sequence scoring; ``Trainer.train``).
    """

    name: str
    data: TrainingSet
    objective: str
    steps: int
    seed: int
    init: str = "continue"
    reference: Reference = Reference()
    sampled: bool = False
    shapes: tuple[int, int] | None = None
    info: dict = dataclasses.field(default_factory=dict)
    eval_index: int | None = None
    order: str = "epochs"
    sampler_logps: dict[str, np.ndarray] | None = None


@dataclasses.dataclass
class RoundResult:
    params: PyTree
    stats: LoopStats
    data: TrainingSet  # with the reference log-probs it was trained on, if precomputed


class Trainer:
    """Trains rounds of one job on a mesh; built once per job.

    Args:
      model: the policy (or reward model) module.
      start_params: the job's starting params (the SFT policy), on the mesh.
      cfg: the job config (``optimizer``, ``batch_size``, ``log_every``, ``checkpoint_every``,
        ``on_nonfinite``, ``share_prompt``, ``seed`` and the loss hyper-parameters).
      mesh, rules: the device mesh and the logical-axis rules.
      pad_id: padding token.
      buckets: padded lengths of bucketed batches.
      logger: a ``MetricsLogger`` (or None).
      checkpointer: where rounds are checkpointed (or None: no checkpoints).
      round_dir: folder for the sampled rounds' data (``<workdir>/rounds``), if checkpointing.
      lora: ``(LoraSpec, adapters, fresh)`` to train LoRA adapters on the frozen ``start_params``
        (``policy.lora_start``; ``fresh``: the adapters are a new init, i.e. the identity), or None.

    With LoRA the state's params (and reference) are adapters only, the step reads the base as
    an argument, a round's ``params`` are ``models.lora.combine(base, adapters)``, and the
    starting policy (the reference of a frozen or precomputed reference) is the base with the
    starting adapters: "adapters off" when they are fresh, so no second copy of the weights.
    """

    def __init__(self, *, model, start_params, cfg, mesh, rules, pad_id: int, buckets, logger=None,
                 checkpointer: Checkpointer | None = None, round_dir: str | None = None, lora=None):
        self.model, self.cfg, self.mesh, self.rules = model, cfg, mesh, rules
        self.pad_id, self.buckets = pad_id, tuple(buckets)
        self.logger, self.checkpointer, self.round_dir = logger, checkpointer, round_dir
        self.tx = make_optimizer(cfg.optimizer, lora=lora is not None)
        log.info("optimizer %s, peak learning rate %g%s", cfg.optimizer.name,
                 peak_learning_rate(cfg.optimizer, lora=lora is not None), " (LoRA)" if lora is not None else "")
        # The job's config as JSON data, recorded in every checkpoint (resume refuses a changed config).
        self.config_record = as_record(cfg) if hasattr(cfg, "to_json_best_effort") else None
        self.param_shardings = sharding.param_shardings(start_params, mesh, rules)
        self.start_params = jax.device_put(start_params, self.param_shardings)
        self.lora = None if lora is None else lora[0]
        self.trainable_start = self.start_params  # what the optimizer trains from: params or adapters
        if lora is not None:
            from jaxpref.models.lora import lora_model

            spec, adapters, self.fresh_adapters = lora
            self.trainable_start = jax.device_put(adapters, sharding.param_shardings(adapters, mesh, rules))
            self.lora_models = (lora_model(model, spec), lora_model(model, spec, dropout=0.0))
        self._layouts: dict[bool, tuple[TrainState, Any]] = {}
        self._steps: dict[tuple, CompileAhead] = {}
        self.reference_cache: dict | None = None  # {"path", "hit"} of the last cached reference pass

    # --- compiled pieces, built once per job -----------------------------------------------

    def layout(self, with_reference: bool) -> tuple[TrainState, Any]:
        """``(state shardings, train.state.state_factory)`` for a state with or without a reference."""
        if with_reference not in self._layouts:
            abstract = jax.eval_shape(
                lambda p: create_train_state(p, self.tx, rng=jax.random.PRNGKey(0), with_reference=with_reference),
                self.trainable_start)
            shardings = train_state_shardings(abstract, self.tx, self.mesh, self.rules)
            self._layouts[with_reference] = (shardings, state_factory(self.tx, shardings,
                                                                      with_reference=with_reference))
        return self._layouts[with_reference]

    def step_fn(self, objective_name: str, with_reference: bool, every: int, alpha: float,
                reference_arg: bool = False) -> CompileAhead:
        """The jitted, sharded train step for an objective and reference layout (one per job):
        the reference in the state (``with_reference``), a read-only argument (``reference_arg``,
        see ``frozen_args``) or neither (precomputed)."""
        key = (objective_name, with_reference, every, alpha, reference_arg)
        if key not in self._steps:
            objective = objective_of(self.cfg, objective_name)
            shardings, _ = self.layout(with_reference)
            lora = self.lora is not None
            step = make_train_step(self.model, objective, hparams_of(self.cfg, objective), self.tx,
                                   ref_update_every=every, ref_update_alpha=alpha,
                                   grad_accum_steps=self.cfg.get("grad_accum_steps", 1),
                                   lora_models=self.lora_models if lora else None,
                                   lora_dropout=lora and self.lora.dropout > 0)
            options = train_compiler_options(self.model.config.hidden_size)
            frozen = {**({"base": self.param_shardings} if lora else {}),
                      **({"reference": shardings.params} if reference_arg else {})}
            self._steps[key] = CompileAhead(sharding.jit_train_step(step, shardings, self.mesh, options,
                                                                    frozen_shardings=frozen or None),
                                            max_executables=self.cfg.get("max_step_executables",
                                                                         DEFAULT_MAX_EXECUTABLES))
        return self._steps[key]

    def frozen_args(self, plan: dict, ref_trainable) -> dict:
        """The step's read-only params (``train.step.make_train_step``): LoRA's base, and a frozen
        reference that is the job's starting policy (``ref_trainable``: the start params, or with
        LoRA the starting adapters), which then costs no copy in the state."""
        return {**({"base": self.start_params} if self.lora is not None else {}),
                **({"reference": ref_trainable} if plan["reference_arg"] else {})}

    def new_state(self, params, ref_params, *, with_reference: bool, step: int, total: int, seed: int) -> TrainState:
        """A fresh sharded state at global ``step`` whose schedule runs ``total`` updates."""
        _, create = self.layout(with_reference)
        return create(params, ref_params, jax.random.PRNGKey(seed), step, total)

    def abstract_state(self, with_reference: bool) -> TrainState:
        """The sharded ``ShapeDtypeStruct``s of a state (a restore template)."""
        shardings, _ = self.layout(with_reference)
        abstract = jax.eval_shape(
            lambda p: create_train_state(p, self.tx, rng=jax.random.PRNGKey(0), with_reference=with_reference),
            self.trainable_start)
        return sharding.with_shardings(abstract, shardings)

    # --- a round ------------------------------------------------------------------------------

    def plan(self, rnd: Round) -> dict:
        """How ``rnd`` runs: ``{"objective", "precompute", "with_reference" (in the state),
        "reference_arg" (a step argument), "share_prompt", ...}``."""
        objective = objective_of(self.cfg, rnd.objective)
        ref = rnd.reference
        precompute = (objective.needs_reference and ref.every == 0 and ref.precompute
                      and objective.per_example_reference)
        in_step = objective.needs_reference and not precompute
        # A frozen reference that is the job's starting policy is read from the start params (a
        # step argument, never donated); a trust-region or round-start one lives in the state.
        reference_arg = in_step and ref.start == "sft" and ref.every == 0
        scoring = scoring_of(hparams_of(self.cfg, objective), objective)
        share = bool(self.cfg.get("share_prompt", False)) and objective.groups == PAIR and objective.model == "lm"
        if share and scoring != PLAIN:  # LD-DPO, WPO and ORPO's NLL read per-sequence logits: rows stay unpacked
            log.info("%s: share_prompt packing is off (ld_alpha, use_weighting and orpo score unpacked rows)", rnd.name)
            share = False
        # Several pairs per packed row: not with fixed shapes (online rounds compile one step) nor with
        # gradient accumulation (micro-batches split rows and pairs alike).
        padding_free = (share and bool(self.cfg.get("padding_free", False)) and not rnd.shapes
                        and self.cfg.get("grad_accum_steps", 1) == 1)
        return {"objective": objective, "precompute": precompute, "share_prompt": share, "scoring": scoring,
                "with_reference": in_step and not reference_arg, "reference_arg": reference_arg,
                "padding_free": padding_free, "max_tokens": self._token_budget(rnd, objective)}

    def _token_budget(self, rnd: Round, objective) -> int:
        """``data.max_tokens_per_batch`` where ``rnd`` can use it (0: batches of ``batch_size`` pairs)."""
        budget = int(self.cfg.data.get("max_tokens_per_batch", 0)) if "data" in self.cfg else 0
        if not budget:
            return 0
        # (the losses were checked with the config: pairwise, no batch statistic, no accumulation)
        require(not rnd.shapes and objective.paired, "data.max_tokens_per_batch",
                f"round {rnd.name!r} trains on batches of one fixed shape; set it to 0")
        return budget

    @property
    def row_multiple(self) -> int:
        """Packed rows per process come in multiples of this: its share of the mesh's batch axes."""
        return max(1, self.mesh.shape["data"] * self.mesh.shape["fsdp"] // jax.process_count())

    def train(self, rnd: Round, params, *, first_step: int, state: TrainState | None = None,
              meta=None, save_data_to: str | None = None) -> RoundResult:
        """Runs ``rnd`` from ``params`` (ignored with ``init="sft"``) as global steps
        ``[first_step, first_step + rnd.steps)``; ``state``: a restored mid-round state to continue.

        ``meta(done, stats) -> dict``: the JSON metadata of each checkpoint. ``save_data_to``: write
        the round's training set there (with its reference log-probs) before the first step.
        """
        plan = self.plan(rnd)
        objective = plan["objective"]
        start = self.start_params if rnd.init == "sft" else params
        ref_params = self.start_params if rnd.reference.start == "sft" else start
        trainable, ref_trainable = start, ref_params
        if self.lora is not None:
            trainable, ref_trainable, ref_params = self._lora_round_start(rnd, start)
        data = rnd.data
        names = objective.groups
        packed = fixed_packed_sizes(rnd.shapes) if plan["share_prompt"] and rnd.shapes else None
        buckets = (sum(rnd.shapes),) if rnd.shapes else self.buckets
        order = rnd.order
        if not data.examples:
            raise RuntimeError(f"{rnd.name}: no training examples (an online round drops prompts whose samples "
                               "all tie; sample more prompts or responses)")
        if len(data.examples) < self.cfg.batch_size and order == "epochs" and not plan["max_tokens"]:
            log.warning("%s: %d examples < batch_size %d: batches draw them with replacement", rnd.name,
                        len(data.examples), self.cfg.batch_size)
            order = "replacement"
        try:
            stream = BatchStream(data.examples, batch_size=self.cfg.batch_size, pad_id=self.pad_id, buckets=buckets,
                                 seed=rnd.seed, process_index=jax.process_index(), process_count=jax.process_count(),
                                 kl="kl" in names, fixed_packed_sizes=packed, order=order,
                                 padding_free=plan["padding_free"], row_multiple=self.row_multiple,
                                 max_tokens=plan["max_tokens"])
        except TokenBudgetError as exc:
            raise ConfigError(f"config.data.max_tokens_per_batch: {exc}; raise it") from None
        if plan["precompute"] and self._sampler_is_reference(rnd, plan, start):
            data = data.with_extras(**{f"ref_{n}": rnd.sampler_logps[f"ref_{n}"] for n in names})
            log.info("%s: reference log-probs from the sampler (the round's start policy, its reference, "
                     "sampled the responses): no reference pass", rnd.name)
        if plan["precompute"]:
            data = self._with_reference_logps(data, names, stream, rnd.steps, ref_params, buckets=buckets,
                                              share_prompt=plan["share_prompt"], packed=packed,
                                              scoring=plan["scoring"], cache=not rnd.sampled,
                                              padding_free=plan["padding_free"])
        if self.cfg.get("precompute_only", False):
            raise PrecomputeOnly(rnd.name, self.reference_cache)
        if save_data_to is not None and state is None and jax.process_index() == 0:
            os.makedirs(os.path.dirname(save_data_to), exist_ok=True)
            data.save(save_data_to)
        if state is None:
            state = self.new_state(trainable, ref_trainable if plan["with_reference"] else None,
                                   with_reference=plan["with_reference"], step=first_step, total=rnd.steps,
                                   seed=self.cfg.seed + first_step)
        elif plan["with_reference"] and state.ref_params is None:  # a checkpoint saved without its frozen copy
            state = state.replace(ref_params=jax.tree.map(jnp.copy, ref_trainable))  # (a copy: the state is donated)
        elif not plan["with_reference"] and state.ref_params is not None:  # older checkpoints held it
            state = state.replace(ref_params=None)
        frozen = self.frozen_args(plan, ref_trainable)
        wanted = set(objective.extras) | ({f"ref_{n}" for n in names} if plan["precompute"] else set())
        extras = {k: v for k, v in data.extras.items() if k in wanted}

        def batch_at(step):
            local = step - first_step
            groups, batch_extras = batch_groups(stream.batch_at(local), share_prompt=plan["share_prompt"],
                                                pad_id=self.pad_id, packed_sizes=stream.packed_sizes(local),
                                                padding_free=plan["padding_free"], first_pair=stream.first_pair)
            groups = {k: v for k, v in groups.items() if k in names or k == "shared_prompt"}
            idx = stream.local_indices(local)
            weights = stream.local_weights(local)  # token budget: 0 on filler slots
            if weights is not None:
                idx = np.maximum(idx, 0)
                batch_extras["pair_weight"] = weights
            batch_extras = {**batch_extras, **{k: v[idx] for k, v in extras.items()}}
            batch = sharding.global_batch(groups, self.mesh), sharding.global_batch(batch_extras, self.mesh)
            return (*batch, frozen) if frozen else batch

        step_fn = self.step_fn(rnd.objective, plan["with_reference"], rnd.reference.every, rnd.reference.alpha,
                               plan["reference_arg"])
        done = int(jax.device_get(state.step)) - first_step
        meta_fn = None if meta is None else (lambda step, stats: meta(step - first_step, stats))
        state, stats = run_steps(
            step_fn, state, batch_at, start=first_step + done, stop=first_step + rnd.steps, logger=self.logger,
            log_every=self.cfg.log_every, checkpointer=self.checkpointer,
            checkpoint_every=self.cfg.checkpoint_every if self.checkpointer else 0, meta=meta_fn, desc=rnd.name,
            on_nonfinite=self.cfg.get("on_nonfinite", "skip"),
            max_consecutive_skips=self.cfg.get("max_consecutive_skips", 20),
            to_save=lambda s, step: slim_state(s, self.saved_parts(rnd, plan, step - first_step)))
        return RoundResult(self.policy_params(state.params), stats, data)

    def policy_params(self, trained):
        """The policy a state's params stand for: themselves, or with LoRA the base plus them."""
        if self.lora is None:
            return trained
        from jaxpref.models.lora import combine

        return combine(self.start_params, trained)

    def _lora_round_start(self, rnd: Round, start):
        """``(adapters, reference adapters, reference params to precompute with)`` of a LoRA round:
        the round starts from the adapters of ``start`` (the job's starting ones when it holds
        none, or with ``init="sft"``); a reference at the job's start keeps the starting adapters
        and, when they are fresh, is scored by the plain base ("adapters off")."""
        from jaxpref.models.lora import has_adapters, split

        first = rnd.init == "sft" or not has_adapters(start)
        adapters = self.trainable_start if first else split(start)[0]
        at_start = rnd.reference.start == "sft" or first
        ref_adapters = self.trainable_start if at_start else adapters
        ref_plain = self.start_params if at_start and self.fresh_adapters else self.plain(
            self.policy_params(ref_adapters))
        return adapters, ref_adapters, ref_plain

    def plain(self, params):
        """``params`` with any LoRA adapters folded into the kernels (``models.lora.merge``), laid
        out as the starting params; one compilation per job."""
        from jaxpref.models.lora import has_adapters, merge

        if self.lora is None or not has_adapters(params):
            return params
        if not hasattr(self, "_merge"):
            self._merge = jax.jit(lambda p: merge(p, self.lora), out_shardings=self.param_shardings)
        return self._merge(params)

    def saved_parts(self, rnd: Round, plan: dict, done: int) -> dict:
        """What a checkpoint of ``rnd`` after ``done`` of its steps holds: ``{"reference": bool,
        "optimizer": bool, "loss_state": bool}``. A frozen reference that is the starting policy is
        not saved (resume takes it from the start params). The optimizer state is not saved with
        ``config.save_optimizer_state=False``. The end of a sampled round keeps its params alone:
        the next round starts a fresh optimizer state and its own reference, and a finished
        sampled round is never extended (SmolLM2's online round writes 0.54 GB instead of 1.6 GB)."""
        frozen_start = rnd.reference.start == "sft" and rnd.reference.every == 0
        params_only = rnd.sampled and done >= rnd.steps
        return {"reference": plan["with_reference"] and not frozen_start and not params_only,
                "optimizer": bool(self.cfg.get("save_optimizer_state", True)) and not params_only,
                "loss_state": True}

    def restore_template(self, meta: dict) -> TrainState:
        """The abstract state a checkpoint with metadata ``meta`` was saved as (``slim_state``)."""
        abstract = self.abstract_state(meta["with_reference"])
        # Checkpoints written before the loss state existed hold none (``complete_state`` adds it).
        saved = {"reference": True, "optimizer": True, "loss_state": False, **meta.get("saved", {})}
        return slim_state(abstract, saved)

    def complete_state(self, state: TrainState, meta: dict) -> TrainState:
        """A restored (slim) state made whole again: the loss state of older checkpoints added (a
        frozen reference that was not saved is re-attached by ``train``, which knows the round)."""
        del meta
        if state.loss_state is None:
            state = state.replace(loss_state=jax.device_put(initial_loss_state(), sharding.replicated(self.mesh)))
        return state

    def _sampler_is_reference(self, rnd: Round, plan: dict, start) -> bool:
        """Whether ``rnd.sampler_logps`` are its reference log-probs: the reference is the round's
        start and the round trains from there; ``start`` (the params handed to the round) sampled,
        which with LoRA must hold the round's adapters unless the job's starting ones are fresh
        (``run_rounds`` starts from the base with any loaded adapters); the sequences are
        scored plainly (no length weighting: ``Scoring``) in float32 (the sampler's decode path
        differs from the train forward in bf16 rounding); every prompt holds a token (the sampler
        scores a response's first token, the train step scores no sequence's first token)."""
        from jaxpref.models.lora import has_adapters

        names = plan["objective"].groups
        if not (rnd.sampler_logps is not None and rnd.reference.start == "round_start" and rnd.init == "continue"
                and plan["scoring"] == PLAIN and all(f"ref_{n}" in rnd.sampler_logps for n in names)):
            return False
        if self.lora is not None and not has_adapters(start) and not self.fresh_adapters:
            return False
        if jnp.dtype(getattr(self.model, "dtype", jnp.float32)) != jnp.float32:
            return False
        return all(len(e.prompt) > 0 for e in rnd.data.examples)

    def _with_reference_logps(self, data: TrainingSet, names, stream: BatchStream, steps: int, ref_params, *,
                              buckets, share_prompt: bool, packed, scoring: Scoring = PLAIN,
                              cache: bool = False, padding_free: bool = False) -> TrainingSet:
        """``data`` with ``ref_<group>`` extras for the rows the round's ``steps`` batches use: every row
        when the round covers an epoch or more, else only those (the others NaN), so a short run
        on a large dataset scores a few batches, not the whole set. ``cache``: read them from, or
        write them to, the on-disk cache (``infer.reference_cache``; ``config.ref_cache``)."""
        if steps * stream.batch_size >= len(data) and not stream.max_tokens:
            used = np.arange(len(data))
        else:
            used = stream.used_indices(steps)
        have = all(f"ref_{n}" in data.extras and not np.isnan(data.extras[f"ref_{n}"][used]).any()
                   for n in names)
        if have:
            return data
        subset = data if len(used) == len(data) else TrainingSet([data.examples[i] for i in used])
        if len(used) < len(data):
            log.info("reference log-probs for the %d of %d examples the round's %d steps use", len(used), len(data),
                     steps)
        settings = {"names": list(names), "share_prompt": share_prompt, "packed": packed, "buckets": list(buckets),
                    "padding_free": padding_free, "row_multiple": self.row_multiple,
                    "batch_size": self.cfg.batch_size, "scoring": scoring._asdict(), "pad_id": self.pad_id,
                    "dtype": str(getattr(self.model, "dtype", "")),
                    "head_block": head_block_size(self.model)}
        entry = self._cache_entry(subset, ref_params, settings) if cache else None
        logps = reference_cache.load(*entry, names, len(subset)) if entry else None
        if logps is not None:
            log.info("reference log-probs of %d examples read from %s: no reference pass", len(subset),
                     reference_cache.entry_path(*entry))
            self.reference_cache = {"path": reference_cache.entry_path(*entry), "hit": True}
        else:
            logps = reference_logps_of(self.model, ref_params, subset, names, pad_id=self.pad_id, buckets=buckets,
                                       batch_size=self.cfg.batch_size, share_prompt=share_prompt, packed=packed,
                                       mesh=self.mesh, scoring=scoring, padding_free=padding_free,
                                       row_multiple=self.row_multiple)
            if entry:
                path = reference_cache.save(*entry, logps, {**settings, "examples": len(subset)})
                log.info("reference log-probs cached in %s", path)
                self.reference_cache = {"path": path, "hit": False}
        if subset is not data:
            full = {}
            for k, v in logps.items():
                full[k] = np.full(len(data), np.nan, np.float32)
                full[k][used] = v
            logps = full
        return data.with_extras(**logps)

    def _cache_entry(self, subset: TrainingSet, ref_params, settings: dict) -> tuple[str, str] | None:
        """``(folder, key)`` of the reference cache entry for these examples, or None when caching is off."""
        if not self.cfg.get("ref_cache", False):
            return None
        folder = self.cfg.get("ref_cache_dir", "") or reference_cache.default_dir()
        key = reference_cache.cache_key(params_digest=reference_cache.params_fingerprint(ref_params),
                                        data_digest=reference_cache.examples_digest(subset.examples),
                                        settings=settings)
        return folder, key

    def round_data_path(self, index: int) -> str | None:
        return None if self.round_dir is None else os.path.join(self.round_dir, f"round_{index}.npz")


class PrecomputeOnly(Exception):
    """Raised after a round's reference log-probs were computed (or found) with
    ``config.precompute_only``: the job stops before training. ``cache``: the cache entry
    (``{"path", "hit"}``), or None when the round has no precomputed reference."""

    def __init__(self, round_name: str, cache: dict | None):
        super().__init__(round_name)
        self.round_name, self.cache = round_name, cache


def slim_state(state: TrainState, saved: dict) -> TrainState:
    """``state`` without the parts ``saved`` marks False (``Trainer.saved_parts``)."""
    if not saved.get("reference", True):
        state = state.replace(ref_params=None)
    if not saved.get("optimizer", True):
        state = state.replace(opt_state=None)
    if not saved.get("loss_state", True):
        state = state.replace(loss_state=None)
    return state


def fixed_packed_sizes(shapes: tuple[int, int]) -> tuple[int, int]:
    """Shared-prompt packing sizes ``(Tp, N)`` with room for the longest prompt and two responses
    of the longest length (``shapes = (max prompt tokens, max response tokens)``)."""
    prompt, response = shapes
    return packed_length(prompt + 2 * response), packed_length(2 * response)


# --- the job's loop over rounds -------------------------------------------------------------


@dataclasses.dataclass
class JobResult:
    """``params``: the final policy; ``history``: one record per round; ``stats``: each round's
    loop totals (this run only); ``resumed_from_step``: the global step a resume started at."""

    params: PyTree
    history: list[dict]
    stats: list[LoopStats]
    resumed_from_step: int = 0

    @property
    def tokens_per_second(self) -> float | None:
        seconds = sum(s.train_seconds for s in self.stats)
        return sum(s.train_tokens for s in self.stats) / seconds if seconds > 0 else None

    @property
    def step_seconds(self) -> float | None:
        """Mean wall time of a train step (the same steps as ``tokens_per_second``)."""
        steps = sum(s.train_steps for s in self.stats)
        return sum(s.train_seconds for s in self.stats) / steps if steps else None

    @property
    def trained_tokens(self) -> float:
        """Real (non-padding) tokens of every step this run trained on."""
        return sum(s.tokens_seen for s in self.stats)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling train steps for new batch shapes (not in ``step_seconds``)."""
        return sum(s.compile_seconds for s in self.stats)

    @property
    def checkpoint_seconds(self) -> float:
        """Seconds spent writing checkpoints inside the step loops (not in ``step_seconds``)."""
        return sum(s.checkpoint_seconds for s in self.stats)

    @property
    def skipped_steps(self) -> int:
        return sum(s.skipped_steps for s in self.stats)


_ROUND_FIELDS = ("name", "objective", "steps", "seed", "init", "sampled", "shapes", "info", "eval_index", "order")


def _round_spec(rnd: Round) -> dict:
    spec = {k: getattr(rnd, k) for k in _ROUND_FIELDS}
    spec["reference"] = dataclasses.asdict(rnd.reference)
    return spec


def _round_from_spec(spec: dict, data: TrainingSet) -> Round:
    fields = {k: spec[k] for k in _ROUND_FIELDS}
    fields["shapes"] = tuple(fields["shapes"]) if fields["shapes"] else None
    return Round(data=data, reference=Reference(**spec["reference"]), **fields)


def run_rounds(method, ctx, trainer: Trainer) -> JobResult:
    """Runs a job: asks ``method.make_round(ctx, i)`` for rounds ``i = 0, 1, ...`` until it returns
    None, trains each (``trainer.train``) and records it.

    ``method`` has ``make_round(ctx, index) -> Round | None`` and ``evaluate_rounds`` (bool: a
    quick held-out evaluation after each round, ``ctx.quick_eval``). ``ctx`` has ``params`` (set
    to each round's result), ``state`` (the method's JSON-able state, checkpointed), ``history``.

    Resume: the latest checkpoint's metadata names its round. A finished round continues with the
    next one; an interrupted one continues from its checkpointed step, on the same data (re-made
    by ``make_round`` when the round was not sampled, read back from ``trainer.round_data_path``
    when it was). A round whose data depends on the current policy must be ``sampled``.
    """
    ckpt = trainer.checkpointer
    restored = ckpt.restore_latest(lambda m: trainer.restore_template(_round_meta(m))) if ckpt else None
    index, first_step, resumed_from = 0, 0, 0
    # the job's starting policy: with LoRA adapters loaded from lora.init_from, the base with them
    # (what round 0 samples from and trains on); fresh adapters change nothing, the base serves
    start_policy = trainer.start_params
    if trainer.lora is not None and not trainer.fresh_adapters:
        start_policy = trainer.policy_params(trainer.trainable_start)
    ctx.params, ctx.history = start_policy, []
    pending_state, pending_round = None, None
    if restored is not None:
        _, state, meta = restored
        state = trainer.complete_state(state, meta)
        ctx.history, ctx.state = list(meta["history"]), dict(meta["method_state"])
        index, first_step, resumed_from = meta["round"], meta["round_first_step"], int(meta["step"])
        if trainer.logger is not None:
            trainer.logger.truncate(resumed_from)  # drop what was logged after the restored step
        extended = None
        if meta["round_step"] >= meta["round_steps"] and not meta["round_spec"]["sampled"]:
            again = method.make_round(ctx, index)  # a round re-made from fixed data: more steps asked for?
            if again is not None and again.steps > meta["round_steps"]:
                extended = again
        continues = extended is not None or meta["round_step"] < meta["round_steps"]
        if continues and state.opt_state is None:
            raise CheckpointError(
                f"checkpoint {resumed_from} holds no optimizer state (save_optimizer_state=False), so training cannot "
                "continue from it; its params are final (export them), or use another --workdir")
        if extended is not None:
            log.info("round %d: extending from %d to %d steps", index + 1, meta["round_steps"], extended.steps)
            ctx.history = ctx.history[:index]
            opt_state = extend_schedule(state.opt_state, extended.steps)
            pending_state, pending_round = state.replace(opt_state=opt_state), extended
        elif meta["round_step"] >= meta["round_steps"]:  # the round had finished
            ctx.params = trainer.policy_params(state.params)
            if len(ctx.history) == index:  # killed before its record was written
                ctx.history.append(_record(method, ctx, index, meta["round_spec"], meta["last_metrics"]))
            index, first_step = index + 1, first_step + meta["round_steps"]
        else:
            spec = meta["round_spec"]
            if spec["sampled"]:
                path = trainer.round_data_path(index)
                if path is None or not os.path.exists(path):
                    raise FileNotFoundError(f"round {index + 1} was interrupted but its data file {path} is missing")
                pending_round = _round_from_spec(spec, TrainingSet.load(path))
            else:
                pending_round = method.make_round(ctx, index)
            if pending_round.steps != meta["round_steps"]:  # resumed with another step count
                state = state.replace(opt_state=extend_schedule(state.opt_state, pending_round.steps))
            pending_state = state
        log.info("resuming at round %d, global step %d", index + 1, resumed_from)
    all_stats = []
    while True:
        calls_before = getattr(ctx.judge, "calls", 0)
        rnd = pending_round or method.make_round(ctx, index)
        if rnd is None:
            break
        if pending_round is None and ctx.judge is not None:
            rnd.info["judge_calls"] = int(getattr(ctx.judge, "calls", 0) - calls_before)
        plan = trainer.plan(rnd)
        spec = _round_spec(rnd)

        def meta_fn(done, stats, index=index, first=first_step, rnd=rnd, plan=plan, spec=spec):
            return {"config": trainer.config_record, "round": index, "round_first_step": first,
                    "round_steps": rnd.steps, "round_step": done,
                    "with_reference": plan["with_reference"], "saved": trainer.saved_parts(rnd, plan, done),
                    "round_spec": spec, "history": ctx.history,
                    "method_state": ctx.state, "last_metrics": stats.last_metrics}

        result = trainer.train(rnd, ctx.params, first_step=first_step, state=pending_state, meta=meta_fn,
                               save_data_to=trainer.round_data_path(index) if rnd.sampled else None)
        pending_state = pending_round = None
        ctx.params = result.params
        all_stats.append(result.stats)
        ctx.history.append(_record(method, ctx, index, spec, result.stats.last_metrics))
        index, first_step = index + 1, first_step + rnd.steps
    return JobResult(ctx.params, ctx.history, all_stats, resumed_from)


def _round_meta(meta: dict) -> dict:
    """``meta`` if it is a round checkpoint's metadata (``run_rounds``), else ``CheckpointError``."""
    if "round" not in meta or "with_reference" not in meta:
        raise CheckpointError("not a checkpoint of this jaxpref version (no round metadata)")
    return meta


def _record(method, ctx, index: int, spec: dict, last_metrics: dict) -> dict:
    """A round's history entry: its info, its last logged loss and, if the method asks, a quick eval."""
    record = {"round": index + 1, "name": spec["name"], "steps": spec["steps"], **spec["info"]}
    if last_metrics:
        record["final_loss"] = last_metrics.get("loss")
    if getattr(method, "evaluate_rounds", False):
        eval_index = spec["eval_index"]
        record.update(ctx.quick_eval(ctx.params, index if eval_index is None else eval_index))
    return record


def round_end_params(trainer: Trainer, index: int, checkpointer: Checkpointer | None = None):
    """The policy params at the end of round ``index`` (0-based), from the checkpoint saved when
    that round finished (``checkpointer``, default the trainer's; it must still keep that step)."""
    ckpt = checkpointer or trainer.checkpointer
    for step in sorted(ckpt.all_steps()):
        meta = ckpt.read_meta(step)
        if meta.get("round") == index and meta.get("round_step") == meta.get("round_steps"):
            state, _ = ckpt.restore(trainer.restore_template(meta), step)
            return trainer.policy_params(state.params)
    raise FileNotFoundError(f"no checkpoint of the end of round {index + 1} in {ckpt.directory}")
