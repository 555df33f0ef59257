"""Prompt datasets for the online methods (RSO, SPPO, SELM, active DPO), in TRL's prompt-only
conventions.

Sources are those of preference data (``preference.load_preference_dataset``: a ``.json`` /
``.jsonl`` / ``.parquet`` file, a folder of them with one file per split, a ``save_to_disk``
folder, or a hub name when online). Each row has a ``prompt`` column that is either

- a string, tokenized as ``tokenizer(prompt)["input_ids"]`` (with the special tokens the
  tokenizer adds itself, as preference prompts are), or
- a list of ``{"role", "content"}`` messages, rendered with the policy tokenizer's chat template
  and the generation prompt, then tokenized with ``add_special_tokens=False``.

A prompt longer than ``max_prompt_length`` tokens keeps its last tokens (counted in the report).
Bad rows (``missing_field``, ``not_a_string``, ``malformed_messages``, ``empty_prompt``) are
dropped and counted, or with ``on_bad_row="error"`` raise ``BadRowError`` naming the source, the
0-based row and the field, as for preference data.

Each prompt keeps its ``raw`` form (the string or the message list) next to its token ids, so
judges that read text (``jaxpref.judges``) see the prompt as the dataset wrote it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from jaxpref.data.preference import (
    BadRowError,
    DataReport,
    _messages,
    _Problem,
    _render_prompt,
    _text,
    available_splits,
    load_preference_dataset,
)


@dataclasses.dataclass
class PromptSet:
    """Encoded prompts: ``ids[i]`` (token ids, unpadded) and ``raw[i]`` (the dataset's string or
    message list) for each kept row, and the encoding report."""

    ids: list[list[int]]
    raw: list[Any]
    report: DataReport

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def max_tokens(self) -> int:
        return max(len(p) for p in self.ids)


def _is_conversational(dataset: Any, first_row: Mapping[str, Any], column: str) -> bool:
    import datasets

    features = getattr(dataset, "features", None)
    if features is not None and column in features:
        return isinstance(features[column], (list, datasets.List, datasets.LargeList))
    return isinstance(first_row.get(column), list)


def encode_prompts(rows: Iterable[Mapping[str, Any]], tokenizer: Any, *, max_prompt_length: int,
                   source_name: str = "<prompts>", on_bad_row: str = "error", column: str = "prompt") -> PromptSet:
    """Validates and tokenizes prompt-only rows (see the module docstring)."""
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
    report = DataReport(source=source_name)
    it = iter(rows)
    first = next(it, None)
    if first is None:
        return PromptSet([], [], report)
    names = list(getattr(rows, "column_names", None) or first.keys())
    if column not in names:
        raise ValueError(f"{source_name}: missing column {column!r}; columns are {names}")
    conversational = _is_conversational(rows, first, column)
    if conversational and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{source_name}: chat-message prompts need a tokenizer with a chat_template")

    def reject(index: int, problem: _Problem) -> None:
        if on_bad_row == "error":
            raise BadRowError(source_name, index, problem.field, problem.reason, problem.detail)
        report.dropped[problem.reason] = report.dropped.get(problem.reason, 0) + 1

    texts, raws, indices = [], [], []
    for index, row in enumerate([first, *it]):
        try:
            if conversational:
                messages = _messages(row, column)
                texts.append(_render_prompt(tokenizer, messages, column))
                raws.append(messages)
            else:
                text = _text(row, column)
                if not text.strip():
                    raise _Problem(column, "empty_prompt", "blank prompt")
                texts.append(text)
                raws.append(text)
            indices.append(index)
        except _Problem as problem:
            reject(index, problem)
    encoded = tokenizer(texts, add_special_tokens=not conversational)["input_ids"] if texts else []
    ids, kept_raw = [], []
    for index, raw, tokens in zip(indices, raws, encoded):
        if not tokens:
            reject(index, _Problem(column, "empty_prompt", "the prompt encodes to no tokens"))
            continue
        if len(tokens) > max_prompt_length:
            tokens = tokens[len(tokens) - max_prompt_length:]
            report.truncated_prompt += 1
        ids.append([int(t) for t in tokens])
        kept_raw.append(raw)
        report.kept += 1
    return PromptSet(ids, kept_raw, report)


def load_prompts(source: str, tokenizer: Any, *, max_prompt_length: int, split: str = "train",
                 on_bad_row: str = "error", column: str = "prompt") -> PromptSet:
    """``load_preference_dataset(source, split)`` encoded by ``encode_prompts``."""
    dataset = load_preference_dataset(source, split=split)
    return encode_prompts(dataset, tokenizer, max_prompt_length=max_prompt_length, source_name=source,
                          on_bad_row=on_bad_row, column=column)


@dataclasses.dataclass
class PromptData:
    """A job's prompts: ``train`` (drawn by the rounds) and ``eval`` (held out, or None), with
    where the held-out prompts came from."""

    train: PromptSet
    eval: PromptSet | None
    eval_from: str | None

    def raw_of(self) -> dict[tuple[int, ...], Any]:
        """``token ids -> raw prompt`` over both sets (what text judges read)."""
        out = {}
        for part in (self.train, self.eval):
            if part is not None:
                out.update({tuple(p): r for p, r in zip(part.ids, part.raw)})
        return out


def split_prompt_data(source: str, tokenizer: Any, *, max_prompt_length: int, split: str = "train",
                      eval_source: str = "", eval_split: str = "test", eval_fraction: float = 0.05,
                      on_bad_row: str = "error") -> PromptData:
    """Training and held-out prompts: held-out ones from ``eval_source`` if set, else the
    source's ``eval_split`` split when it has one, else the last ``eval_fraction`` of its rows
    (none when that is under 2 prompts)."""
    kw = dict(max_prompt_length=max_prompt_length, on_bad_row=on_bad_row)
    train = load_prompts(source, tokenizer, split=split, **kw)
    if eval_source:
        return PromptData(train, load_prompts(eval_source, tokenizer, **kw), eval_source)
    if eval_split in (available_splits(source) or []) and eval_split != split:
        return PromptData(train, load_prompts(source, tokenizer, split=eval_split, **kw), f"{source} [{eval_split}]")
    n_eval = int(len(train) * eval_fraction)
    if n_eval < 2:
        return PromptData(train, None, None)
    cut = len(train) - n_eval
    held = PromptSet(train.ids[cut:], train.raw[cut:], DataReport(source=source, kept=n_eval))
    train = PromptSet(train.ids[:cut], train.raw[:cut], train.report)
    return PromptData(train, held, f"last {n_eval} prompts of {source}")


def draw(pool_size: int, seed: int, start: int, n: int) -> np.ndarray:
    """Indices ``[n]`` into a pool of ``pool_size``: positions ``[start, start + n)`` of a stream
    of shuffled passes over the pool (pass ``e`` is permutation ``(seed, e)``), so consecutive
    draws (rounds) see every prompt once before any repeats."""
    out = np.empty(n, np.int64)
    for i, pos in enumerate(range(start, start + n)):
        epoch, offset = divmod(pos, pool_size)
        if i == 0 or offset == 0:
            order = np.random.default_rng([seed, epoch]).permutation(pool_size)
        out[i] = order[offset]
    return out
