"""Batch types shared by the data pipeline, the built-in task and the train step.

Padding contract:
- Training sequences are ``[prompt tokens][response tokens]`` (BOS/chat template inside the
  prompt, EOS at the end of the response), **right-padded** with ``pad_id`` to a bucketed
  length ``T``. ``attention_mask`` is 1 on real tokens; ``completion_mask`` is 1 on response
  tokens only (the tokens whose log-probs the losses sum).
- Chosen and rejected sequences of one batch share ``T`` so they can be concatenated along the
  batch axis for a single fused forward pass.
- Prompts for sampling are **left-padded** (see ``jaxpref.infer.sampling``).

Every field is a numpy (host) or jax array; the types are NamedTuples, hence pytrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class PairedBatch(NamedTuple):
    """Preference pairs. All arrays ``[B, T]`` int32.

    ``sample_*``: a third response per pair (SELM's reference sample ``y_ref``), or None.
    """

    chosen_ids: np.ndarray
    chosen_attention_mask: np.ndarray
    chosen_completion_mask: np.ndarray
    rejected_ids: np.ndarray
    rejected_attention_mask: np.ndarray
    rejected_completion_mask: np.ndarray
    sample_ids: np.ndarray | None = None
    sample_attention_mask: np.ndarray | None = None
    sample_completion_mask: np.ndarray | None = None


class UnpairedBatch(NamedTuple):
    """KTO-style unpaired examples.

    ``ids/attention_mask/completion_mask``: ``[B, T]`` int32, prompt x_i + completion y_i.
    ``desirable``: ``[B]`` bool label.
    ``kl_*``: ``[B, T]`` mismatched sequences (x_i, y_{(i+1) mod B}) used only for KTO's
    reference-point KL estimate; None when not collated (``collate_unpaired(kl=False)``).
    """

    ids: np.ndarray
    attention_mask: np.ndarray
    completion_mask: np.ndarray
    desirable: np.ndarray
    kl_ids: np.ndarray | None
    kl_attention_mask: np.ndarray | None
    kl_completion_mask: np.ndarray | None


class SharedPromptPairs(NamedTuple):
    """The pairs of a ``PairedBatch`` packed so that each prompt is run once.

    Row b is ``[prompt][chosen completion][rejected completion][padding]`` (length ``Tp``);
    ``jaxpref.train.step.shared_prompt_logps`` lets chosen tokens see the prompt and earlier
    chosen tokens, rejected tokens the prompt and earlier rejected tokens, each with the
    RoPE positions they have in their own sequence, so the log-probs equal those of the two
    separate sequences while the prompt's layers run once instead of twice.

    ``ids``, ``positions``, ``segment``: ``[B, Tp]`` int32; segment 0 padding, 1 prompt,
    2 chosen, 3 rejected.
    ``target_ids``, ``source_index``, ``target_segment``: ``[B, N]`` int32, one entry per
    scored completion token: its id, the packed index whose output predicts it (the
    previous token of its own sequence), and its segment (0 on padding entries).
    """

    ids: np.ndarray
    positions: np.ndarray
    segment: np.ndarray
    target_ids: np.ndarray
    source_index: np.ndarray
    target_segment: np.ndarray


class PairExample(NamedTuple):
    """One tokenized preference pair (lists of token ids, no padding).

    ``sample``: an optional third response to the same prompt (SELM's ``y_ref``).
    """

    prompt: Sequence[int]
    chosen: Sequence[int]
    rejected: Sequence[int]
    sample: Sequence[int] | None = None


class UnpairedExample(NamedTuple):
    """One tokenized unpaired example (lists of token ids, no padding)."""

    prompt: Sequence[int]
    completion: Sequence[int]
    desirable: bool


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= ``length``; raises if ``length`` exceeds the largest bucket."""
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"sequence length {length} exceeds the largest bucket {max(buckets)}")


def default_buckets(max_length: int, smallest: int = 16) -> list[int]:
    """Powers of two from ``smallest`` up to ``max_length`` (always included)."""
    buckets, b = [], smallest
    while b < max_length:
        buckets.append(b)
        b *= 2
    buckets.append(max_length)
    return buckets


def pad_sequences(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    length: int,
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenates prompt+completion rows and right-pads them.

    Returns ``(ids, attention_mask, completion_mask)``, each ``[N, length]`` int32.
    """
    n = len(prompts)
    ids = np.full((n, length), pad_id, np.int32)
    attn = np.zeros((n, length), np.int32)
    comp = np.zeros((n, length), np.int32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        lp, lc = len(p), len(c)
        if lp + lc > length:
            raise ValueError(f"row {i}: prompt+completion has {lp + lc} tokens > length {length}")
        ids[i, :lp] = p
        ids[i, lp : lp + lc] = c
        attn[i, : lp + lc] = 1
        comp[i, lp : lp + lc] = 1
    return ids, attn, comp


def collate_pairs(
    examples: Sequence[PairExample], *, pad_id: int, buckets: Sequence[int]
) -> PairedBatch:
    """Pads a list of pairs into one ``PairedBatch`` whose T is the bucket of the longest row
    (the ``sample`` responses too, when every pair has one)."""
    t = bucket_length(pairs_length(examples), buckets)
    prompts = [e.prompt for e in examples]
    c = pad_sequences(prompts, [e.chosen for e in examples], length=t, pad_id=pad_id)
    r = pad_sequences(prompts, [e.rejected for e in examples], length=t, pad_id=pad_id)
    if all(e.sample is not None for e in examples):
        return PairedBatch(*c, *r, *pad_sequences(prompts, [e.sample for e in examples], length=t, pad_id=pad_id))
    return PairedBatch(*c, *r)


def responses_of(example: PairExample) -> tuple[Sequence[int], ...]:
    """The responses of a pair: chosen, rejected and, when present, the sample."""
    return (example.chosen, example.rejected) + (() if example.sample is None else (example.sample,))


def pairs_length(examples: Sequence[PairExample]) -> int:
    """Tokens of the longest row of ``collate_pairs(examples)``."""
    return max(len(e.prompt) + max(map(len, responses_of(e))) for e in examples)


def kl_completions(examples: Sequence[UnpairedExample], limit: int) -> list[list[int]]:
    """KTO's mismatched completions: row i gets completion ``(i + 1) mod n``, cut to fit ``limit``
    tokens next to prompt i (the KL rows only estimate KTO's reference point, so a shorter
    mismatched completion is harmless)."""
    comps = [list(e.completion) for e in examples]
    return [c[: max(limit - len(e.prompt), 0)] for e, c in zip(examples, comps[1:] + comps[:1])]


def unpaired_length(examples: Sequence[UnpairedExample], limit: int, *, kl: bool = True) -> int:
    """Tokens of the longest row of ``collate_unpaired(examples, ...)`` with largest bucket ``limit``."""
    longest = max(len(e.prompt) + len(e.completion) for e in examples)
    if kl:
        longest = max(longest, max(len(e.prompt) + len(c) for e, c in zip(examples, kl_completions(examples, limit))))
    return longest


def collate_unpaired(
    examples: Sequence[UnpairedExample], *, pad_id: int, buckets: Sequence[int], kl: bool = True
) -> UnpairedBatch:
    """Pads unpaired examples; with ``kl``, the KL rows pair prompt i with completion (i+1) mod B
    (``kl_completions``)."""
    prompts = [e.prompt for e in examples]
    limit = max(buckets)
    t = bucket_length(unpaired_length(examples, limit, kl=kl), buckets)
    ids, attn, comp = pad_sequences(prompts, [e.completion for e in examples], length=t, pad_id=pad_id)
    desirable = np.asarray([bool(e.desirable) for e in examples])
    if not kl:
        return UnpairedBatch(ids, attn, comp, desirable, None, None, None)
    kl_ids, kl_attn, kl_comp = pad_sequences(prompts, kl_completions(examples, limit), length=t, pad_id=pad_id)
    return UnpairedBatch(ids, attn, comp, desirable, kl_ids, kl_attn, kl_comp)


def pairs_to_unpaired(examples: Sequence[PairExample]) -> list[UnpairedExample]:
    """Splits each pair into a desirable (chosen) and an undesirable (rejected) example."""
    out: list[UnpairedExample] = []
    for e in examples:
        out.append(UnpairedExample(e.prompt, e.chosen, True))
        out.append(UnpairedExample(e.prompt, e.rejected, False))
    return out


PROMPT, CHOSEN, REJECTED = 1, 2, 3  # SharedPromptPairs.segment values (0 is padding)


def packed_length(n: int, smallest: int = 16) -> int:
    """Smallest of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x them) >= ``n``."""
    b = smallest
    while True:
        for candidate in (b, b * 3 // 2):
            if n <= candidate:
                return candidate
        b *= 2


def packed_sizes(examples: Sequence[PairExample]) -> tuple[int, int]:
    """``(Tp, N)`` that ``pack_shared_prompt`` needs for these pairs (rounded by ``packed_length``).

    With several processes, compute it over the global batch and pass it to every process's
    ``pack_shared_prompt`` so all of them build the same shapes (``BatchStream.packed_sizes``).
    """
    length = max(len(e.prompt) + len(e.chosen) + len(e.rejected) for e in examples)
    width = max(len(e.chosen) + len(e.rejected) for e in examples)
    return packed_length(length), packed_length(width)


def pack_shared_prompt(
    batch: PairedBatch, *, pad_id: int = 0, sizes: tuple[int, int] | None = None
) -> SharedPromptPairs:
    """Packs each pair of ``batch`` (right-padded, one prompt per row) behind one copy of its prompt.

    A completion token is scored when it is not the first token of its sequence, as in
    ``losses.sequence_logps``. Raises ``ValueError`` naming the row if a row's chosen and
    rejected prompts differ. ``sizes``: ``(Tp, N)``, e.g. ``packed_sizes`` of the global
    batch; by default this batch's own, rounded up by ``packed_length`` so that few shapes
    are compiled.
    """
    rows = []
    for b in range(batch.chosen_ids.shape[0]):
        parts = {}
        for name, ids, attn, comp in (
            ("chosen", batch.chosen_ids[b], batch.chosen_attention_mask[b], batch.chosen_completion_mask[b]),
            ("rejected", batch.rejected_ids[b], batch.rejected_attention_mask[b], batch.rejected_completion_mask[b]),
        ):
            real, in_completion = attn.astype(bool), comp.astype(bool)
            parts[name] = (ids[real & ~in_completion], ids[in_completion])
        prompt = parts["chosen"][0]
        if not np.array_equal(prompt, parts["rejected"][0]):
            raise ValueError(f"row {b}: the chosen and rejected sequences have different prompts")
        rows.append((prompt, parts["chosen"][1], parts["rejected"][1]))

    length, width = sizes or packed_sizes([PairExample(*row) for row in rows])
    if any(len(p) + len(c) + len(r) > length or len(c) + len(r) > width for p, c, r in rows):
        raise ValueError(f"a pair does not fit the packed sizes (Tp, N) = {(length, width)}")
    n = len(rows)
    ids = np.full((n, length), pad_id, np.int32)
    positions = np.zeros((n, length), np.int32)
    segment = np.zeros((n, length), np.int32)
    target_ids = np.full((n, width), pad_id, np.int32)
    source_index = np.zeros((n, width), np.int32)
    target_segment = np.zeros((n, width), np.int32)
    for b, (prompt, chosen, rejected) in enumerate(rows):
        lp = len(prompt)
        ids[b, :lp], positions[b, :lp], segment[b, :lp] = prompt, np.arange(lp), PROMPT
        start, k = lp, 0
        for seg, completion in ((CHOSEN, chosen), (REJECTED, rejected)):
            lc = len(completion)
            ids[b, start : start + lc] = completion
            positions[b, start : start + lc] = lp + np.arange(lc)
            segment[b, start : start + lc] = seg
            for j in range(lc):
                if lp + j == 0:
                    continue  # the first token of a sequence is never predicted
                target_ids[b, k] = completion[j]
                source_index[b, k] = start + j - 1 if j > 0 else lp - 1
                target_segment[b, k] = seg
                k += 1
            start += lc
    return SharedPromptPairs(ids, positions, segment, target_ids, source_index, target_segment)
