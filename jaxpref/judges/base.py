"""What every judge is: pointwise rewards and/or pairwise preferences over token-id lists.

Methods call judges on token ids (``prompts[i]``, ``responses[i]``) and get numpy arrays, the same
on every process. A judge is *pointwise* (``rewards``; its preferences are Bradley-Terry on the
rewards, ``probs_from_rewards``) or *pairwise only* (``prob``, e.g. an intransitive judge or a
PairRM-style function). Host judges (the oracle, Python functions) run through ``HostJudge``:
each process judges its share of the rows and the results are gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from jaxpref.runtime.sharding import gather_host_rows

TokenLists = Sequence[Sequence[int]]


class Judge(Protocol):
    pointwise: bool

    def rewards(self, prompts: TokenLists, responses: TokenLists) -> np.ndarray:
        """``[N]`` pointwise scores (pointwise judges only)."""

    def prob(self, prompts: TokenLists, responses_1: TokenLists, responses_2: TokenLists) -> np.ndarray:
        """``[N]`` probabilities that response 1 is preferred to response 2."""


def sigmoid(x) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # no overflow for large |x|


class BradleyTerry:
    """Mixin of pointwise judges: ``P(y1 > y2) = sigmoid((r1 - r2) / temperature)``."""

    pointwise = True
    temperature = 1.0

    def probs_from_rewards(self, rewards_1, rewards_2) -> np.ndarray:
        return sigmoid((np.asarray(rewards_1, np.float64) - np.asarray(rewards_2, np.float64)) / self.temperature)

    def prob(self, prompts, responses_1, responses_2):
        return self.probs_from_rewards(self.rewards(prompts, responses_1), self.rewards(prompts, responses_2))


class OracleJudge(BradleyTerry):
    """The built-in task's reward; Bradley-Terry preferences with the task's temperature."""

    def __init__(self, task):
        self.task = task

    def rewards(self, prompts, responses):
        return np.asarray(self.task.rewards(prompts, responses), np.float64)

    def probs_from_rewards(self, rewards_1, rewards_2):
        return self.task.preference_probs(rewards_1, rewards_2)


class HostJudge:
    """Runs a host (numpy / Python) judge on this process's share of the rows and gathers the
    results, so every process gets all of them while each judges only ``1 / P``."""

    def __init__(self, inner: Any):
        self.inner = inner

    def rewards(self, prompts, responses):
        return gather_host_rows(lambda lo, hi: self.inner.rewards(prompts[lo:hi], responses[lo:hi]), len(prompts))

    def prob(self, prompts, responses_1, responses_2):
        if getattr(self.inner, "pointwise", False):  # each process scores its share once per side
            return self.inner.probs_from_rewards(self.rewards(prompts, responses_1), self.rewards(prompts, responses_2))
        return gather_host_rows(
            lambda lo, hi: self.inner.prob(prompts[lo:hi], responses_1[lo:hi], responses_2[lo:hi]), len(prompts))

    def __getattr__(self, name):  # pointwise, probs_from_rewards, IntransitiveJudge.styles, ...
        if name == "inner":  # not set yet (an instance made without __init__, e.g. by copy)
            raise AttributeError(name)
        return getattr(self.inner, name)


class CountingJudge:
    """Counts the judge's work: ``calls`` = completions scored by a pointwise judge (two per
    comparison) or comparisons made by a pairwise one. Everything else is forwarded."""

    def __init__(self, inner: Any):
        self.inner, self.calls = inner, 0

    @property
    def pointwise(self) -> bool:
        return bool(getattr(self.inner, "pointwise", False))

    def rewards(self, prompts, responses):
        if not self.pointwise:
            raise TypeError("this judge is pairwise only: it gives preferences (prob), not rewards")
        self.calls += len(prompts)
        return self.inner.rewards(prompts, responses)

    def prob(self, prompts, responses_1, responses_2):
        self.calls += len(prompts) * (2 if self.pointwise else 1)
        return self.inner.prob(prompts, responses_1, responses_2)

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def reward_matrix(judge, prompts, responses: list[list[list[int]]]) -> np.ndarray:
    """``[n, K]`` rewards of K responses per prompt from one call of a pointwise judge."""
    n, k = len(prompts), len(responses[0])
    flat_p = [prompts[b] for b in range(n) for _ in range(k)]
    return np.asarray(judge.rewards(flat_p, [y for ys in responses for y in ys]), np.float64).reshape(n, k)


def preference_matrix(judge, prompts, responses: list[list[list[int]]]) -> np.ndarray:
    """``[n, K, K]`` with ``P[b, i, j] = P(y_i > y_j | x_b)`` and ``P[b, i, i] = 1/2``.

    A pointwise judge scores each of the ``n * K`` responses once and compares the rewards
    (``probs_from_rewards``); a pairwise judge is asked the ``K (K - 1) / 2`` pairs per prompt.
    """
    n, k = len(prompts), len(responses[0])
    ii, jj = np.triu_indices(k, 1)
    if getattr(judge, "pointwise", False):
        r = reward_matrix(judge, prompts, responses)
        upper = np.asarray(judge.probs_from_rewards(r[:, ii], r[:, jj]), np.float64)
    else:
        flat_p = [prompts[b] for b in range(n) for _ in ii]
        y1 = [responses[b][i] for b in range(n) for i in ii]
        y2 = [responses[b][j] for b in range(n) for j in jj]
        upper = np.asarray(judge.prob(flat_p, y1, y2), np.float64).reshape(n, len(ii))
    mat = np.full((n, k, k), 0.5)
    mat[:, ii, jj] = upper
    mat[:, jj, ii] = 1.0 - upper
    return mat
