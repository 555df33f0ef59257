"""Trains a Bradley-Terry reward model (``configs/reward_model.py``), usable as the judge of RSO,
SPPO and SELM (``config.judge.kind = "reward_model"``, ``config.judge.path``).

The backbone starts from the starting policy, a zero-initialised scalar ``score`` head reads the
last real token (``models.RewardModel``), and the loss is ``-log sigmoid(s(x, y_w) - s(x, y_l))``
over the preference pairs (the ``bradley_terry`` objective): one round on the built-in task's
pairs (or ``config.data.source``). The model is written to ``<workdir>/reward_model`` as a Hugging
Face ``*ForSequenceClassification`` folder with the policy's tokenizer, which transformers, TRL
and ``judge.kind=reward_model`` all load.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from jaxpref.config import require
from jaxpref.data.training_set import TrainingSet
from jaxpref.infer.scoring import reward_model_scores
from jaxpref.methods import Method, load_own_data
from jaxpref.models import init_reward_model
from jaxpref.models.reward import write_reward_model
from jaxpref.runtime import distributed, sharding
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


def objectives(cfg) -> tuple[str, ...]:
    return ("bradley_terry",)


def validate(cfg) -> None:
    require(cfg.loss == "bradley_terry", "loss",
            f"the reward_model job trains with the 'bradley_terry' loss, got {cfg.loss!r}")


def make_model(policy):
    return init_reward_model(policy.params, policy.model.config)


def make_round(ctx, index: int) -> Round | None:
    if index > 0:
        return None
    cfg = ctx.cfg
    if cfg.data.source:
        pairs, ctx.state["data_report"] = load_own_data(cfg, ctx.policy.tokenizer, "paired")
    else:
        require(ctx.policy.task is not None and hasattr(ctx.policy.task, "preference_dataset"), "data.source",
                "a custom model needs a preference dataset")
        pairs = ctx.policy.task.preference_dataset(cfg.seed, cfg.data.num_pairs)
        ctx.state["data_report"] = {"kept": len(pairs), "source": f"builtin:{cfg.task.name}"}
    return Round(cfg.method, TrainingSet(list(pairs)), "bradley_terry", cfg.num_steps, seed=cfg.seed, init="sft",
                 reference=Reference("sft", precompute=False))


def summarize(ctx, result) -> dict:
    cfg = ctx.cfg
    out_dir = os.path.join(ctx.workdir, "reward_model")
    params = sharding.to_host(result.params)  # a collective with several processes
    if distributed.is_main_process():
        write_reward_model(out_dir, ctx.model, params, tokenizer=ctx.policy.tokenizer)
    out = {"job": "reward_model", "steps": sum(r["steps"] for r in result.history),
           "reward_model_path": out_dir, "data": ctx.state.get("data_report")}
    task = ctx.policy.task
    if task is not None and hasattr(task, "preference_dataset"):
        # Agreement with the oracle on fresh behaviour-policy pairs (ties in the oracle excluded).
        held = task.preference_dataset(cfg.seed + 1, cfg.eval.num_prompts)
        prompts = [e.prompt for e in held]
        kw = dict(pad_id=ctx.pad_id, batch_size=cfg.eval.batch_size, mesh=ctx.mesh)
        s_c = reward_model_scores(ctx.model, result.params, prompts, [e.chosen for e in held], **kw)
        s_r = reward_model_scores(ctx.model, result.params, prompts, [e.rejected for e in held], **kw)
        r_c, r_r = task.rewards(prompts, [e.chosen for e in held]), task.rewards(prompts, [e.rejected for e in held])
        decided = r_c != r_r
        agree = float(np.mean((s_c > s_r)[decided] == (r_c > r_r)[decided]))
        log.info("reward model: oracle agreement %.3f on %d held-out pairs", agree, int(decided.sum()))
        out.update(oracle_agreement=agree, held_out_pairs=int(decided.sum()))
    return out


METHOD = Method("reward_model", make_round, objectives, validate, summarize, evaluate_policy=False,
                make_model=make_model)
