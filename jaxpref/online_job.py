"""What an online method sees of the job: policy, judge, prompts, training, evaluation, rounds.

``OnlineContext`` is handed to ``jaxpref.methods.<name>.run(ctx)``, which returns
``{"params": trained params, "extra": {...}}`` (and optionally a ``"plot"``); the job then
evaluates the final policy against SFT and writes the summary.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxpref.components import Policy, offline_pairs
from jaxpref.evaluation import evaluate_against_sft, sample_responses, score_responses
from jaxpref.judges import OracleJudge, RewardModelJudge, load_reward_model
from jaxpref.online import RoundCheckpoints, Trainer


def make_judge(cfg, policy: Policy):
    """The judge named by ``config.judge.kind``: ``oracle``, ``reward_model`` (``judge.path``) or
    ``intransitive`` (``jaxpref.tasks.intransitive``)."""
    if cfg.judge.kind == "oracle":
        if policy.task is None:
            raise ValueError("config.judge.kind: 'oracle' needs a built-in task")
        return OracleJudge(policy.task)
    if cfg.judge.kind == "reward_model":
        if not cfg.judge.path:
            raise ValueError("config.judge.path: set the folder written by configs/reward_model.py")
        model, params = load_reward_model(cfg.judge.path)
        return RewardModelJudge(model, params, pad_id=policy.pad_id)
    if cfg.judge.kind == "intransitive":  # pairwise-only style cycle (optional judge.cycle_prob)
        from jaxpref.tasks.intransitive import DEFAULT_CYCLE_PROB, IntransitiveJudge
        from jaxpref.tasks.synthetic import EchoTask

        if not isinstance(policy.task, EchoTask):
            raise ValueError("config.judge.kind: 'intransitive' needs the built-in echo task")
        return IntransitiveJudge(policy.task, cycle_prob=cfg.judge.get("cycle_prob", DEFAULT_CYCLE_PROB))
    raise ValueError(f"config.judge.kind: unknown {cfg.judge.kind!r}; known: oracle, reward_model, intransitive")


@dataclasses.dataclass
class OnlineContext:
    cfg: Any
    workdir: str
    policy: Policy
    judge: Any
    trainer: Trainer
    checkpoints: RoundCheckpoints

    @property
    def model(self):
        return self.policy.model

    @property
    def sft_params(self):
        return self.policy.params

    @property
    def pad_id(self) -> int:
        return self.policy.pad_id

    @property
    def eos_id(self) -> int:
        return self.policy.eos_id

    def train_prompts(self, n: int, *, round_index: int = 0) -> list[list[int]]:
        """Fresh training prompts for a round (a seed stream disjoint from the eval prompts)."""
        return self.policy.task.train_prompts(self.cfg.seed * 1000 + round_index, n)

    def offline_pairs(self):
        return offline_pairs(self.cfg, self.policy)

    def resume_rounds(self) -> tuple[int, Any, list]:
        """``(first round to run, policy params, history so far)``."""
        start, tree, meta = self.checkpoints.resume({"params": self.sft_params, "ref": self.sft_params})
        return start, tree["params"], list(meta.get("history", []))

    def save_round(self, round_index: int, params, ref_params, meta: dict) -> None:
        self.checkpoints.save(round_index, {"params": params, "ref": ref_params}, meta)

    def _sampling_kw(self, **overrides) -> dict:
        s = self.cfg.sampling
        kw = dict(eos_id=self.eos_id, pad_id=self.pad_id, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                  temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        return {**kw, **overrides}

    def greedy_responses(self, params, prompts) -> list[list[int]]:
        responses, _ = sample_responses(self.model, params, prompts, jax.random.PRNGKey(0),
                                        **self._sampling_kw(temperature=0.0))
        return responses

    def score_samples(self, params, prompts, responses: list[list[list[int]]]) -> np.ndarray:
        """Log-probs ``[n, K]`` of K responses per prompt under ``params``."""
        k = len(responses[0])
        flat_p = [p for p in prompts for _ in range(k)]
        flat_r = [y for ys in responses for y in ys]
        return score_responses(self.model, params, flat_p, flat_r, pad_id=self.pad_id,
                               batch_size=self.cfg.sampling.batch_size).reshape(len(prompts), k)

    def evaluate(self, params, num_prompts: int, rng_offset: int = 0) -> dict:
        e = self.cfg.eval
        prompts = self.policy.task.eval_prompts(self.cfg.seed, num_prompts)
        return evaluate_against_sft(
            self.model, params, self.sft_params, prompts, self.policy.reward_fn,
            jax.random.PRNGKey(self.cfg.seed + 10_000 + rng_offset), eos_id=self.eos_id, pad_id=self.pad_id,
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, temperature=e.temperature, top_k=e.top_k,
            top_p=e.top_p,
        )

    def quick_eval(self, params, round_index: int) -> dict:
        """Win rate / reward / KL on ``eval.round_prompts`` held-out prompts (per-round curves)."""
        out = self.evaluate(params, self.cfg.eval.round_prompts, rng_offset=1 + round_index)
        return {k: out[k] for k in ("win_rate_vs_sft", "mean_reward", "kl_vs_sft")}


def plot_curves(path: str, curves: dict[str, list[dict]], *, x: str = "labels", y: str = "win_rate_vs_sft") -> None:
    """A PNG line plot of ``y`` against ``x`` for each named curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, points in curves.items():
        ax.plot([p[x] for p in points], [p[y] for p in points], marker="o", label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
