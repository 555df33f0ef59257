"""Loading, validating and tokenizing preference data.

Sources (``load_preference_dataset``): a local ``.json``/``.jsonl``/``.parquet`` file, a local
directory of such files (splits inferred by ``datasets`` from the file names, as on the hub), a
folder written by ``Dataset.save_to_disk``/``DatasetDict.save_to_disk``, or a hub dataset name
(online only). JSON files are checked record by record first, so a malformed line is reported
with its file and 1-based line number.

Column conventions (``Columns``; names and layout overridable, layout auto-detected):

- paired text: ``prompt``, ``chosen``, ``rejected`` are strings;
- paired conversational: ``chosen``/``rejected`` are lists of ``{"role", "content"}`` messages,
  the prompt is either an explicit ``prompt`` message list (then ``chosen``/``rejected`` are one
  assistant message each) or, when the dataset has no ``prompt`` column, the longest shared
  message prefix of ``chosen`` and ``rejected`` (TRL's "implicit prompt"; what follows it must be
  exactly one assistant message on each side);
- unpaired (KTO): ``prompt``, ``completion`` (strings, or a message list and a one-assistant-
  message list) and ``label`` (``bool`` or ``0``/``1``: desirable or not).

A dataset is conversational when its response column (``chosen`` or ``completion``) has a list
feature, or, without features (plain iterables, some streams), when the first row's value is a
list.

Tokenization (``eos`` is ``tokenizer.eos_token_id``):

- text prompt: ``tokenizer(prompt)["input_ids"]``, i.e. with the special tokens the tokenizer
  adds itself (BOS for most causal LMs);
- conversational prompt: ``apply_chat_template(messages, add_generation_prompt=True,
  tokenize=False)`` tokenized with ``add_special_tokens=False`` (the template owns BOS);
- response, both layouts: the response text (the assistant message's ``content`` when
  conversational) tokenized with ``add_special_tokens=False``, then ``[eos]``. The template's own
  end-of-turn markup is not used: for a chat model whose end-of-turn token is not its EOS, set
  the tokenizer's ``eos_token`` to the end-of-turn token.

Truncation (lengths in tokens, ``1 <= max_prompt_length < max_length``):

1. the prompt keeps its **last** ``max_prompt_length`` tokens (left truncation; a BOS at its
   start is dropped with the rest);
2. each response keeps its first ``max_length - len(prompt)`` tokens (right truncation; a cut
   response loses its EOS).

Every response therefore keeps at least one token and ``len(prompt) + len(response) <=
max_length``. ``DataReport`` counts the rows whose prompt / any response was cut.

Bad rows (reason keys of ``DataReport.dropped``): ``missing_field``, ``not_a_string``,
``malformed_messages`` (not a list of role/content string messages, wrong response shape, chat
template error), ``empty_response`` (blank text, or text with no tokens), ``empty_prompt`` (the
prompt encodes to no tokens), ``chosen_equals_rejected`` (same text, or same token ids after
truncation), ``invalid_label``. With ``on_bad_row="error"`` the first one raises ``BadRowError``
(a ``ValueError``) naming the source, the 0-based row index and the field; with ``"drop"`` the
row is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import datasets
import jinja2.exceptions
import numpy as np

from jaxpref.data.batches import PairExample, UnpairedExample

Kind = Literal["paired", "unpaired", "sft"]
OnBadRow = Literal["error", "drop"]

DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_CHUNK_ROWS = 1024  # rows validated, then tokenized in one batched call


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_preference_dataset(
    source: str, *, split: str = "train", streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """Loads preference data from a local file, directory, saved dataset or hub name.

    Args:
      source: path to a ``.json``/``.jsonl``/``.parquet`` file, a directory of such files, a
        ``save_to_disk`` folder, or a hub dataset name such as ``"org/name"``.
      split: split to return. A single file is returned whole under this name; a saved
        ``Dataset`` (not a ``DatasetDict``) is returned whole whatever the split.
      streaming: return a ``datasets.IterableDataset`` instead of a ``datasets.Dataset``.

    Raises:
      FileNotFoundError: ``source`` is neither an existing path nor a loadable hub dataset.
      ValueError: a malformed JSON record (message names file and line), an unsupported file
        type, mixed file types in one directory, or a missing split.
    """
    path = pathlib.Path(source).expanduser()
    if path.is_file():
        return _load_file(path, split=split, streaming=streaming)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _load_saved(path, split=split, streaming=streaming)
        return _load_dir(path, split=split, streaming=streaming)
    if not _HUB_ID.match(source) or path.suffix.lower() in DATA_SUFFIXES:
        raise FileNotFoundError(f"no such file or directory: {source!r}")
    return _load_hub(source, split=split, streaming=streaming)


def available_splits(source: str) -> list[str] | None:
    """The split names of a local folder source (files named ``train.jsonl``, ``test.jsonl``, ...,
    or a ``save_to_disk`` folder); None for a single file (one split) or a hub name."""
    path = pathlib.Path(source).expanduser()
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        with open(path / "dataset_dict.json") as f:
            return list(json.load(f).get("splits", []))
    if (path / "state.json").is_file():
        return None
    return [str(s) for s in datasets.load_dataset_builder(str(path)).config.data_files]


def _load_file(path: pathlib.Path, *, split: str, streaming: bool):
    builder = DATA_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise ValueError(f"{path}: unsupported file type; expected one of {sorted(DATA_SUFFIXES)}")
    if builder == "json":
        check_json_file(path)
    size = path.stat().st_size
    if size == 0 or (builder == "json" and size < 1 << 20 and not path.read_text(encoding="utf-8").strip()):
        return datasets.Dataset.from_list([])  # no rows: the caller names the file and says so
    return datasets.load_dataset(
        builder, data_files={split: str(path)}, split=split, streaming=streaming
    )


def _load_dir(path: pathlib.Path, *, split: str, streaming: bool):
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in DATA_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise FileNotFoundError(f"{path}: no {'/'.join(sorted(DATA_SUFFIXES))} files")
    builders = {DATA_SUFFIXES[p.suffix.lower()] for p in files}
    if len(builders) > 1:
        raise ValueError(f"{path}: mixes {sorted(builders)} files; keep one format per directory")
    for p in files:
        if DATA_SUFFIXES[p.suffix.lower()] == "json":
            check_json_file(p)
    return datasets.load_dataset(str(path), split=split, streaming=streaming)


def _load_saved(path: pathlib.Path, *, split: str, streaming: bool):
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r}; splits are {sorted(loaded)}")
        loaded = loaded[split]
    return loaded.to_iterable_dataset() if streaming else loaded


def _load_hub(name: str, *, split: str, streaming: bool):
    not_local = f"{name!r} is not a local file or directory"
    if datasets.config.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            f"{not_local}, and the Hugging Face Hub is offline (HF_HUB_OFFLINE)"
        )
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except (ConnectionError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{not_local}, and loading it from the hub failed: {e}") from e


def check_json_file(path: pathlib.Path) -> None:
    """Checks that a ``.json``/``.jsonl`` file holds JSON records ``datasets`` can read.

    A ``.json`` file may hold one JSON document or JSON lines; a ``.jsonl`` file holds one JSON
    object per non-blank line.

    Raises:
      ValueError: naming ``path`` and the 1-based line of the first malformed record.
    """
    if path.suffix.lower() == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
            return
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # not JSON lines: a malformed single document
                raise ValueError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from e
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                _check_json_line(path, lineno, line)


def _check_json_line(path: pathlib.Path, lineno: int, line: str) -> None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: line {lineno}: malformed JSON ({e.msg}, column {e.colno})"
        ) from e
    if isinstance(record, dict):
        return
    raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")


# ----------------------------------------------------------------------------------------------
# Report and errors
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DataReport:
    """What encoding did to a dataset: rows kept, dropped (by reason) and truncated."""

    source: str
    kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    truncated_prompt: int = 0
    truncated_response: int = 0

    @property
    def total(self) -> int:
        """Rows seen: kept plus dropped."""
        return self.kept + sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts, for metric loggers."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One log line, e.g. ``data.jsonl: kept 98/100 rows (dropped empty_response=2); ...``."""
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(self.dropped.items())) or "none"
        return (
            f"{self.source}: kept {self.kept}/{self.total} rows (dropped {dropped}); "
            f"truncated prompts {self.truncated_prompt}, responses {self.truncated_response}"
        )


class BadRowError(ValueError):
    """A row that cannot be encoded; names the source, the 0-based row and the field."""

    def __init__(self, source: str, row: int, field: str, reason: str, detail: str):
        super().__init__(f"{source}: row {row}: field {field!r}: {reason}: {detail}")
        self.source, self.row, self.field, self.reason = source, row, field, reason


class _Problem(Exception):
    """Raised inside row handling; becomes a ``BadRowError`` or a drop count."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(detail)
        self.field, self.reason, self.detail = field, reason, detail


# ----------------------------------------------------------------------------------------------
# Column layout
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Columns:
    """Column names and layout. ``None`` layout fields are detected by ``resolve``.

    ``conversational``: responses (and the prompt) are message lists, not strings.
    ``implicit_prompt``: paired conversational data without a prompt column; the prompt is the
    shared message prefix of chosen and rejected.
    """

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    completion: str = "completion"
    label: str = "label"
    conversational: bool | None = None
    implicit_prompt: bool | None = None

    def resolve(
        self, dataset: Any, first_row: Mapping[str, Any], kind: Kind, source: str
    ) -> Columns:
        """Fills the layout fields and checks the needed columns exist.

        Args:
          dataset: the rows; its ``features``/``column_names`` are used when it has them.
          first_row: its first row (layout fallback when there are no features).
          kind: ``"paired"`` or ``"unpaired"``.
          source: name used in error messages.
        """
        names = list(getattr(dataset, "column_names", None) or first_row.keys())
        responses = [self.chosen, self.rejected] if kind == "paired" else [self.completion]
        conversational = self.conversational
        if conversational is None:
            conversational = _is_list_column(dataset, first_row, responses[0])
        implicit = self.implicit_prompt
        if implicit is None:
            implicit = kind == "paired" and conversational and self.prompt not in names
        if implicit and not (kind == "paired" and conversational):
            raise ValueError(f"{source}: an implicit prompt needs paired conversational data")
        needed = ([] if implicit else [self.prompt]) + responses
        needed += [self.label] if kind == "unpaired" else []
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValueError(f"{source}: missing column(s) {missing}; columns are {names}")
        return dataclasses.replace(self, conversational=conversational, implicit_prompt=implicit)


def _is_list_column(dataset: Any, first_row: Mapping[str, Any], column: str) -> bool:
    features = getattr(dataset, "features", None)
    if features is not None and column in features:
        return isinstance(features[column], (list, datasets.List, datasets.LargeList))
    return isinstance(first_row.get(column), list)


# ----------------------------------------------------------------------------------------------
# Row validation: one row -> texts to tokenize
# ----------------------------------------------------------------------------------------------


class _RowText(NamedTuple):
    """A validated row: prompt text (chat template applied) and its response texts."""

    index: int
    prompt: str
    responses: tuple[str, ...]  # (chosen, rejected) or (completion,)
    desirable: bool | None


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None:
        raise _Problem(column, "missing_field", "no value")
    if not isinstance(value, str):
        raise _Problem(column, "not_a_string", f"expected a string, got {type(value).__name__}")
    return value


def _response_text(text: str, column: str) -> str:
    if not text.strip():
        raise _Problem(column, "empty_response", "blank response")
    return text


def _messages(row: Mapping[str, Any], column: str) -> list[dict[str, str]]:
    """Validates a non-empty list of ``{"role": str, "content": str}`` dicts (``None`` keys,
    from Arrow struct columns, are dropped)."""
    value = row.get(column)
    if value is None:
        raise _Problem(column, "missing_field", "no value")
    if not isinstance(value, list) or not value:
        raise _Problem(column, "malformed_messages", "expected a non-empty list of messages")
    out = []
    for j, m in enumerate(value):
        if not (isinstance(m, Mapping) and isinstance(m.get("role"), str)):
            raise _Problem(column, "malformed_messages", f"message {j} has no string 'role'")
        if not isinstance(m.get("content"), str):
            raise _Problem(column, "malformed_messages", f"message {j} has no string 'content'")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def _assistant_content(messages: Sequence[Mapping[str, str]], column: str) -> str:
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = [m["role"] for m in messages]
        raise _Problem(
            column, "malformed_messages", f"expected one assistant message, got roles {roles}"
        )
    return _response_text(messages[0]["content"], column)


def _render_prompt(tokenizer: Any, messages: list[dict[str, str]], column: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except jinja2.exceptions.TemplateError as e:
        raise _Problem(column, "malformed_messages", f"chat template failed: {e}") from e


def _split_implicit(row: Mapping[str, Any], cols: Columns) -> tuple[list, list, list]:
    """Splits chosen/rejected conversations into (shared prompt, chosen tail, rejected tail)."""
    chosen, rejected = _messages(row, cols.chosen), _messages(row, cols.rejected)
    if chosen == rejected:
        raise _Problem(cols.rejected, "chosen_equals_rejected", "identical conversations")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise _Problem(cols.chosen, "malformed_messages", "chosen and rejected share no prompt")
    return chosen[:k], chosen[k:], rejected[k:]


def _pair_row(index: int, row: Mapping[str, Any], cols: Columns, tokenizer: Any) -> _RowText:
    if not cols.conversational:
        prompt = _text(row, cols.prompt)
        chosen = _response_text(_text(row, cols.chosen), cols.chosen)
        rejected = _response_text(_text(row, cols.rejected), cols.rejected)
    else:
        if cols.implicit_prompt:
            prompt_msgs, chosen_msgs, rejected_msgs = _split_implicit(row, cols)
            prompt_col = cols.chosen
        else:
            prompt_msgs, prompt_col = _messages(row, cols.prompt), cols.prompt
            chosen_msgs, rejected_msgs = _messages(row, cols.chosen), _messages(row, cols.rejected)
        chosen = _assistant_content(chosen_msgs, cols.chosen)
        rejected = _assistant_content(rejected_msgs, cols.rejected)
        prompt = _render_prompt(tokenizer, prompt_msgs, prompt_col)
    if chosen == rejected:
        raise _Problem(cols.rejected, "chosen_equals_rejected", "identical responses")
    return _RowText(index, prompt, (chosen, rejected), None)


def _label(row: Mapping[str, Any], column: str) -> bool:
    value = row.get(column)
    if value is None:
        raise _Problem(column, "missing_field", "no value")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise _Problem(column, "invalid_label", f"expected a bool or 0/1, got {value!r}")


def _unpaired_row(index: int, row: Mapping[str, Any], cols: Columns, tokenizer: Any, *,
                  labelled: bool = True) -> _RowText:
    if cols.conversational:
        prompt = _render_prompt(tokenizer, _messages(row, cols.prompt), cols.prompt)
        completion = _assistant_content(_messages(row, cols.completion), cols.completion)
    else:
        prompt = _text(row, cols.prompt)
        completion = _response_text(_text(row, cols.completion), cols.completion)
    return _RowText(index, prompt, (completion,), _label(row, cols.label) if labelled else True)


def _sft_row(index: int, row: Mapping[str, Any], cols: Columns, tokenizer: Any) -> _RowText:
    """A ``prompt``/``completion`` row for SFT (no label; the example is marked desirable)."""
    return _unpaired_row(index, row, cols, tokenizer, labelled=False)


# ----------------------------------------------------------------------------------------------
# Tokenization and truncation
# ----------------------------------------------------------------------------------------------


def _truncate(
    prompt: list[int], responses: list[list[int]], *, max_length: int, max_prompt_length: int
) -> tuple[list[int], list[list[int]], bool, bool]:
    """Left-truncates the prompt to ``max_prompt_length``, then right-truncates each response so
    that prompt + response <= ``max_length``. Returns (prompt, responses, prompt_cut, any_cut)."""
    prompt_cut = len(prompt) > max_prompt_length
    if prompt_cut:
        prompt = prompt[len(prompt) - max_prompt_length :]
    room = max_length - len(prompt)
    response_cut = any(len(r) > room for r in responses)
    return prompt, [r[:room] for r in responses], prompt_cut, response_cut


class _Tokenized(NamedTuple):
    prompt: list[int]
    responses: list[list[int]]
    prompt_cut: bool
    response_cut: bool


def _tokenize_rows(
    rows: Sequence[_RowText],
    tokenizer: Any,
    *,
    conversational: bool,
    prompt_column: str,
    response_columns: Sequence[str],
    max_length: int,
    max_prompt_length: int,
) -> Iterator[_Tokenized | _Problem]:
    """Tokenizes validated rows in two batched calls, appends EOS and truncates; yields one
    result, or the problem that rejects the row, per row."""
    prompts = tokenizer([r.prompt for r in rows], add_special_tokens=not conversational)[
        "input_ids"
    ]
    flat = tokenizer([t for r in rows for t in r.responses], add_special_tokens=False)["input_ids"]
    per_row = len(response_columns)
    eos = tokenizer.eos_token_id
    for i, prompt in enumerate(prompts):
        responses = flat[i * per_row : (i + 1) * per_row]
        empty = [c for c, r in zip(response_columns, responses) if not r]
        if not prompt:
            yield _Problem(prompt_column, "empty_prompt", "the prompt encodes to no tokens")
        elif empty:
            yield _Problem(empty[0], "empty_response", "the response encodes to no tokens")
        else:
            tok = _Tokenized(
                *_truncate(
                    list(prompt),
                    [list(r) + [eos] for r in responses],
                    max_length=max_length,
                    max_prompt_length=max_prompt_length,
                )
            )
            if per_row == 2 and tok.responses[0] == tok.responses[1]:
                detail = f"identical token ids after truncation to {max_length=}"
                yield _Problem(response_columns[1], "chosen_equals_rejected", detail)
            else:
                yield tok


def _example(text: _RowText, tok: _Tokenized) -> PairExample | UnpairedExample:
    if text.desirable is None:
        return PairExample(tok.prompt, *tok.responses)
    return UnpairedExample(tok.prompt, tok.responses[0], text.desirable)


def _check_arguments(tokenizer: Any, max_length: int, max_prompt_length: int, on_bad_row: str):
    if not 1 <= max_prompt_length < max_length:
        raise ValueError(
            f"need 1 <= max_prompt_length < max_length, got {max_prompt_length=} {max_length=}"
        )
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id")


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _encode(
    dataset: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    kind: Kind,
    columns: Columns | None,
    max_length: int,
    max_prompt_length: int,
    source_name: str,
    on_bad_row: OnBadRow,
) -> tuple[list[PairExample] | list[UnpairedExample], DataReport]:
    """Shared driver: validate rows, tokenize in chunks, truncate, build examples."""
    _check_arguments(tokenizer, max_length, max_prompt_length, on_bad_row)
    report = DataReport(source=source_name)
    rows = iter(dataset)
    first = next(rows, None)
    if first is None:
        return [], report
    cols = (columns or Columns()).resolve(dataset, first, kind, source_name)
    if cols.conversational and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{source_name}: conversational data needs a tokenizer with a chat_template"
        )
    row_text = {"paired": _pair_row, "unpaired": _unpaired_row, "sft": _sft_row}[kind]
    prompt_column = cols.chosen if cols.implicit_prompt else cols.prompt
    response_columns = [cols.chosen, cols.rejected] if kind == "paired" else [cols.completion]

    def reject(index: int, problem: _Problem) -> None:
        if on_bad_row == "error":
            raise BadRowError(source_name, index, problem.field, problem.reason, problem.detail)
        report.dropped[problem.reason] = report.dropped.get(problem.reason, 0) + 1

    examples: list[Any] = []
    for chunk in _chunks(enumerate(itertools.chain([first], rows)), _CHUNK_ROWS):
        valid = []
        for index, row in chunk:
            try:
                valid.append(row_text(index, row, cols, tokenizer))
            except _Problem as problem:
                reject(index, problem)
        if not valid:
            continue
        tokenized = _tokenize_rows(
            valid,
            tokenizer,
            conversational=cols.conversational,
            prompt_column=prompt_column,
            response_columns=response_columns,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
        )
        for text, tok in zip(valid, tokenized):
            if isinstance(tok, _Problem):
                reject(text.index, tok)
                continue
            examples.append(_example(text, tok))
            report.kept += 1
            report.truncated_prompt += tok.prompt_cut
            report.truncated_response += tok.response_cut
    return examples, report


def encode_pairs(
    dataset: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    source_name: str = "<dataset>",
    on_bad_row: OnBadRow = "error",
    columns: Columns | None = None,
) -> tuple[list[PairExample], DataReport]:
    """Tokenizes paired preference rows (text or conversational; see the module docstring).

    Args:
      dataset: rows as mappings: a ``datasets.Dataset``/``IterableDataset`` or a list of dicts.
      tokenizer: a ``transformers`` tokenizer with ``eos_token_id`` (and a ``chat_template``
        for conversational data).
      max_length: cap on ``len(prompt) + len(chosen)`` and ``len(prompt) + len(rejected)``.
      max_prompt_length: cap on ``len(prompt)``; must be smaller than ``max_length``.
      source_name: names the data in errors and in the report.
      on_bad_row: ``"error"`` raises ``BadRowError`` at the first bad row; ``"drop"`` skips and
        counts it.
      columns: column names/layout; defaults to ``Columns()`` with the layout detected.

    Returns:
      ``(examples, report)``: one ``PairExample`` of unpadded token-id lists per kept row, in
      dataset order, and the counts.
    """
    return _encode(
        dataset,
        tokenizer,
        kind="paired",
        columns=columns,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source_name=source_name,
        on_bad_row=on_bad_row,
    )


def encode_unpaired(
    dataset: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    source_name: str = "<dataset>",
    on_bad_row: OnBadRow = "error",
    columns: Columns | None = None,
) -> tuple[list[UnpairedExample], DataReport]:
    """Tokenizes unpaired (KTO) rows ``prompt``/``completion``/``label``.

    Arguments as in ``encode_pairs``; ``max_length`` caps ``len(prompt) + len(completion)``.

    Returns:
      ``(examples, report)``: one ``UnpairedExample`` per kept row (``desirable`` = label).
    """
    return _encode(
        dataset,
        tokenizer,
        kind="unpaired",
        columns=columns,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        source_name=source_name,
        on_bad_row=on_bad_row,
    )


def load_and_encode(
    source: str,
    tokenizer: Any,
    *,
    kind: Kind,
    max_length: int,
    max_prompt_length: int,
    on_bad_row: OnBadRow = "error",
    split: str = "train",
    columns: Columns | None = None,
) -> tuple[list[PairExample] | list[UnpairedExample], DataReport]:
    """``load_preference_dataset`` then ``encode_pairs``/``encode_unpaired``; errors name
    ``source``."""
    if kind not in ("paired", "unpaired", "sft"):
        raise ValueError(f"kind must be 'paired', 'unpaired' or 'sft', got {kind!r}")
    dataset = load_preference_dataset(source, split=split)
    return _encode(dataset, tokenizer, kind=kind, columns=columns, max_length=max_length,
                   max_prompt_length=max_prompt_length, source_name=source, on_bad_row=on_bad_row)
