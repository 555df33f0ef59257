"""The SFT job: supervised fine-tuning (token-mean NLL of the completions, the ``sft`` objective).

    python -m jaxpref.main --config=configs/sft.py
    python -m jaxpref.main --config=configs/sft.py --config.model.name=hf --config.model.path=DIR \\
        --config.data.source=sft.jsonl

Data: ``config.data.source`` with ``prompt``/``completion`` rows (strings, or a message list and a
one-assistant-message list; no label), else the built-in task's behaviour-policy responses. On
the built-in task the tiny model starts from its random init and is evaluated against it.
"""

from __future__ import annotations

import logging

from jaxpref.config import require
from jaxpref.data.training_set import TrainingSet
from jaxpref.methods import Method, load_own_data, training_steps
from jaxpref.train.rounds import Round

log = logging.getLogger("jaxpref")


def objectives(cfg) -> tuple[str, ...]:
    return ("sft",)


def validate(cfg) -> None:
    require(cfg.loss == "sft", "loss", f"the sft job trains with the 'sft' loss, got {cfg.loss!r}")


def make_round(ctx, index: int) -> Round | None:
    if index > 0:
        return None
    cfg = ctx.cfg
    if cfg.data.source:
        examples, ctx.state["data_report"] = load_own_data(cfg, ctx.policy.tokenizer, "sft")
        data, shapes = TrainingSet(examples), None
        steps = training_steps(cfg, len(data))
    else:
        from jaxpref.policy import sft_training_set

        task = ctx.policy.task
        require(task is not None and hasattr(task, "sft_dataset"), "data.source",
                "set an SFT dataset (prompt/completion rows); the built-in echo task has its own")
        data = sft_training_set(task, cfg.seed, cfg.sft.num_examples)
        ctx.state["data_report"] = {"kept": len(data), "source": f"builtin:{cfg.task.name}"}
        shapes = (task.max_prompt_tokens, task.max_response_tokens)
        steps = cfg.num_steps
    return Round(cfg.method, data, "sft", steps, seed=cfg.seed, init="sft", shapes=shapes)


def summarize(ctx, result) -> dict:
    return {"steps": sum(r["steps"] for r in result.history), "resumed_from_step": result.resumed_from_step,
            "data": ctx.state.get("data_report")}


METHOD = Method("sft", make_round, objectives, validate, summarize, random_init=True)
