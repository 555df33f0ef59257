"""Judges: pointwise rewards and pairwise preferences ``P(y1 > y2 | x)`` for online methods.

- ``OracleJudge``: the built-in task's programmatic reward with Bradley-Terry preferences.
- ``RewardModelJudge``: a ``models.RewardModel`` (``configs/reward_model.py`` writes one), run on
  the mesh like the policy; preferences are ``sigmoid(s1 - s2)``.
- the intransitive judge of ``tasks.intransitive`` (pairwise only).

All judges take token-id lists (prompts, responses) and return numpy arrays, identical on
every process. Host judges (the oracle, Python functions) run through ``HostJudge``: each
process judges its share of the rows and the results are gathered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from jax.sharding import Mesh

from jaxpref.infer.scoring import reward_model_scores
from jaxpref.runtime.sharding import gather_host_rows

TokenLists = Sequence[Sequence[int]]

JUDGES = ("oracle", "reward_model", "intransitive")


class Judge(Protocol):
    def rewards(self, prompts: TokenLists, responses: TokenLists) -> np.ndarray:
        """``[N]`` pointwise scores."""

    def prob(self, prompts: TokenLists, responses_1: TokenLists, responses_2: TokenLists) -> np.ndarray:
        """``[N]`` probabilities that response 1 is preferred to response 2."""


def sigmoid(x) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # no overflow for large |x|


class OracleJudge:
    """The task's reward; Bradley-Terry preferences with the task's temperature."""

    def __init__(self, task):
        self.task = task

    def rewards(self, prompts, responses):
        return np.asarray(self.task.rewards(prompts, responses), np.float64)

    def prob(self, prompts, responses_1, responses_2):
        return self.task.preference_probs(self.rewards(prompts, responses_1), self.rewards(prompts, responses_2))


class HostJudge:
    """Runs a host (numpy / Python) judge on this process's share of the rows and gathers the
    results, so every process gets all of them while each judges only ``1 / P``."""

    def __init__(self, inner: Any):
        self.inner = inner

    def rewards(self, prompts, responses):
        return gather_host_rows(lambda lo, hi: self.inner.rewards(prompts[lo:hi], responses[lo:hi]), len(prompts))

    def prob(self, prompts, responses_1, responses_2):
        return gather_host_rows(
            lambda lo, hi: self.inner.prob(prompts[lo:hi], responses_1[lo:hi], responses_2[lo:hi]), len(prompts))

    def __getattr__(self, name):  # e.g. IntransitiveJudge.styles
        if name == "inner":  # not set yet (an instance made without __init__, e.g. by copy)
            raise AttributeError(name)
        return getattr(self.inner, name)


class RewardModelJudge:
    """A ``models.RewardModel`` as a judge, scored on ``mesh`` (params already placed there)."""

    def __init__(self, model, params, *, pad_id: int, mesh: Mesh | None = None, batch_size: int = 256):
        self.model, self.params, self.pad_id, self.mesh, self.batch_size = model, params, pad_id, mesh, batch_size

    def rewards(self, prompts, responses):
        return reward_model_scores(self.model, self.params, prompts, responses, pad_id=self.pad_id,
                                   batch_size=self.batch_size, mesh=self.mesh)

    def prob(self, prompts, responses_1, responses_2):
        return sigmoid(self.rewards(prompts, responses_1) - self.rewards(prompts, responses_2))


def make_judge(cfg, policy, mesh: Mesh, rules) -> Judge:
    """The judge named by ``config.judge.kind``: ``oracle``, ``reward_model`` (``judge.path``) or
    ``intransitive`` (``jaxpref.tasks.intransitive``)."""
    kind = cfg.judge.kind
    if kind == "oracle":
        if policy.task is None:
            raise ValueError("config.judge.kind: 'oracle' needs a built-in task")
        return HostJudge(OracleJudge(policy.task))
    if kind == "reward_model":
        if not cfg.judge.path:
            raise ValueError("config.judge.path: set the folder written by configs/reward_model.py")
        import jax

        from jaxpref.models.reward import load_reward_model
        from jaxpref.runtime.sharding import param_shardings

        model, params = load_reward_model(cfg.judge.path)
        params = jax.device_put(params, param_shardings(params, mesh, rules))
        return RewardModelJudge(model, params, pad_id=policy.pad_id, mesh=mesh,
                                batch_size=cfg.sampling.batch_size)
    if kind == "intransitive":  # pairwise-only style cycle (optional judge.cycle_prob)
        from jaxpref.tasks.intransitive import DEFAULT_CYCLE_PROB, IntransitiveJudge
        from jaxpref.tasks.synthetic import EchoTask

        if not isinstance(policy.task, EchoTask):
            raise ValueError("config.judge.kind: 'intransitive' needs the built-in echo task")
        return HostJudge(IntransitiveJudge(policy.task, cycle_prob=cfg.judge.get("cycle_prob", DEFAULT_CYCLE_PROB)))
    raise ValueError(f"config.judge.kind: unknown {kind!r}; known: {', '.join(JUDGES)}")
