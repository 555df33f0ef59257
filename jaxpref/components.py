"""Start-up pieces of a job, each resolved once from the config: policy, data, optimizer.

``main`` stays a linear script by calling these; each raises with the config key at fault.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpref.batches import PairExample, collate_pairs, default_buckets, pairs_to_unpaired
from jaxpref.evaluation import batch_starts
from jaxpref.objectives import Objective
from jaxpref.tasks.synthetic import EOS, PAD, EchoTask, make_tokenizer
from jaxpref.train_step import batch_groups, reference_logps

log = logging.getLogger("jaxpref")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Policy:
    """The starting policy of a run and what is needed to feed and judge it.

    ``reward_fn(prompts, responses) -> [N]`` is the oracle on the built-in task, None otherwise.
    """

    model: Any
    params: Any
    tokenizer: Any
    pad_id: int
    eos_id: int
    task: Any
    reward_fn: Callable | None
    info: dict


def echo_task(cfg) -> EchoTask:
    fields = {f.name for f in dataclasses.fields(EchoTask)}
    return EchoTask(**{k: v for k, v in cfg.task.items() if k in fields})


def resolve_policy(cfg) -> Policy:
    """The SFT policy: the cached tiny model for the built-in task, SmolLM2-135M-Instruct for
    the sentiment task, or an HF checkpoint (``model.path``, a folder or a ``.gguf`` file).

    ``config.model.remat`` turns on per-layer recomputation in the backward pass (less
    activation memory, about 5-10% more step time); it does not change any result.
    ``config.model.scan_unroll`` sets how many layers one iteration of the scanned stack runs
    (``CausalLM.scan_unroll``; results equal up to float rounding)."""
    policy = _load_policy(cfg)
    if cfg.model.get("remat", False):
        policy = dataclasses.replace(policy, model=policy.model.clone(remat=True))
    policy = dataclasses.replace(policy, model=policy.model.clone(scan_unroll=cfg.model.get("scan_unroll", 0)))
    return policy


def _load_policy(cfg) -> Policy:
    dtype = DTYPES[cfg.model.dtype]
    if cfg.model.name == "smollm2-135m":
        from jaxpref.assets import asset_path
        from jaxpref.models import load_gguf, load_tokenizer
        from jaxpref.tasks.sentiment import SentimentTask

        path = asset_path("smollm2-135m", download=False)  # the error names the fetch command
        model, params = load_gguf(path, dtype=dtype)
        tokenizer = load_tokenizer(path)
        if cfg.task.name != "sentiment":
            raise ValueError("config.task.name: smollm2-135m runs the 'sentiment' task")
        task = SentimentTask(tokenizer, max_new_tokens=cfg.task.max_new_tokens, bt_temperature=cfg.task.bt_temperature)
        return Policy(model, params, tokenizer, task.pad_id, task.eos_id, task, task.rewards, {"model_path": path})
    if cfg.model.name == "tiny":
        from jaxpref.sft import load_or_train_sft

        task = echo_task(cfg)
        model, params, info = load_or_train_sft(task, cfg.model, cfg.sft, cfg.seed, dtype=dtype)
        return Policy(model, params, make_tokenizer(task), PAD, EOS, task, task.rewards, info)
    if not cfg.model.path:
        raise ValueError("config.model.path: set a local HF checkpoint folder (or model.name='tiny')")
    from jaxpref.models import load_pretrained, load_tokenizer

    model, params = load_pretrained(cfg.model.path, dtype=dtype)
    tokenizer = load_tokenizer(cfg.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Policy(model, params, tokenizer, int(pad_id), int(tokenizer.eos_token_id), None, None,
                  {"model_path": cfg.model.path})


def resolve_data(cfg, policy: Policy, objective: Objective):
    """Training examples, held-out pairs (or None), and a data report dict."""
    if cfg.data.source:
        from jaxpref.data import load_and_encode

        kind = "paired" if objective.paired else "unpaired"
        examples, report = load_and_encode(
            cfg.data.source, policy.tokenizer, kind=kind, max_length=cfg.data.max_length,
            max_prompt_length=cfg.data.max_prompt_length, on_bad_row=cfg.data.on_bad_row,
        )
        n_eval = max(1, len(examples) // 20) if len(examples) >= 2 * cfg.batch_size else 0
        held_out = examples[len(examples) - n_eval:] if n_eval and objective.paired else None
        train = examples[: len(examples) - n_eval] if n_eval else examples
        log.info("data: %s", report.summary())
        return train, held_out, report.to_dict()
    if policy.task is None:
        raise ValueError("config.data.source: a custom model needs a dataset (local file or hub name)")
    pairs = offline_pairs(cfg, policy)
    examples = pairs if objective.paired else pairs_to_unpaired(pairs)
    return examples, None, {"kept": len(examples), "source": f"builtin:{cfg.task.name}"}


def offline_pairs(cfg, policy: Policy) -> list[PairExample]:
    """The built-in task's offline preference pairs.

    Echo: behaviour-policy pairs. Sentiment: two samples per training prompt from the starting
    (SFT) policy, labelled by Bradley-Terry on the VADER reward, as in the DPO paper.
    """
    if isinstance(policy.task, EchoTask):
        return policy.task.preference_dataset(cfg.seed, cfg.data.num_pairs)
    from jaxpref.tasks.sentiment import make_preference_pairs

    prompts = policy.task.train_prompts(cfg.seed, cfg.data.num_pairs)
    return make_preference_pairs(policy.task, policy.model, policy.params, prompts, jax.random.PRNGKey(cfg.seed),
                                 num_samples=cfg.task.get("samples_per_prompt", 2),
                                 pairing=cfg.task.get("pairing", "adjacent"), batch_size=cfg.sampling.batch_size)


def buckets_for(cfg, policy: Policy) -> list[int]:
    max_len = policy.task.max_length if policy.task is not None else cfg.data.max_length
    return default_buckets(max_len)


def make_optimizer(ocfg, total_steps: int) -> optax.GradientTransformation:
    """Clipped AdamW / RMSprop / SGD with linear warmup and cosine decay to 10%."""
    warmup = min(ocfg.warmup_steps, max(total_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, ocfg.learning_rate, warmup, max(total_steps, warmup + 1), end_value=0.1 * ocfg.learning_rate
    )
    if ocfg.name == "adamw":
        opt = optax.adamw(schedule, weight_decay=ocfg.weight_decay)
    elif ocfg.name == "rmsprop":
        opt = optax.rmsprop(schedule)
    elif ocfg.name == "sgd":
        opt = optax.sgd(schedule)
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {ocfg.name!r}; known: adamw, rmsprop, sgd")
    return optax.chain(optax.clip_by_global_norm(ocfg.max_grad_norm), opt)


def precompute_reference(model, ref_params, examples: list[PairExample], *, pad_id: int, buckets, batch_size: int,
                         share_prompt: bool = False):
    """Reference log-probs of every pair, once: ``{"chosen": [N], "rejected": [N]}`` float32.

    ``share_prompt``: score each pair packed behind one copy of its prompt (``config.share_prompt``).
    """
    fn = jax.jit(lambda p, g: reference_logps(model, p, g, ("chosen", "rejected")))
    out = {"chosen": [], "rejected": []}
    for start in batch_starts(len(examples), batch_size, "reference log-probs"):
        chunk = examples[start : start + batch_size]
        n_real = len(chunk)
        chunk = chunk + [chunk[-1]] * (batch_size - n_real)  # one shape per bucket: few compiles
        groups, _ = batch_groups(collate_pairs(chunk, pad_id=pad_id, buckets=buckets), share_prompt=share_prompt,
                                 pad_id=pad_id)
        logps = fn(ref_params, groups)
        for k in out:
            out[k].append(np.asarray(logps[k])[:n_real])
    return {k: np.concatenate(v) for k, v in out.items()}
