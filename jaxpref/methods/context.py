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

from jaxpref.config import ConfigError
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
      judge: the job's judge (``jaxpref.judges``, counting its calls) or None.
      mesh: the device mesh.
      sft_params: the starting policy's params, on the mesh.
      buckets: the padded lengths of the job's bucketed batches.
      workdir: the job's output folder.
      params: the current policy (after the last round), on the mesh.
      state: the method's own JSON-able state; checkpointed with every round.
      history: one record per finished round (``run_rounds``).
      scratch: per-run values that are not checkpointed (e.g. held-out data).
      prompts: the job's own prompt dataset (``config.data.prompts``: ``data.prompts.PromptData``),
        or None: prompts come from the built-in task.
      lora: the job's ``models.lora.LoraSpec`` or None. With LoRA, ``params`` is the base params with
        the adapter leaves added (``models.lora.combine``); the helpers below merge them first.
      merge: folds LoRA adapters into plain params (``train.rounds.Trainer.plain``), or None.
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
    prompts: Any = None
    lora: Any = None
    merge: Any = None

    def plain(self, params):
        """``params`` with any LoRA adapters folded into the kernels, on the mesh."""
        return params if self.merge is None else self.merge(params)

    @property
    def pad_id(self) -> int:
        return self.policy.pad_id

    @property
    def eos_id(self) -> int:
        return self.policy.eos_id

    # --- prompts ---------------------------------------------------------------------------

    def train_prompts(self, n: int, *, round_index: int = 0) -> list[list[int]]:
        """Training prompts of a round: the ``round_index``-th ``n`` of a seeded stream of shuffled
        passes over ``config.data.prompts`` (every prompt once before any repeats), else fresh ones
        of the built-in task (a seed stream disjoint from the eval prompts)."""
        if self.prompts is not None:
            from jaxpref.data.prompts import draw

            pool = self.prompts.train.ids
            return [list(pool[i]) for i in draw(len(pool), self.cfg.seed, round_index * n, n)]
        if self.policy.task is None:
            raise ConfigError("config.data.prompts: an online job on your own model needs a prompt dataset")
        return self.policy.task.train_prompts(self.cfg.seed * 1000 + round_index, n)

    def eval_prompts(self, n: int) -> list[list[int]]:
        """``n`` held-out prompts (repeated when there are fewer)."""
        if self.prompts is not None:
            from jaxpref.data.prompts import draw

            if self.prompts.eval is None:
                raise ConfigError("config.data.eval_prompts: no held-out prompts to evaluate on (set it, add an "
                                  "eval_split to data.prompts, or raise data.eval_fraction)")
            pool = self.prompts.eval.ids
            return [list(pool[i]) for i in draw(len(pool), self.cfg.seed + 1, 0, n)]
        return self.policy.task.eval_prompts(self.cfg.seed, n)

    @property
    def can_evaluate(self) -> bool:
        """There are held-out prompts and a reward to judge them by."""
        if self.prompts is not None:
            return self.prompts.eval is not None and self.judge is not None
        return self.policy.task is not None

    @property
    def max_prompt_tokens(self) -> int | None:
        """The longest prompt the job can draw (None when the task does not say)."""
        if self.prompts is not None:
            parts = [p for p in (self.prompts.train, self.prompts.eval) if p is not None]
            return max(p.max_tokens for p in parts)
        return getattr(self.policy.task, "max_prompt_tokens", None)

    def shapes(self, prompts) -> tuple[int, int]:
        """``(max prompt tokens, max response tokens)`` of this job's online rounds: one padded
        shape for every round, whatever its samples' lengths."""
        longest = self.max_prompt_tokens or max(len(p) for p in prompts)
        return int(longest), int(self.cfg.sampling.max_new_tokens)

    # --- sampling and scoring on the mesh ----------------------------------------------------

    def sample(self, params, prompts, k: int, seed: int, *, temperature: float | None = None):
        """``k`` responses per prompt from ``params``: ``(responses[n][k], model_logps[n, k])``."""
        return sample_k(self.model, self.plain(params), prompts, k, jax.random.PRNGKey(seed), pad_id=self.pad_id,
                        eos_id=self.eos_id, sampling=self.cfg.sampling, mesh=self.mesh, temperature=temperature,
                        prompt_len=self.max_prompt_tokens)

    def greedy(self, params, prompts) -> tuple[list[list[int]], np.ndarray]:
        """One greedy response per prompt and its model log-prob ``[n]``."""
        responses, logps = self.sample(params, prompts, 1, 0, temperature=0.0)
        return [r[0] for r in responses], logps[:, 0]

    def score(self, params, prompts, responses: list[list[list[int]]]) -> np.ndarray:
        """Log-probs ``[n, K]`` of K responses per prompt under ``params``."""
        k = len(responses[0])
        flat_p = [p for p in prompts for _ in range(k)]
        flat_r = [y for ys in responses for y in ys]
        length = None if self.max_prompt_tokens is None else self.max_prompt_tokens + self.cfg.sampling.max_new_tokens
        return score_responses(self.model, self.plain(params), flat_p, flat_r, pad_id=self.pad_id,
                               batch_size=self.cfg.sampling.batch_size, mesh=self.mesh,
                               length=length).reshape(len(prompts), k)

    def rewards(self, prompts, responses: list[list[list[int]]]) -> np.ndarray:
        """``[n, K]`` scores of K responses per prompt: the judge's rewards, or for a pairwise-only
        judge each response's estimated win rate against the other K - 1 (``preference_matrix``)."""
        from jaxpref.judges.base import preference_matrix, reward_matrix

        if not getattr(self.judge, "pointwise", True):
            return preference_matrix(self.judge, prompts, responses).mean(axis=-1)
        return reward_matrix(self.judge, prompts, responses)

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self, params, num_prompts: int, rng_offset: int = 0) -> dict:
        """Win rate against the starting policy, mean reward and KL on held-out prompts."""
        e = self.cfg.eval
        reward_fn, prob_fn = self.judge_rewards, None
        if reward_fn is None:
            prob_fn = self._eval_judge().prob
        return evaluate_against_sft(
            self.model, self.plain(params), self.sft_params, self.eval_prompts(num_prompts), reward_fn,
            jax.random.PRNGKey(self.cfg.seed + 10_000 + rng_offset), eos_id=self.eos_id, pad_id=self.pad_id,
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, temperature=e.temperature, top_k=e.top_k,
            top_p=e.top_p, mesh=self.mesh, prompt_len=self.max_prompt_tokens, prob_fn=prob_fn,
        )

    def _eval_judge(self):
        """The job's judge without its call counter (evaluation is not training data)."""
        return getattr(self.judge, "inner", self.judge)

    @property
    def judge_rewards(self):
        """The evaluation reward: the built-in task's oracle (through the host judge), or with
        ``config.data.prompts`` the job's own judge (None when it is pairwise only: evaluation then
        uses its preferences)."""
        if self.prompts is None and self.policy.task is not None:
            from jaxpref.judges import HostJudge, OracleJudge

            return HostJudge(OracleJudge(self.policy.task)).rewards
        judge = self._eval_judge()
        return judge.rewards if getattr(judge, "pointwise", False) else None

    def quick_eval(self, params, round_index: int) -> dict:
        """Win rate / reward / KL on ``eval.round_prompts`` held-out prompts (per-round curves; none
        with 0)."""
        if not self.can_evaluate or self.cfg.eval.round_prompts == 0:
            return {}
        out = self.evaluate(params, self.cfg.eval.round_prompts, rng_offset=1 + round_index)
        return {k: out[k] for k in ("win_rate_vs_sft", "mean_reward", "kl_vs_sft") if k in out}


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
