"""Trains a Bradley-Terry reward model (``configs/reward_model.py``).

The backbone starts from the SFT policy, a zero-initialised scalar head reads the last real
token, and the loss is ``-log sigmoid(s(x, y_w) - s(x, y_l))`` over the preference pairs. The
model is written to ``<workdir>/reward_model`` for RSO/SELM/SPPO (``config.judge.kind =
"reward_model"``, ``config.judge.path``).
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpref.compiler_options import train_compiler_options
from jaxpref.components import make_optimizer
from jaxpref.data import BatchStream
from jaxpref.judges import init_reward_model, reward_model_scores, save_reward_model
from jaxpref.loop import run_steps
from jaxpref.losses import bradley_terry_loss
from jaxpref.metrics_log import MetricsLogger
from jaxpref.train_state import create_train_state
from jaxpref.train_step import batch_groups

log = logging.getLogger("jaxpref")


def make_reward_step(model, tx):
    """``step(state, groups, extras) -> (state, metrics)`` for paired batches."""

    def loss_fn(params, groups):
        ids = jnp.concatenate([groups["chosen"].ids, groups["rejected"].ids])
        attn = jnp.concatenate([groups["chosen"].attention_mask, groups["rejected"].attention_mask])
        s_w, s_l = jnp.split(model.apply({"params": params}, ids, attn), 2)
        return jnp.mean(bradley_terry_loss(s_w, s_l)), (s_w, s_l)

    def step(state, groups, extras):
        (loss, (s_w, s_l)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, groups)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
        tokens = jnp.sum(groups["chosen"].attention_mask) + jnp.sum(groups["rejected"].attention_mask)
        return state, {"loss": loss, "reward_accuracy": jnp.mean((s_w > s_l).astype(jnp.float32)),
                       "grad_norm": optax.global_norm(grads), "tokens": tokens}

    return step


def run(cfg, workdir: str, policy) -> dict:
    if policy.task is None:
        raise ValueError("config.job: 'reward_model' trains on the built-in task's pairs")
    task = policy.task
    pairs = task.preference_dataset(cfg.seed, cfg.data.num_pairs)
    model, params = init_reward_model(policy.params, policy.model.config)
    tx = make_optimizer(cfg.optimizer, cfg.num_steps)
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(cfg.seed), with_reference=False)
    stream = BatchStream(pairs, batch_size=cfg.batch_size, pad_id=policy.pad_id, buckets=[task.max_length],
                         seed=cfg.seed)
    logger = MetricsLogger(workdir)
    options = train_compiler_options(model.config.hidden_size)
    step_fn = jax.jit(make_reward_step(model, tx), donate_argnums=0, compiler_options=options)
    state, stats = run_steps(step_fn, state, lambda s: batch_groups(stream.batch_at(s)), start=0,
                             stop=cfg.num_steps, logger=logger, log_every=cfg.log_every, desc="reward_model")
    logger.close()
    out_dir = os.path.join(workdir, "reward_model")
    save_reward_model(out_dir, model, state.params)

    # Agreement with the oracle on fresh behaviour-policy pairs (ties in the oracle excluded).
    held = task.preference_dataset(cfg.seed + 1, cfg.eval.num_prompts)
    prompts = [e.prompt for e in held]
    s_c = reward_model_scores(model, state.params, prompts, [e.chosen for e in held], pad_id=policy.pad_id)
    s_r = reward_model_scores(model, state.params, prompts, [e.rejected for e in held], pad_id=policy.pad_id)
    r_c = task.rewards(prompts, [e.chosen for e in held])
    r_r = task.rewards(prompts, [e.rejected for e in held])
    decided = r_c != r_r
    agree = float(np.mean((s_c > s_r)[decided] == (r_c > r_r)[decided]))
    log.info("reward model: oracle agreement %.3f on %d held-out pairs", agree, int(decided.sum()))
    return {"method": cfg.method, "job": "reward_model", "steps": int(state.step), "reward_model_path": out_dir,
            "oracle_agreement": agree, "held_out_pairs": int(decided.sum()),
            "train_tokens_per_second": stats.tokens_per_second}
