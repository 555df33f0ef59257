"""A round's training set: tokenized examples plus per-example arrays, savable to one ``.npz``.

Every round of every job trains on a ``TrainingSet``: the offline job's preference pairs, the
pairs an online round sampled and judged, the SFT examples. ``extras[name][i]`` belongs to
``examples[i]`` (SPPO's win-rate estimates, precomputed reference log-probs ``ref_<group>``);
the train loop slices them with the same indices as the examples.

``save``/``load`` write the set as flat int32 token arrays with offsets (no pickle), so an
online round whose data came from sampling can be resumed mid-round without sampling again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from jaxpref.data.batches import PairExample, UnpairedExample

Example = PairExample | UnpairedExample


@dataclasses.dataclass
class TrainingSet:
    """``examples`` (all ``PairExample`` or all ``UnpairedExample``) and ``extras`` of ``[N]`` arrays."""

    examples: list[Example]
    extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, value in self.extras.items():
            if len(value) != len(self.examples):
                raise ValueError(f"extras[{name!r}] has {len(value)} rows for {len(self.examples)} examples")

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def paired(self) -> bool:
        return bool(self.examples) and isinstance(self.examples[0], PairExample)

    def with_extras(self, **extras: np.ndarray) -> TrainingSet:
        """A copy with more (or replaced) extras."""
        return TrainingSet(self.examples, {**self.extras, **{k: np.asarray(v) for k, v in extras.items()}})

    # --- files ---------------------------------------------------------------------------

    def save(self, path: str) -> None:
        """Writes ``path`` (``.npz``) atomically: a partial file is never left under that name."""
        fields = PairExample._fields if self.paired else UnpairedExample._fields
        arrays: dict[str, np.ndarray] = {"paired": np.asarray(self.paired)}
        for field in fields:
            values = [getattr(e, field) for e in self.examples]
            if field == "sample" and any(v is None for v in values):
                continue  # no sample responses (only SELM rounds have them)
            if field == "desirable":
                arrays[field] = np.asarray(values, bool)
                continue
            arrays[f"{field}_tokens"], arrays[f"{field}_offsets"] = _flatten(values)
        for name, value in self.extras.items():
            arrays[f"extra_{name}"] = np.asarray(value)
        tmp = f"{path}.tmp{os.getpid()}.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> TrainingSet:
        with np.load(path) as f:
            paired = bool(f["paired"])
            kind = PairExample if paired else UnpairedExample
            columns = []
            for field in kind._fields:
                if field == "desirable":
                    columns.append([bool(x) for x in f[field]])
                elif field == "sample" and "sample_tokens" not in f.files:
                    columns.append([None] * len(columns[0]))
                else:
                    columns.append(_unflatten(f[f"{field}_tokens"], f[f"{field}_offsets"]))
            extras = {k[len("extra_"):]: np.asarray(f[k]) for k in f.files if k.startswith("extra_")}
        return cls([kind(*row) for row in zip(*columns)], extras)


def _flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    tokens = np.fromiter((int(t) for r in rows for t in r), np.int32, count=int(offsets[-1]))
    return tokens, offsets


def _unflatten(tokens: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [tokens[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
