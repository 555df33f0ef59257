"""The offline job: the DPO family (DPO, IPO, KTO, SLiC, RSO's sigmoid-/hinge-norm, ...) and
the trust-region variants TR-DPO / TR-IPO / TR-KTO, on a fixed preference dataset.

One round of ``config.num_steps`` steps of ``config.loss`` from the starting policy, whose
reference is the starting policy: frozen (its log-probs precomputed once with
``config.precompute_ref_logps``) or, with ``config.ref_update_every = tau > 0``, updated every
tau steps ``ref <- alpha * policy + (1 - alpha) * ref`` (``config.ref_update_alpha``).

Data: ``config.data.source`` (your own file / folder / hub dataset, see ``jaxpref.data``), else
the built-in task's pairs (echo: behaviour-policy pairs; sentiment: samples of the starting
model labelled by the oracle, as in the DPO paper).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from jaxpref.config import require
from jaxpref.data.batches import PairExample, pairs_to_unpaired
from jaxpref.data.stream import budget_tokens, epoch_order, token_budget_batches
from jaxpref.data.training_set import TrainingSet
from jaxpref.infer.evaluation import held_out_kto_separation, held_out_preference_accuracy
from jaxpref.infer.sampling import sample_responses
from jaxpref.methods import Method, check_loss, load_own_data, training_steps
from jaxpref.objectives import PAIR, UNPAIRED, get_objective
from jaxpref.train.rounds import Reference, Round

log = logging.getLogger("jaxpref")


def objectives(cfg) -> tuple[str, ...]:
    return (cfg.loss,)


def validate(cfg) -> None:
    check_loss(cfg, groups=PAIR + UNPAIRED)
    if not get_objective(cfg.loss).paired:
        import jax as _jax

        require(cfg.batch_size // _jax.process_count() >= 2, "batch_size",
                f"KTO pairs each example with another of its process's batch for the KL estimate; need at least "
                f"2 examples per process, got {cfg.batch_size} over {_jax.process_count()} processes")


def dataset(ctx) -> dict:
    """``{"train": TrainingSet, "held_out": pairs or None, "report": dict}``, built once per run."""
    if "offline_data" not in ctx.scratch:
        ctx.scratch["offline_data"] = _resolve_data(ctx)
    return ctx.scratch["offline_data"]


def _resolve_data(ctx) -> dict:
    cfg, policy = ctx.cfg, ctx.policy
    objective = get_objective(cfg.loss)
    if cfg.data.source:
        kind = "paired" if objective.paired else "unpaired"
        examples, report = load_own_data(cfg, policy.tokenizer, kind)
        train, held_out, report["held_out_from"] = held_out_split(cfg, policy.tokenizer, kind, examples)
        return {"train": TrainingSet(train), "held_out": held_out, "report": report}
    require(policy.task is not None, "data.source", "a custom model needs a dataset (local file or hub name)")
    pairs = builtin_pairs(ctx)
    examples = pairs if objective.paired else pairs_to_unpaired(pairs)
    return {"train": TrainingSet(list(examples)), "held_out": None,
            "report": {"kept": len(examples), "source": f"builtin:{cfg.task.name}"}}


def held_out_split(cfg, tokenizer, kind: str, examples: list) -> tuple[list, list | None, str | None]:
    """``(train, held_out, where held_out came from)`` for own data: ``data.eval_source`` if set,
    else the source's ``data.eval_split`` split when it has one (a folder with ``train.jsonl`` and
    ``test.jsonl``, a saved ``DatasetDict``), else the last ``data.eval_fraction`` of the rows
    (none when that is under 2 examples)."""
    from jaxpref.data.preference import available_splits

    if cfg.data.eval_source:
        held_out, _ = load_own_data(cfg, tokenizer, kind, source=cfg.data.eval_source, key="data.eval_source")
        return examples, held_out, cfg.data.eval_source
    splits = available_splits(cfg.data.source) or []
    if cfg.data.eval_split in splits and cfg.data.eval_split != cfg.data.split:
        held_out, _ = load_own_data(cfg, tokenizer, kind, split=cfg.data.eval_split)
        return examples, held_out, f"{cfg.data.source} [{cfg.data.eval_split}]"
    n_eval = int(len(examples) * cfg.data.eval_fraction)
    if n_eval < 2 or len(examples) - n_eval < cfg.batch_size:
        log.warning("data: no held-out evaluation (%d rows; set config.data.eval_source, add a %r split, or raise "
                    "config.data.eval_fraction)", len(examples), cfg.data.eval_split)
        return examples, None, None
    return examples[: len(examples) - n_eval], examples[len(examples) - n_eval:], \
        f"last {n_eval} rows of {cfg.data.source}"


def builtin_pairs(ctx) -> list[PairExample]:
    """The built-in task's offline preference pairs.

    Echo: behaviour-policy pairs. Sentiment: ``task.samples_per_prompt`` samples per training
    prompt from the starting (SFT) policy, paired (``task.pairing``: adjacent, or each prompt's
    best vs worst) and labelled by Bradley-Terry on the VADER reward, as in the DPO paper.
    """
    cfg, task = ctx.cfg, ctx.policy.task
    from jaxpref.tasks.synthetic import EchoTask

    if isinstance(task, EchoTask):
        return task.preference_dataset(cfg.seed, cfg.data.num_pairs)
    prompts = task.train_prompts(cfg.seed, cfg.data.num_pairs)
    return sampled_preference_pairs(ctx, prompts, jax.random.PRNGKey(cfg.seed),
                                    num_samples=cfg.task.get("samples_per_prompt", 2),
                                    pairing=cfg.task.get("pairing", "adjacent"))


def sampled_preference_pairs(ctx, prompts, rng, *, num_samples: int = 2, pairing: str = "adjacent",
                             min_reward_gap: float = 0.0) -> list[PairExample]:
    """Preference pairs from the starting policy's own samples, labelled by Bradley-Terry on the
    task's oracle.

    ``pairing="adjacent"`` (``num_samples`` even) pairs the samples (0, 1), (2, 3), ...;
    ``"best_worst"`` makes one pair per prompt from its highest- and lowest-reward samples. Each
    pair's winner is drawn with probability ``task.preference_probs(r1, r2)``. Pairs with
    identical responses, or with ``|r1 - r2| < min_reward_gap``, are dropped.
    """
    task = ctx.policy.task
    if pairing not in ("adjacent", "best_worst"):
        raise ValueError(f"config.task.pairing: unknown {pairing!r}; known: adjacent, best_worst")
    if num_samples < 2 or (pairing == "adjacent" and num_samples % 2):
        raise ValueError(f"config.task.samples_per_prompt: must be >= 2 (and even for adjacent pairing), "
                         f"got {num_samples}")
    sample_rng, label_rng = jax.random.split(rng)
    repeated = [list(p) for p in prompts for _ in range(num_samples)]
    responses, _ = sample_responses(
        ctx.model, ctx.sft_params, repeated, sample_rng, eos_id=ctx.eos_id, pad_id=ctx.pad_id,
        max_new_tokens=task.max_new_tokens, batch_size=ctx.cfg.sampling.batch_size, mesh=ctx.mesh,
    )
    rewards = ctx.judge_rewards(repeated, responses)
    if pairing == "adjacent":
        first = np.arange(0, len(repeated), 2)
        second = first + 1
    else:
        best, worst, _ = pick_best_worst(rewards.reshape(len(prompts), num_samples))
        offsets = np.arange(len(prompts)) * num_samples
        first, second = offsets + best, offsets + worst
    first_wins_prob = task.preference_probs(rewards[first], rewards[second])
    first_wins = np.asarray(jax.random.uniform(label_rng, first_wins_prob.shape)) < first_wins_prob
    pairs = []
    for i, j, wins in zip(first, second, first_wins):
        y1, y2 = responses[i], responses[j]
        if y1 == y2 or abs(rewards[i] - rewards[j]) < min_reward_gap:
            continue
        chosen, rejected = (y1, y2) if wins else (y2, y1)
        pairs.append(PairExample(repeated[i], chosen, rejected))
    log.info("preference pairs: kept %d of %d (%s, mean reward of samples %.3f)", len(pairs), len(first_wins),
             pairing, rewards.mean())
    return pairs


def pick_best_worst(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``[n, k]`` scores: ``(best_idx, worst_idx, informative)``; rows whose scores
    are all equal are not informative."""
    best, worst = np.argmax(scores, axis=1), np.argmin(scores, axis=1)
    informative = scores.max(axis=1) > scores.min(axis=1)
    return best, worst, informative


def chosen_rejected(values: np.ndarray, rows: np.ndarray, best: np.ndarray, worst: np.ndarray):
    """``(values[rows, best[rows]], values[rows, worst[rows]])``: the ``[n, k]`` per-sample
    ``values`` of the chosen and rejected responses of the kept ``rows`` (``pick_best_worst``)."""
    return values[rows, best[rows]], values[rows, worst[rows]]


def reference_rule(cfg) -> Reference:
    """The offline job's reference: the starting policy, frozen or trust-region updated."""
    return Reference("sft", every=cfg.ref_update_every, alpha=cfg.ref_update_alpha,
                     precompute=cfg.precompute_ref_logps)


def make_round(ctx, index: int) -> Round | None:
    if index > 0:
        return None
    cfg = ctx.cfg
    data = dataset(ctx)
    ctx.state["data_report"] = data["report"]
    # The sentiment task's pairs are samples of the starting policy: kept with the checkpoints.
    sampled = ctx.policy.task is not None and not cfg.data.source and not is_echo(ctx)
    steps = training_steps(cfg, len(data["train"]), epoch_steps=budget_steps(cfg, data["train"])) \
        if cfg.data.source else cfg.num_steps
    return Round(cfg.method, data["train"], cfg.loss, steps, seed=cfg.seed, init="sft",
                 reference=reference_rule(cfg), sampled=sampled, shapes=builtin_shapes(ctx))


def budget_steps(cfg, train) -> int | None:
    """Batches in epoch 0 under ``data.max_tokens_per_batch`` (None without a budget)."""
    budget = cfg.data.get("max_tokens_per_batch", 0)
    if not budget:
        return None
    return len(token_budget_batches(np.array([budget_tokens(e) for e in train.examples]),
                                    epoch_order(len(train), cfg.seed, 0), budget, cfg.batch_size))


def builtin_shapes(ctx) -> tuple[int, int] | None:
    """One batch shape for the echo task's pairs (its prompt and response lengths are bounded):
    one compiled step instead of one per bucket; None (bucketed batches) for any other data."""
    if ctx.cfg.data.source or not is_echo(ctx):
        return None
    task = ctx.policy.task
    return task.max_prompt_tokens, task.max_response_tokens


def is_echo(ctx) -> bool:
    from jaxpref.tasks.synthetic import EchoTask

    return isinstance(ctx.policy.task, EchoTask)


def summarize(ctx, result) -> dict:
    cfg = ctx.cfg
    out = {"steps": sum(r["steps"] for r in result.history), "resumed_from_step": result.resumed_from_step,
           "data": ctx.state.get("data_report")}
    held_out = dataset(ctx)["held_out"] if cfg.data.source else None  # own data: cheap to reload
    if held_out:
        kw = dict(pad_id=ctx.pad_id, buckets=ctx.buckets, batch_size=cfg.batch_size, beta=cfg.beta, mesh=ctx.mesh)
        evaluate = held_out_preference_accuracy if get_objective(cfg.loss).paired else held_out_kto_separation
        out.update(evaluate(ctx.model, ctx.plain(result.params), ctx.sft_params, held_out, **kw))
        out["held_out_from"] = dataset(ctx)["report"].get("held_out_from")
        n = out.get("held_out_pairs", out.get("held_out_examples", 0))
        if n < 100:
            log.warning("held-out metrics from only %d examples: see their 95%% intervals in summary.json", n)
    return out


METHOD = Method("offline", make_round, objectives, validate, summarize)
