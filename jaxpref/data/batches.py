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

    Padding-free packing (``pack_shared_prompt(multi=True)``) puts several pairs in a row:
    pair slot ``k`` of a row has segments ``3k + 1`` (prompt), ``3k + 2``, ``3k + 3``, positions
    restarting at 0, and no attention to the other pairs.

    ``ids``, ``positions``, ``segment``: ``[R, Tp]`` int32; segment 0 padding, ``3k + 1`` prompt,
    ``3k + 2`` chosen, ``3k + 3`` rejected (``R = B`` and ``k = 0`` with one pair per row).
    ``target_ids``, ``source_index``, ``target_segment``, ``target_pair``: ``[R, N]`` int32, one
    entry per scored completion token: its id, the packed index whose output predicts it (the
    previous token of its own sequence), its segment (0 on padding entries), and its pair's index
    in the batch.
    ``pair_slots``: ``[B]`` zeros, one per pair (its length is the batch's pair count).
    """

    ids: np.ndarray
    positions: np.ndarray
    segment: np.ndarray
    target_ids: np.ndarray
    source_index: np.ndarray
    target_segment: np.ndarray
    target_pair: np.ndarray
    pair_slots: np.ndarray


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


PROMPT, CHOSEN, REJECTED = 1, 2, 3  # SharedPromptPairs.segment values of a row's first pair (0 is padding)
SLOT = 3  # pair k of a row has segments 3k + PROMPT, 3k + CHOSEN, 3k + REJECTED


# From this length up, packed sizes step by quarter octaves (128, 160, 192, 224, 256, 320, ...):
# a long pair alone in its row wastes at most a fifth of it on padding instead of a third. On
# SmolLM2-135M pairs of 1788 tokens (prompt 256, responses 766) then fill rows of 1792, not 2048.
FINE_STEPS_FROM = 128


def packed_length(n: int, smallest: int = 16) -> int:
    """Smallest of 16, 24, 32, 48, 64, 96 (powers of two and 1.5x them), then 128, 160, 192, 224,
    256, 320, ... (quarter octaves from ``FINE_STEPS_FROM``) that is >= ``n``."""
    b = smallest
    while True:
        for quarters in ((4, 5, 6, 7) if b >= FINE_STEPS_FROM else (4, 6)):
            if n <= b * quarters // 4:
                return b * quarters // 4
        b *= 2


def _pair_length(e) -> int:
    return len(e.prompt) + len(e.chosen) + len(e.rejected)


def pack_bins(lengths: Sequence[int], row_length: int) -> list[list[int]]:
    """First-fit decreasing: groups of indices whose ``lengths`` sum to at most ``row_length``
    (the longest first, ties by index, so the same lengths always give the same rows)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            if lengths[i] > row_length:
                raise ValueError(f"a pair of {lengths[i]} tokens does not fit rows of {row_length}")
            rows.append([i])
            room.append(row_length - lengths[i])
    return [sorted(r) for r in rows]


def packed_sizes(examples: Sequence[PairExample], *, multi: bool = False, slices: int = 1,
                 row_multiple: int = 1) -> tuple[int, ...]:
    """The sizes ``pack_shared_prompt`` needs for these pairs (rounded by ``packed_length``):
    ``(Tp, N)`` with one pair per row; with ``multi`` (padding-free: several pairs per row)
    ``(Tp, N, R)``, ``R`` rows per slice.

    ``slices``: the examples are ``slices`` equal contiguous parts packed separately (one per
    process); ``R`` is the most rows any part needs, rounded up to a multiple of ``row_multiple``
    (each process's share of the mesh's batch axes). Compute it over the global batch and pass it
    to every process's ``pack_shared_prompt`` so all of them build the same shapes
    (``BatchStream.packed_sizes``).
    """
    length = packed_length(max(_pair_length(e) for e in examples))
    if not multi:
        return length, packed_length(max(len(e.chosen) + len(e.rejected) for e in examples))
    per = len(examples) // slices
    rows, width = 1, 1
    for k in range(slices):
        part = examples[k * per:(k + 1) * per]
        bins = pack_bins([_pair_length(e) for e in part], length)
        rows = max(rows, len(bins))
        width = max(width, *(sum(len(part[i].chosen) + len(part[i].rejected) for i in b) for b in bins))
    return length, packed_length(width), -(-rows // row_multiple) * row_multiple


def pack_shared_prompt(
    batch: PairedBatch, *, pad_id: int = 0, sizes: tuple[int, ...] | None = None, multi: bool = False,
    first_pair: int = 0,
) -> SharedPromptPairs:
    """Packs each pair of ``batch`` (right-padded, one prompt per row) behind one copy of its prompt.

    ``multi`` (padding-free packing): several pairs share a row (``pack_bins``), each with its
    own segments ``SLOT * k + {PROMPT, CHOSEN, REJECTED}``, restarted positions, and attention
    that never crosses pairs. A completion token is scored when it is not the first token of its
    sequence, as in ``losses.sequence_logps``. Raises ``ValueError`` naming the row if a row's
    chosen and rejected prompts differ. ``sizes``: ``(Tp, N)`` or, with ``multi``, ``(Tp, N, R)``,
    e.g. ``packed_sizes`` of the global batch; by default this batch's own, rounded up by
    ``packed_length`` so that few shapes are compiled. ``first_pair``: the global index of the
    batch's first pair (``target_pair`` indexes the global batch when processes each pack a slice).
    """
    pairs = []
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
        pairs.append(PairExample(prompt, parts["chosen"][1], parts["rejected"][1]))

    sizes = sizes or packed_sizes(pairs, multi=multi)
    length, width = sizes[:2]
    if multi:
        rows = pack_bins([_pair_length(e) for e in pairs], length)
        n = sizes[2]
        if len(rows) > n:
            raise ValueError(f"the pairs need {len(rows)} rows, more than the packed sizes' R = {n}")
    else:
        rows, n = [[b] for b in range(len(pairs))], len(pairs)
    if any(_pair_length(pairs[i]) > length for i in range(len(pairs))) or any(
            sum(len(pairs[i].chosen) + len(pairs[i].rejected) for i in r) > width for r in rows):
        raise ValueError(f"a pair does not fit the packed sizes (Tp, N) = {(length, width)}")
    ids = np.full((n, length), pad_id, np.int32)
    positions = np.zeros((n, length), np.int32)
    segment = np.zeros((n, length), np.int32)
    target_ids = np.full((n, width), pad_id, np.int32)
    source_index = np.zeros((n, width), np.int32)
    target_segment = np.zeros((n, width), np.int32)
    target_pair = np.zeros((n, width), np.int32)
    for r, members in enumerate(rows):
        start, k = 0, 0
        for slot, p in enumerate(members):
            prompt, chosen, rejected = pairs[p][:3]
            lp, base = len(prompt), SLOT * slot
            ids[r, start:start + lp], positions[r, start:start + lp] = prompt, np.arange(lp)
            segment[r, start:start + lp] = base + PROMPT
            prompt_end, start = start + lp, start + lp
            for seg, completion in ((base + CHOSEN, chosen), (base + REJECTED, rejected)):
                lc = len(completion)
                ids[r, start:start + lc] = completion
                positions[r, start:start + lc] = lp + np.arange(lc)
                segment[r, start:start + lc] = seg
                for j in range(lc):
                    if lp + j == 0:
                        continue  # the first token of a sequence is never predicted
                    target_ids[r, k] = completion[j]
                    source_index[r, k] = start + j - 1 if j > 0 else prompt_end - 1
                    target_segment[r, k] = seg
                    target_pair[r, k] = first_pair + p
                    k += 1
                start += lc
    return SharedPromptPairs(ids, positions, segment, target_ids, source_index, target_segment, target_pair,
                             np.zeros(len(pairs), np.int32))
