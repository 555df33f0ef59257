"""Python functions as judges, as TRL's ``reward_funcs``.

- pointwise: ``judge.function = "package.module:callable"`` (several, comma-separated, summed
  with ``judge.weights``), each ``callable(prompts, completions) -> list[float]``;
- pairwise: ``judge.kind = pairwise_function`` with
  ``callable(prompts, completions_a, completions_b) -> list[float]`` of ``P(a > b)`` in [0, 1]
  (a PairRM-style judge; SPPO uses it for its K x K matrix).

``prompts`` are as the prompt dataset wrote them (strings, or chat-message lists), completions
are the decoded responses (``judges.text.TextView``). A module may also be a file:
``"path/to/rewards.py:my_reward"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable

import numpy as np

from jaxpref.judges.base import BradleyTerry
from jaxpref.judges.text import TextView


def import_callable(spec: str, *, key: str = "judge.function") -> Callable:
    """The callable named by ``"package.module:name"`` or ``"file.py:name"``; errors name ``key``."""
    module_name, sep, attr = spec.strip().rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"config.{key}: {spec!r} is not 'package.module:callable'")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise FileNotFoundError(f"config.{key}: no such file {module_name!r}")
            loader_spec = importlib.util.spec_from_file_location(os.path.basename(module_name)[:-3], module_name)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"config.{key}: cannot import {module_name!r} ({err})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"config.{key}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"config.{key}: {spec!r} is not callable")
    return fn


def _values(out, n: int, spec: str, *, probability: bool = False) -> np.ndarray:
    try:
        arr = np.asarray(out, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"judge {spec!r} returned {type(out).__name__}, not a list of floats") from None
    if arr.shape != (n,):
        raise ValueError(f"judge {spec!r} returned {arr.size} values for {n} completions")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"judge {spec!r} returned a non-finite value at index {int(np.argmin(np.isfinite(arr)))}")
    if probability and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"judge {spec!r} returned a probability outside [0, 1]: {arr.min():.3g}..{arr.max():.3g}")
    return arr


class FunctionJudge(BradleyTerry):
    """``rewards = sum_i weights[i] * fn_i(prompts, completions)`` on decoded text."""

    def __init__(self, specs: list[str], weights: list[float], view: TextView, *, temperature: float = 1.0):
        if len(weights) != len(specs):
            raise ValueError(f"config.judge.weights: {len(weights)} weights for {len(specs)} functions")
        self.specs, self.weights, self.view, self.temperature = specs, weights, view, float(temperature)
        self.fns = [import_callable(s) for s in specs]

    def rewards(self, prompts, responses) -> np.ndarray:
        p, c = self.view.prompts(prompts), self.view.completions(responses)
        total = np.zeros(len(p), np.float64)
        if not len(p):
            return total
        for spec, w, fn in zip(self.specs, self.weights, self.fns):
            total += w * _values(fn(p, c), len(p), spec)
        return total


class PairwiseFunctionJudge:
    """``prob = fn(prompts, completions_a, completions_b)`` on decoded text (pairwise only)."""

    pointwise = False

    def __init__(self, spec: str, view: TextView):
        self.spec, self.view, self.fn = spec, view, import_callable(spec)

    def prob(self, prompts, responses_1, responses_2) -> np.ndarray:
        p = self.view.prompts(prompts)
        if not len(p):
            return np.zeros((0,), np.float64)
        out = self.fn(p, self.view.completions(responses_1), self.view.completions(responses_2))
        return _values(out, len(p), self.spec, probability=True)

    def rewards(self, prompts, responses):
        raise TypeError(f"judge {self.spec!r} is pairwise only: it gives preferences, not rewards")


def parse_list(text: str, *, key: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (blank items refused, naming ``key``)."""
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise ValueError(f"config.{key}: expected a comma-separated list, got {text!r}")
    return items
