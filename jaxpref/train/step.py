"""The train step: one body for every objective (preference losses, SFT, Bradley-Terry).

A step runs a single fused forward over all sequence groups of the batch (chosen and rejected
concatenated along the batch axis, plus any extra group the objective needs; or, with
``share_prompt``, each pair packed behind one copy of its prompt), a reference
forward without gradient (skipped when reference log-probs were precomputed), the loss from
``jaxpref.objectives``, the optimizer update, and the trust-region reference update.
Non-finite losses or gradients leave params and optimizer state untouched (counted in
``metrics['skipped']``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpref.data.batches import (
    CHOSEN,
    PROMPT,
    REJECTED,
    SLOT,
    PairedBatch,
    SharedPromptPairs,
    UnpairedBatch,
    pack_shared_prompt,
)
from jaxpref.losses import completion_lengths, counted_token_logps, ld_token_weights, token_logps, wpo_mean_logps
from jaxpref.models import RewardModel, forward, lora
from jaxpref.models.llama import head_block_size, lm_head_weights
from jaxpref.models.lm_head import token_logps_by_vocab_block
from jaxpref.objectives import PAIR_WEIGHT, LossInputs, Objective, Sequences, pair_mean
from jaxpref.train.optim import apply_update
from jaxpref.train.state import TrainState, update_reference

Groups = Mapping[str, Sequences]
Extras = Mapping[str, jax.Array]


SHARED_PROMPT = "shared_prompt"  # groups key of the packed pairs (``batches.SharedPromptPairs``)


def batch_groups(
    batch: PairedBatch | UnpairedBatch,
    *,
    share_prompt: bool = False,
    pad_id: int = 0,
    packed_sizes: tuple[int, ...] | None = None,
    padding_free: bool = False,
    first_pair: int = 0,
) -> tuple[dict[str, Sequences], dict[str, jax.Array]]:
    """Splits a collated (host) batch into sequence groups and per-example extras.

    ``share_prompt``: pairs also get ``groups[SHARED_PROMPT]`` (``batches.pack_shared_prompt``),
    and ``grouped_logps`` then scores chosen and rejected from it, running each prompt once.
    ``padding_free``: several pairs per packed row (``pack_shared_prompt(multi=True)``).
    ``packed_sizes``: the global batch's ``(Tp, N)`` (``(Tp, N, R)`` padding-free) when several
    processes each pack a slice (``BatchStream.packed_sizes``); ``first_pair``: the global index
    of this slice's first pair (``BatchStream.first_pair``).
    """
    if isinstance(batch, PairedBatch):
        groups = {
            "chosen": Sequences(batch.chosen_ids, batch.chosen_attention_mask, batch.chosen_completion_mask),
            "rejected": Sequences(batch.rejected_ids, batch.rejected_attention_mask, batch.rejected_completion_mask),
        }
        if batch.sample_ids is not None:
            groups["sample"] = Sequences(batch.sample_ids, batch.sample_attention_mask, batch.sample_completion_mask)
        if share_prompt:
            groups[SHARED_PROMPT] = pack_shared_prompt(batch, pad_id=pad_id, sizes=packed_sizes,
                                                         multi=padding_free, first_pair=first_pair)
        return groups, {}
    if isinstance(batch, UnpairedBatch):
        groups = {"completion": Sequences(batch.ids, batch.attention_mask, batch.completion_mask)}
        if batch.kl_ids is not None:
            groups["kl"] = Sequences(batch.kl_ids, batch.kl_attention_mask, batch.kl_completion_mask)
        return groups, {"desirable": batch.desirable}
    raise TypeError(f"unsupported batch type {type(batch).__name__}")


def shared_prompt_logps(model, params, packed: SharedPromptPairs) -> dict[str, jax.Array]:
    """``{"chosen": [B], "rejected": [B]}`` summed completion log-probs from packed pairs.

    One forward over ``[R, Tp]``: a token sees the earlier tokens of its pair's prompt and of
    its own completion (sliding windows by position distance), never another pair's; the LM
    head runs only at the ``[R, N]`` outputs that score completion tokens, which are summed
    into their pair's entry. Equal to ``grouped_logps`` on the unpacked sequences up to float
    rounding.
    """
    seg, pos = packed.segment, packed.positions
    index = jnp.arange(seg.shape[1])
    slot, branch = (seg - 1) // SLOT, (seg - 1) % SLOT + 1  # pair slot and PROMPT/CHOSEN/REJECTED
    same_pair = slot[:, None, :] == slot[:, :, None]
    same_branch = same_pair & ((branch[:, None, :] == PROMPT) | (seg[:, None, :] == seg[:, :, None]))
    attend = same_branch & (index[None, None, :] <= index[None, :, None]) & (seg[:, None, :] > 0)
    if model.config.sliding_window is not None:
        attend &= (pos[:, :, None] - pos[:, None, :]) < model.config.sliding_window
    block = head_block_size(model)
    if block is not None:
        hidden, _ = _hidden_model(model).apply({"params": params}, packed.ids, pos, attend,
                                               output_index=packed.source_index)
        target_logps = chunked_token_logps(hidden, lm_head_weights(model, params), packed.target_ids,
                                           packed.target_segment > 0, block)
    else:
        logits, _ = model.apply({"params": params}, packed.ids, pos, attend, output_index=packed.source_index)
        target_logps = token_logps(logits, packed.target_ids)
    pairs = packed.pair_slots.shape[0]
    target_branch = (packed.target_segment - 1) % SLOT + 1
    out = {}
    for name, branch_id in (("chosen", CHOSEN), ("rejected", REJECTED)):
        counted = (packed.target_segment > 0) & (target_branch == branch_id)
        values = jnp.where(counted, target_logps, 0.0)
        out[name] = jax.ops.segment_sum(values.reshape(-1), packed.target_pair.reshape(-1), num_segments=pairs)
    return out


class Scoring(NamedTuple):
    """How a response's score is computed from the forward (hashable: a static jit argument).

    ``ld_alpha``: LD-DPO's weight of a pair's response tokens beyond the shorter response (1: plain
    sums); ``wpo``: also return WPO's ``wpo_<group>`` mean aligned log-probs (policy side only);
    ``full_chosen``: also return ``full_chosen``, the chosen rows' log-prob of every attended token,
    prompt included (ORPO's NLL term, as TRL and the ORPO code compute it).
    """

    ld_alpha: float = 1.0
    wpo: bool = False
    full_chosen: bool = False


PLAIN = Scoring()  # summed log-probs, no WPO


def scoring_of(hparams: Mapping[str, float | bool], objective: Objective | None = None) -> Scoring:
    """The ``Scoring`` a loss's hyper-parameters (``objectives.SCORING_HPARAMS``) and the objective
    (``Objective.prompt_nll``) ask for."""
    return Scoring(float(hparams.get("ld_alpha", 1.0)), bool(hparams.get("use_weighting", False)),
                   bool(objective is not None and objective.prompt_nll))


def sequence_scores(model, params, groups: Groups, names: tuple[str, ...],
                    scoring: Scoring = PLAIN) -> dict[str, jax.Array]:
    """What the objectives score each row with: ``{name: [B] float32}`` from one fused forward.

    For a ``CausalLM``, the summed completion log-probs (``grouped_logps``); for a
    ``RewardModel``, its scalar score of each ``prompt + response`` row.
    """
    if isinstance(model, RewardModel):
        ids = jnp.concatenate([groups[n].ids for n in names], axis=0)
        attn = jnp.concatenate([groups[n].attention_mask for n in names], axis=0)
        scores = model.apply({"params": params}, ids, attn)
        return dict(zip(names, jnp.split(scores, len(names))))
    return grouped_logps(model, params, groups, names, scoring)


def grouped_logps(model, params, groups: Groups, names: tuple[str, ...],
                  scoring: Scoring = PLAIN) -> dict[str, jax.Array]:
    """Completion log-probs of every group from one fused forward.

    All groups must share ``[B, T]``; the forward sees ``[len(names) * B, T]``. If the
    groups hold packed pairs (``batch_groups(share_prompt=True)``) and ``names`` are chosen
    and rejected, ``shared_prompt_logps`` is used instead (plain ``Scoring`` only).
    With ``scoring.ld_alpha != 1`` the chosen and rejected log-probs are LD-DPO's weighted sums
    (``losses.ld_token_weights``); with ``scoring.wpo`` the result also holds ``wpo_<name>``.
    Returns ``{name: [B] float32}``.
    """
    if SHARED_PROMPT in groups and sorted(names) == ["chosen", "rejected"]:
        if scoring != PLAIN:
            raise ValueError("share_prompt packing does not support ld_alpha, use_weighting or orpo's "
                             "full-sequence NLL")
        return shared_prompt_logps(model, params, groups[SHARED_PROMPT])
    ids = jnp.concatenate([groups[n].ids for n in names], axis=0)
    attn = jnp.concatenate([groups[n].attention_mask for n in names], axis=0)
    block = head_block_size(model)
    if block is not None and not scoring.wpo:  # WPO reads whole softmax rows: it keeps the full logits
        count = _counted_mask(groups, names, scoring)
        hidden = forward(_hidden_model(model), params, ids, attn)  # [B, T, E]: the model returns hidden states
        per_token = chunked_token_logps(hidden[:, :-1], lm_head_weights(model, params), ids[:, 1:],
                                        count[:, 1:].astype(bool), block)
        return logps_from_token_logps(per_token, groups, names, scoring)
    return logps_from_logits(forward(model, params, ids, attn), groups, names, scoring)


def chunked_token_logps(hidden_bte: jax.Array, head: tuple[jax.Array, str], targets_bt: jax.Array,
                        counted_bt: jax.Array, block: int = 0) -> jax.Array:
    """``log softmax(h W)[target]`` per position through the LM head a vocabulary block at a time
    (``models.lm_head.token_logps_by_vocab_block``), so the ``[B, T, V]`` logits never exist; equal
    to the full computation (values and gradients) up to float rounding.

    Args:
      hidden_bte: ``[B, T, E]`` final hidden states at the positions that predict ``targets``.
      head: the LM head and its layout (``models.llama.lm_head_weights``).
      targets_bt: ``[B, T]`` int next-token ids.
      counted_bt: ``[B, T]`` bool; uncounted positions score 0 and their hidden states are zeroed
        before the head (a non-finite one reaches neither a value nor a gradient).
      block: vocabulary entries per block (0: sized for the ``B * T`` positions).

    Returns ``[B, T]`` float32.
    """
    b, t, e = hidden_bte.shape
    hidden_ne = jnp.where(counted_bt[..., None], hidden_bte, jnp.zeros((), hidden_bte.dtype)).reshape(b * t, e)
    out = token_logps_by_vocab_block(hidden_ne, head, targets_bt.reshape(b * t), block)
    return jnp.where(counted_bt, out.reshape(b, t), 0.0)


def _hidden_model(model):
    return model.clone(return_hidden=True)


def _counted_mask(groups: Groups, names: tuple[str, ...], scoring: Scoring) -> jax.Array:
    """``[len(names) * B, T]``: the tokens scored per position. With ``full_chosen`` the chosen
    rows count every attended token (a superset of their response; the response sums select
    theirs), so one log-softmax per position serves both."""
    return jnp.concatenate([groups[n].attention_mask if scoring.full_chosen and n == "chosen"
                            else groups[n].completion_mask for n in names], axis=0)


def logps_from_logits(logits: jax.Array, groups: Groups, names: tuple[str, ...],
                      scoring: Scoring = PLAIN) -> dict[str, jax.Array]:
    """``grouped_logps`` after the forward: ``logits`` ``[len(names) * B, T, V]`` of the groups
    concatenated in ``names`` order -> ``{name: [B]}`` (and ``wpo_<name>`` with ``scoring.wpo``)."""
    ids = jnp.concatenate([groups[n].ids for n in names], axis=0)
    per_token = counted_token_logps(logits, ids, _counted_mask(groups, names, scoring))  # [len(names) * B, T - 1]
    out = logps_from_token_logps(per_token, groups, names, scoring)
    if scoring.wpo:
        comp = jnp.concatenate([groups[n].completion_mask for n in names], axis=0)
        out.update(zip((f"wpo_{n}" for n in names), jnp.split(wpo_mean_logps(logits, ids, comp), len(names))))
    return out


def logps_from_token_logps(per_token: jax.Array, groups: Groups, names: tuple[str, ...],
                           scoring: Scoring = PLAIN) -> dict[str, jax.Array]:
    """``[len(names) * B, T - 1]`` per-token log-probs (0 where not counted) -> ``{name: [B]}``
    response scores (LD-DPO weighted with ``scoring.ld_alpha``; ``full_chosen`` too if asked)."""
    comp = jnp.concatenate([groups[n].completion_mask for n in names], axis=0)
    weights = comp[:, 1:].astype(jnp.float32)
    if scoring.ld_alpha != 1.0 and "chosen" in names and "rejected" in names:
        wc, wr = ld_token_weights(groups["chosen"].completion_mask, groups["rejected"].completion_mask,
                                  scoring.ld_alpha)
        by_name = {"chosen": wc, "rejected": wr}
        weights = jnp.concatenate([by_name.get(n, groups[n].completion_mask.astype(jnp.float32)) for n in names])[:, 1:]
    out = dict(zip(names, jnp.split(jnp.sum(per_token * weights, axis=-1), len(names))))
    if scoring.full_chosen:
        out["full_chosen"] = jnp.split(jnp.sum(per_token, axis=-1), len(names))[names.index("chosen")]
    return out


def reference_logps(model, ref_params, groups: Groups, names: tuple[str, ...],
                    scoring: Scoring = PLAIN) -> dict[str, jax.Array]:
    """Reference log-probs (no gradient); ``[B]`` per group (scored as the policy's, without WPO)."""
    return jax.lax.stop_gradient(grouped_logps(model, ref_params, groups, names,
                                               scoring._replace(wpo=False, full_chosen=False)))


def _masked_mean(x: jax.Array, valid: jax.Array | None, weight: jax.Array | None = None) -> jax.Array:
    if weight is not None:
        valid = weight > 0 if valid is None else valid & (weight > 0)
    if valid is None:
        return jnp.mean(x)
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def batch_loss(objective: Objective, hparams: Mapping[str, float | bool], policy: dict[str, jax.Array],
               ref: Mapping[str, jax.Array], groups: Groups, extras: Extras, loss_state: Mapping[str, jax.Array]):
    """The scalar loss of a batch from its scores: ``(loss, (LossOutput, policy))``.

    ``policy``/``ref``: ``{group: [B]}`` from ``sequence_scores`` / ``reference_logps`` (policy may
    hold WPO's ``wpo_<group>``, consumed here: each pair's loss is weighted by ``w(y_w) w(y_l)``,
    with no gradient through the weights). The returned ``LossOutput.loss_state`` is the whole
    updated loss state.
    """
    names = objective.groups
    policy = dict(policy)
    wpo = {n: policy.pop(f"wpo_{n}") for n in names if f"wpo_{n}" in policy}
    lengths = {n: completion_lengths(groups[n].completion_mask) for n in names}
    if "full_chosen" in policy:
        lengths["full_chosen"] = completion_lengths(groups["chosen"].attention_mask)
    out = objective(LossInputs(policy, ref, lengths, extras, loss_state), **hparams)
    per_example = out.losses
    if wpo:
        per_example = per_example * jnp.exp(wpo["chosen"] + wpo["rejected"])
    new_state = {**loss_state, **(out.loss_state or {})}
    loss = pair_mean(per_example, extras.get(PAIR_WEIGHT))  # a token-budget batch: its real pairs only
    return loss, (out._replace(losses=per_example, loss_state=new_state), policy)


def make_train_step(
    model,
    objective: Objective,
    hparams: Mapping[str, float | bool],
    tx: optax.GradientTransformation,
    *,
    ref_update_every: int = 0,
    ref_update_alpha: float = 1.0,
    grad_accum_steps: int = 1,
    lora_models: tuple | None = None,
    lora_dropout: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Builds ``step(state, groups, extras, frozen=None) -> (state, metrics)`` (wrap it in ``jax.jit``).

    ``hparams``: the values of ``objective.hparams`` (``objectives.hparams_of``). If ``extras``
    holds ``ref_<group>`` arrays for every group, those precomputed reference log-probs are
    used and no reference forward runs (only valid for a frozen reference).

    ``grad_accum_steps = A > 1``: the batch of ``B`` rows is split into ``A`` micro-batches of
    ``B / A`` rows (row ``i`` goes to micro-batch ``i % A``, so each stays spread over the
    mesh's batch axes) run one after another under ``lax.scan``; the gradient is the mean of
    their gradients, which equals the full batch's gradient for losses that average per-example
    terms (not for ``objective.batch_statistic`` losses: KTO's reference point and AOT's sorting are
    then per micro-batch, as in TRL, and BCO's baseline advances per micro-batch). Activation
    memory is that of one micro-batch.

    ``frozen``: read-only params, an argument of every step (not part of the state: no gradient,
    no optimizer state, never donated, so they may be the job's own start params): ``"reference"``,
    the reference when it is frozen and is not ``state.ref_params`` (which a trust-region update
    changes), and with LoRA ``"base"``.

    ``lora_models = (train_model, reference_model)`` (``models.lora.lora_model``, the second without
    dropout): ``state.params`` (and the reference) are LoRA adapters only, and ``frozen["base"]`` is
    the frozen base params. The policy is ``combine(base, state.params)``, the reference
    ``combine(base, reference adapters)``. With ``lora_dropout`` (the train model has dropout) the
    masks are drawn from ``fold_in(state.rng, state.step)``.
    """
    names = objective.groups
    train_model, ref_model = lora_models or (model, model)
    dropout = lora_models is not None and lora_dropout
    hparams = dict(hparams)
    if set(hparams) != set(objective.hparams):
        raise ValueError(f"hparams {sorted(hparams)} do not match the objective's {sorted(objective.hparams)}")
    scoring = scoring_of(hparams, objective)

    def full(params, base):
        return params if base is None else lora.combine(base, params)

    def loss_fn(params, ref, groups, extras, loss_state, base, rng):
        m = _WithRngs(train_model, {"dropout": rng}) if dropout else train_model
        policy = sequence_scores(m, full(params, base), groups, names, scoring)
        return batch_loss(objective, hparams, policy, ref, groups, extras, loss_state)

    def loss_and_grads(state: TrainState, groups: Groups, extras: Extras, loss_state, frozen):
        """One batch (or micro-batch): ``(loss, (LossOutput, policy, ref), grads)``."""
        ref = {}
        base = frozen.get("base")
        if objective.needs_reference:
            if all(f"ref_{n}" in extras for n in names):
                ref = {n: extras[f"ref_{n}"] for n in names}
            else:
                ref_params = state.ref_params if state.ref_params is not None else frozen["reference"]
                ref = reference_logps(ref_model, full(ref_params, base), groups, names, scoring)
        rng = jax.random.fold_in(state.rng, state.step) if dropout else None
        (loss, (out, policy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, ref, groups, extras, loss_state, base, rng
        )
        return loss, (out, policy, ref), grads

    def single(state: TrainState, groups: Groups, extras: Extras, frozen):
        return loss_and_grads(state, groups, extras, state.loss_state, frozen)

    def accumulated(state: TrainState, groups: Groups, extras: Extras, frozen):
        """``loss_and_grads`` over ``grad_accum_steps`` micro-batches, averaged (the loss state,
        e.g. BCO's baseline, advances once per micro-batch)."""
        a = grad_accum_steps
        split = lambda x: x.reshape(x.shape[0] // a, a, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731
        micro = jax.tree.map(split, (groups, extras))

        def body(carry, batch):
            grad_sum, loss_state = carry
            loss, (out, policy, ref), grads = loss_and_grads(state, *batch, loss_state, frozen)
            rows = (out._replace(metrics=None, loss_state=None), policy, ref)
            return (jax.tree.map(jnp.add, grad_sum, grads), out.loss_state), (loss, rows, out.metrics or {})

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grad_sum, loss_state), (losses, rows, metrics) = jax.lax.scan(body, (zeros, state.loss_state), micro)
        merge = lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:])  # noqa: E731  [A, B/A] -> [B], original order
        out, policy, ref = jax.tree.map(merge, rows)
        out = out._replace(metrics=jax.tree.map(jnp.mean, metrics), loss_state=loss_state)
        return jnp.mean(losses), (out, policy, ref), jax.tree.map(lambda g: g / a, grad_sum)

    def step(state: TrainState, groups: Groups, extras: Extras, frozen=None):
        run = single if grad_accum_steps == 1 else accumulated
        loss, (out, policy, ref), grads = run(state, groups, extras, frozen or {})
        grad_norm = optax.global_norm(grads)
        # An update that would leave any param non-finite (e.g. an overflowing learning rate) is
        # dropped like a non-finite loss or gradient: non-finite params never reach a checkpoint.
        params, opt_state, finite = apply_update(tx, grads, state.opt_state, state.params, jnp.isfinite(loss))
        state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            loss_state=jax.tree.map(lambda n, o: jnp.where(finite, n, o), dict(out.loss_state), state.loss_state),
        )
        state = update_reference(state, every=ref_update_every, alpha=ref_update_alpha)
        weight = extras.get(PAIR_WEIGHT)  # [B] with a token budget: 0 on filler slots
        mean = lambda x: pair_mean(x, weight)  # noqa: E731
        chosen_reward = _masked_mean(out.chosen_rewards, out.chosen_valid, weight)
        rejected_reward = _masked_mean(out.rejected_rewards, out.rejected_valid, weight)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "skipped": 1 - finite.astype(jnp.int32),
            "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward,
            "tokens": sum(_real_tokens(groups[n].attention_mask, weight) for n in names),
            **(out.metrics or {}),
        }
        if objective.paired:
            metrics["reward_accuracy"] = mean((out.chosen_rewards > out.rejected_rewards).astype(jnp.float32))
            metrics["reward_margin"] = mean(out.chosen_rewards - out.rejected_rewards)
            if objective.model == "lm":
                metrics["chosen_logps"] = mean(policy["chosen"])
                metrics["rejected_logps"] = mean(policy["rejected"])
        elif out.chosen_valid is not None:  # unpaired (KTO): the desirable and undesirable rows' means
            metrics["reward_margin"] = chosen_reward - rejected_reward
        if ref:
            # Mean log pi/pi_ref over the batch's responses (not KTO's mismatched kl rows, whose
            # clamped mean is KTO's own "kl" metric): a KL(pi || ref) estimate when the responses
            # are policy samples, a drift indicator otherwise.
            scored = [n for n in names if n != "kl"]
            metrics["kl_estimate"] = jnp.mean(jnp.stack([mean(policy[n] - ref[n]) for n in scored]))
        return state, metrics

    return step


def _real_tokens(attention_mask: jax.Array, weight: jax.Array | None) -> jax.Array:
    """Tokens of ``[B, T]`` rows, filler slots (``weight`` 0) not counted."""
    if weight is None:
        return jnp.sum(attention_mask)
    return jnp.sum(jnp.sum(attention_mask, axis=-1) * (weight > 0))


class _WithRngs:
    """A module whose ``apply`` passes ``rngs`` (LoRA dropout); every other attribute (``config``,
    ``dtype``, ``logits_chunk``, ...) is the module's, and ``clone`` keeps the rngs."""

    def __init__(self, module, rngs):
        self.module, self.rngs = module, rngs

    def __getattr__(self, name):
        if name == "module":  # not set yet
            raise AttributeError(name)
        return getattr(self.module, name)

    def clone(self, **kwargs):
        return _WithRngs(self.module.clone(**kwargs), self.rngs)

    def apply(self, variables, *args, **kwargs):
        return self.module.apply(variables, *args, rngs=self.rngs, **kwargs)
