"""Value checks for config entries: a type and a range (or a set of choices), as plain data.

``Check(float, low=0, low_open=True).problem(x)`` says why ``x`` is not a valid value (``None``
when it is). Used by the loss hyper-parameter table (``jaxpref.objectives.HYPERPARAMETERS``) and
by the table of every other config key (``jaxpref.config.CHECKS``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Check:
    """A type (``int``, ``float``, ``bool`` or ``str``) and a range or a set of choices.

    ``low``/``high`` bound a number (``*_open``: strictly); ``choices`` lists the allowed values.
    ``float`` accepts ints too; numbers must be finite.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is invalid, or None."""
        if self.choices is not None:
            if value in self.choices:
                return None
            return f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be True or False, got {value!r}"
        if self.kind is str:
            return None if isinstance(value, str) else f"must be a string, got {value!r}"
        numeric = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, got {value}"
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if low_ok and high_ok:
            return None
        return f"must be {self.describe()}, got {value:g}"

    def describe(self) -> str:
        """The range in words: ``> 0``, ``in [0, 0.5)``, ``one of 'a', 'b'``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(repr, self.choices))
        low, high = (None if b is None else f"{b:g}" for b in (self.low, self.high))
        if low is not None and high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if low is not None:
            return f"{'>' if self.low_open else '>='} {low}"
        if high is not None:
            return f"{'<' if self.high_open else '<='} {high}"
        return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}.get(self.kind, "")


POSITIVE = Check(float, low=0, low_open=True)
NON_NEGATIVE = Check(float, low=0)
POSITIVE_INT = Check(int, low=1)
NON_NEGATIVE_INT = Check(int, low=0)
FLAG = Check(bool)
PROBABILITY = Check(float, low=0, high=1)
