"""Scoring fixed responses: summed log-probs under a policy, reference log-probs of a training
set, and reward-model scores, batched over the mesh (``infer.batching``).

The jitted functions are module-level with the model as a static argument, so each compiles
once per model and input shape for the whole job (not once per call or per round).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxpref.data.batches import (
    PairExample,
    bucket_length,
    collate_pairs,
    collate_unpaired,
    default_buckets,
    packed_sizes,
    pad_sequences,
    unpaired_length,
)
from jaxpref.data.training_set import TrainingSet
from jaxpref.infer.batching import map_batches
from jaxpref.losses import sequence_logps
from jaxpref.models import forward
from jaxpref.train.step import PLAIN, Scoring, batch_groups, reference_logps

TokenLists = Sequence[Sequence[int]]


@functools.partial(jax.jit, static_argnames="model")
def _response_logps(model, params, ids, attention_mask, completion_mask):
    return sequence_logps(forward(model, params, ids, attention_mask), ids, completion_mask)


@functools.partial(jax.jit, static_argnames=("model", "names", "scoring"))
def reference_pass(model, params, groups, names: tuple[str, ...], scoring: Scoring = PLAIN):
    """Jitted ``train.step.reference_logps``: ``{name: [B]}`` log-probs of a batch's groups under
    ``params``, without gradient (compiled once per model, groups, scoring and shapes)."""
    return reference_logps(model, params, groups, names, scoring)


@functools.partial(jax.jit, static_argnames="model")
def _reward_scores(model, params, ids, attention_mask):
    return model.apply({"params": params}, ids, attention_mask)


def padded_length(prompts: TokenLists, responses: TokenLists) -> int:
    """The bucketed length (``default_buckets``) that fits every ``prompt + response`` row."""
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    return bucket_length(longest, default_buckets(max(longest, 16)))


def score_responses(model, params, prompts: TokenLists, responses: TokenLists, *, pad_id: int, batch_size: int,
                    mesh: Mesh | None = None, length: int | None = None) -> np.ndarray:
    """Summed log-probs ``[N]`` (float32, on every process) of ``responses`` given ``prompts``.

    Rows are right-padded to ``length`` (default ``padded_length``).
    """
    length = length or padded_length(prompts, responses)

    def rows(idx, share):
        idx = idx[share]
        return pad_sequences([prompts[i] for i in idx], [responses[i] for i in idx], length=length, pad_id=pad_id)

    out = []
    for _, n_real, logps in map_batches(lambda b, _: _response_logps(model, params, *b), len(prompts), batch_size,
                                        rows, mesh=mesh):
        out.append(logps[:n_real])
    return np.concatenate(out)


def sequence_scores(model, params, sequences: TokenLists, *, pad_id: int, batch_size: int = 256,
                    mesh: Mesh | None = None) -> np.ndarray:
    """``[N]`` float64 scores of a ``models.RewardModel`` on whole token sequences, right-padded to
    one bucketed length (``default_buckets``) for the call: one compile per length."""
    longest = max(len(s) for s in sequences)
    length = bucket_length(longest, default_buckets(max(longest, 16)))

    def rows(idx, share):
        idx = idx[share]
        ids, attn, _ = pad_sequences([sequences[i] for i in idx], [[] for _ in idx], length=length, pad_id=pad_id)
        return ids, attn

    out = []
    for _, n_real, scores in map_batches(lambda b, _: _reward_scores(model, params, *b), len(sequences), batch_size,
                                         rows, mesh=mesh):
        out.append(scores[:n_real])
    return np.concatenate(out).astype(np.float64)


def reward_model_scores(model, params, prompts: TokenLists, responses: TokenLists, *, pad_id: int,
                        batch_size: int = 256, mesh: Mesh | None = None) -> np.ndarray:
    """``[N]`` float64 scores of a ``models.RewardModel`` on ``prompt + response`` rows."""
    return sequence_scores(model, params, [list(p) + list(r) for p, r in zip(prompts, responses)], pad_id=pad_id,
                           batch_size=batch_size, mesh=mesh)


def reference_logps_of(model, ref_params, data: TrainingSet, names: tuple[str, ...], *, pad_id: int,
                       buckets: Sequence[int], batch_size: int, share_prompt: bool = False,
                       packed: tuple[int, int] | None = None, mesh: Mesh | None = None,
                       scoring: Scoring = PLAIN, padding_free: bool = False,
                       row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Reference log-probs of every example of ``data``: ``{"ref_<name>": [N] float32}``.

    Batches are built exactly as for training (``collate_pairs`` / ``collate_unpaired``, and the
    shared-prompt packing with ``share_prompt``), in dataset order; only per-example groups can
    be scored this way (not KTO's ``kl`` rows, which depend on the batch); ``scoring``: as the
    train step scores them (LD-DPO weights). A single bucket
    (``buckets=(T,)``) and ``packed=(Tp, N)`` give every batch the same shapes. ``padding_free``,
    ``row_multiple``: several pairs per packed row (as ``data.stream.BatchStream``), unless ``packed``.
    """
    if "kl" in names:
        raise ValueError("KTO's kl rows depend on the batch: their reference log-probs cannot be precomputed")
    examples = data.examples
    paired = isinstance(examples[0], PairExample)

    def rows(idx, share):
        # Shapes come from the whole global batch, so every process pads its share alike.
        whole, chunk = [examples[i] for i in idx], [examples[i] for i in idx[share]]
        if paired:
            length = bucket_length(max(len(e.prompt) + max(len(e.chosen), len(e.rejected)) for e in whole), buckets)
            batch = collate_pairs(chunk, pad_id=pad_id, buckets=(length,))
            multi = padding_free and not packed
            sizes = (packed or packed_sizes(whole, multi=multi, slices=jax.process_count(),
                                            row_multiple=row_multiple)) if share_prompt else None
            return batch_groups(batch, share_prompt=share_prompt, pad_id=pad_id, packed_sizes=sizes,
                                padding_free=multi, first_pair=share.start or 0)[0]
        length = bucket_length(unpaired_length(whole, max(buckets), kl=False), buckets)
        return batch_groups(collate_unpaired(chunk, pad_id=pad_id, buckets=(length,), kl=False))[0]

    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    score = lambda g, _: reference_pass(model, ref_params, g, names, scoring)  # noqa: E731
    for _, n_real, logps in map_batches(score, len(examples), batch_size, rows, mesh=mesh, desc="reference log-probs"):
        for n in names:
            out[n].append(logps[n][:n_real])
    return {f"ref_{n}": np.concatenate(v).astype(np.float32) for n, v in out.items()}
