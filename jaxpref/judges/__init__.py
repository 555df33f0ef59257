"""Judges of online samples: who scores and compares the policy's responses.

``config.judge.kind`` (``make_judge``):

- ``oracle``: the built-in task's programmatic reward (``base.OracleJudge``);
- ``reward_model``: a Hugging Face ``*ForSequenceClassification`` folder (``judge.path``) with its
  own tokenizer (``reward_model``; ``load_hf_reward_model`` is the Python API);
- ``function``: Python reward functions ``"package.module:callable"`` (``judge.function``,
  several comma-separated, summed with ``judge.weights``), as TRL's ``reward_funcs``;
- ``pairwise_function``: a Python ``P(a > b)`` function (``judge.function``), pairwise only;
- ``intransitive``: the echo task's style cycle (``tasks.intransitive``), pairwise only.

Pointwise judges give Bradley-Terry preferences ``sigmoid((r1 - r2) / judge.temperature)`` (the
oracle uses its task's temperature). Every judge a job builds counts its work (``calls``).
"""

from __future__ import annotations

from jaxpref.judges.base import BradleyTerry, CountingJudge, HostJudge, Judge, OracleJudge, sigmoid
from jaxpref.judges.functions import FunctionJudge, PairwiseFunctionJudge, import_callable, parse_list
from jaxpref.judges.reward_model import HFRewardModel, RetokenizedJudge, load_hf_reward_model, same_vocabulary
from jaxpref.judges.text import TextView

JUDGES = ("oracle", "reward_model", "function", "pairwise_function", "intransitive")

__all__ = [
    "JUDGES", "BradleyTerry", "CountingJudge", "FunctionJudge", "HFRewardModel", "HostJudge", "Judge",
    "OracleJudge", "PairwiseFunctionJudge", "RetokenizedJudge", "TextView", "import_callable", "load_hf_reward_model",
    "make_judge", "same_vocabulary", "sigmoid",
]


def make_judge(cfg, policy, mesh, rules, *, view: TextView | None = None) -> CountingJudge:
    """The judge named by ``config.judge.kind`` (module docstring), counting its calls.

    ``view`` turns token ids into the text judges read (default: decoding with the policy
    tokenizer). Errors name the config key.
    """
    from jaxpref.config import ConfigError

    j, kind = cfg.judge, cfg.judge.kind
    if view is None and kind in ("reward_model", "function", "pairwise_function"):
        view = TextView(policy.tokenizer, policy.eos_id)
    if kind == "oracle":
        if policy.task is None:
            raise ConfigError("config.judge.kind: 'oracle' needs a built-in task; with your own model use "
                              "reward_model, function or pairwise_function")
        return CountingJudge(HostJudge(OracleJudge(policy.task)))
    if kind == "reward_model":
        if not j.path:
            raise ConfigError("config.judge.path: set a Hugging Face *ForSequenceClassification folder (e.g. the "
                              "reward_model folder configs/reward_model.py writes)")
        rm = load_hf_reward_model(j.path, mesh=mesh, rules=rules, batch_size=cfg.sampling.batch_size,
                                  max_length=j.get("max_length", 1024), temperature=j.get("temperature", 1.0))
        same = same_vocabulary(rm.tokenizer, policy.tokenizer)
        return CountingJudge(rm if same else RetokenizedJudge(rm, view))
    if kind in ("function", "pairwise_function"):
        if not j.get("function", ""):
            raise ConfigError("config.judge.function: set 'package.module:callable' (or 'file.py:callable')")
        try:
            specs = parse_list(j.function, key="judge.function")
            if kind == "pairwise_function":
                if len(specs) != 1:
                    raise ValueError("config.judge.function: a pairwise judge is one function")
                return CountingJudge(HostJudge(PairwiseFunctionJudge(specs[0], view)))
            weights = [float(w) for w in parse_list(j.weights, key="judge.weights")] if j.get("weights", "") \
                else [1.0] * len(specs)
            return CountingJudge(HostJudge(FunctionJudge(specs, weights, view, temperature=j.get("temperature", 1.0))))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if kind == "intransitive":  # pairwise-only style cycle (optional judge.cycle_prob)
        from jaxpref.tasks.intransitive import DEFAULT_CYCLE_PROB, IntransitiveJudge
        from jaxpref.tasks.synthetic import EchoTask

        if not isinstance(policy.task, EchoTask):
            raise ConfigError("config.judge.kind: 'intransitive' needs the built-in echo task")
        return CountingJudge(HostJudge(IntransitiveJudge(policy.task, cycle_prob=j.get("cycle_prob",
                                                                                     DEFAULT_CYCLE_PROB))))
    raise ConfigError(f"config.judge.kind: unknown {kind!r}; known: {', '.join(JUDGES)}")
