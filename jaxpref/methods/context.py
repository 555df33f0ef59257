"""What a method sees of its job: the config, the starting policy, the judge, the mesh, and the
inference helpers it builds rounds with (sampling, scoring, evaluation), all on the mesh.

A method (``jaxpref.methods.METHODS``) is a round producer: ``make_round(ctx, index)`` samples,
judges, pairs or acquires with these helpers and returns a ``train.rounds.Round`` (or None when
the job is done). It never trains: ``train.rounds.run_rounds`` does, and sets ``ctx.params``
to each round's result.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxpref.infer.evaluation import evaluate_against_sft
from jaxpref.infer.sampling import sample_k
from jaxpref.infer.scoring import score_responses
from jaxpref.policy import Policy


@dataclasses.dataclass
class Context:
    """Attributes:
      cfg: the job config.
      policy: the starting policy (its params on the mesh are ``sft_params``).
      model: the module being trained (the policy's, or a reward model's).
      judge: the job's judge (``infer.judges``) or None.
      mesh: the device mesh.
      sft_params: the starting policy's params, on the mesh.
      buckets: the padded lengths of the job's bucketed batches.
      workdir: the job's output folder.
      params: the current policy (after the last round), on the mesh.
      state: the method's own JSON-able state; checkpointed with every round.
      history: one record per finished round (``run_rounds``).
      scratch: per-run values that are not checkpointed (e.g. held-out data).
    """

    cfg: Any
    policy: Policy
    model: Any
    judge: Any
    mesh: Any
    sft_params: Any
    buckets: tuple = ()
    workdir: str = ""
    params: Any = None
    state: dict = dataclasses.field(default_factory=dict)
    history: list = dataclasses.field(default_factory=list)
    scratch: dict = dataclasses.field(default_factory=dict)

    @property
    def pad_id(self) -> int:
        return self.policy.pad_id

    @property
    def eos_id(self) -> int:
        return self.policy.eos_id

    # --- prompts ---------------------------------------------------------------------------

    def train_prompts(self, n: int, *, round_index: int = 0) -> list[list[int]]:
        """Fresh training prompts for a round (a seed stream disjoint from the eval prompts)."""
        return self.policy.task.train_prompts(self.cfg.seed * 1000 + round_index, n)

    def eval_prompts(self, n: int) -> list[list[int]]:
        return self.policy.task.eval_prompts(self.cfg.seed, n)

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt the job's task can draw (None when the task does not say)."""
        return getattr(self.policy.task, "max_prompt_tokens", None)

    def shapes(self, prompts) -> tuple[int, int]:
        """``(max prompt tokens, max response tokens)`` of this job's online rounds: one padded
        shape for every round, whatever its samples' lengths."""
        longest = self.max_prompt_tokens or max(len(p) for p in prompts)
        return int(longest), int(self.cfg.sampling.max_new_tokens)

    # --- sampling and scoring on the mesh ----------------------------------------------------

    def sample(self, params, prompts, k: int, seed: int, *, temperature: float | None = None):
        """``k`` responses per prompt from ``params``: ``(responses[n][k], model_logps[n, k])``."""
        return sample_k(self.model, params, prompts, k, jax.random.PRNGKey(seed), pad_id=self.pad_id,
                        eos_id=self.eos_id, sampling=self.cfg.sampling, mesh=self.mesh, temperature=temperature,
                        prompt_len=self.max_prompt_tokens)

    def greedy(self, params, prompts) -> list[list[int]]:
        """One greedy response per prompt."""
        responses, _ = self.sample(params, prompts, 1, 0, temperature=0.0)
        return [r[0] for r in responses]

    def score(self, params, prompts, responses: list[list[list[int]]]) -> np.ndarray:
        """Log-probs ``[n, K]`` of K responses per prompt under ``params``."""
        k = len(responses[0])
        flat_p = [p for p in prompts for _ in range(k)]
        flat_r = [y for ys in responses for y in ys]
        length = None if self.max_prompt_tokens is None else self.max_prompt_tokens + self.cfg.sampling.max_new_tokens
        return score_responses(self.model, params, flat_p, flat_r, pad_id=self.pad_id,
                               batch_size=self.cfg.sampling.batch_size, mesh=self.mesh,
                               length=length).reshape(len(prompts), k)

    def rewards(self, prompts, responses: list[list[list[int]]]) -> np.ndarray:
        """The judge's pointwise rewards ``[n, K]`` of K responses per prompt."""
        k = len(responses[0])
        flat_p = [p for p in prompts for _ in range(k)]
        return self.judge.rewards(flat_p, [y for ys in responses for y in ys]).reshape(len(prompts), k)

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self, params, num_prompts: int, rng_offset: int = 0) -> dict:
        """Win rate against the starting policy, mean reward and KL on held-out prompts."""
        e = self.cfg.eval
        return evaluate_against_sft(
            self.model, params, self.sft_params, self.eval_prompts(num_prompts), self.judge_rewards,
            jax.random.PRNGKey(self.cfg.seed + 10_000 + rng_offset), eos_id=self.eos_id, pad_id=self.pad_id,
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, temperature=e.temperature, top_k=e.top_k,
            top_p=e.top_p, mesh=self.mesh, prompt_len=self.max_prompt_tokens,
        )

    @property
    def judge_rewards(self):
        """The evaluation reward: the built-in task's oracle (through the host judge)."""
        from jaxpref.infer.judges import HostJudge, OracleJudge

        return HostJudge(OracleJudge(self.policy.task)).rewards

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
