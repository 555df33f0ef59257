"""Judges: pointwise rewards and pairwise preferences ``P(y1 > y2 | x)`` for online methods.

- ``OracleJudge``: the built-in task's programmatic reward with Bradley-Terry preferences.
- ``RewardModel`` / ``RewardModelJudge``: an LM backbone with a scalar head on the last real
  token, trained with the Bradley-Terry loss (``configs/reward_model.py``); preferences are
  ``sigmoid(s1 - s2)``.

All judges take token-id lists (prompts, responses) and return numpy arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.batches import bucket_length, default_buckets, pad_sequences
from jaxpref.models import CausalLM, ModelConfig, as_model_config, default_positions
from jaxpref.models.llama import _attend_mask

TokenLists = Sequence[Sequence[int]]


class Judge(Protocol):
    def rewards(self, prompts: TokenLists, responses: TokenLists) -> np.ndarray:
        """``[N]`` pointwise scores."""

    def prob(self, prompts: TokenLists, responses_1: TokenLists, responses_2: TokenLists) -> np.ndarray:
        """``[N]`` probabilities that response 1 is preferred to response 2."""


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class OracleJudge:
    """The task's reward; Bradley-Terry preferences with the task's temperature."""

    def __init__(self, task):
        self.task = task

    def rewards(self, prompts, responses):
        return np.asarray(self.task.rewards(prompts, responses), np.float64)

    def prob(self, prompts, responses_1, responses_2):
        return self.task.preference_probs(self.rewards(prompts, responses_1), self.rewards(prompts, responses_2))


class RewardModel(nn.Module):
    """``scores[B] = w . h_last + b`` where ``h_last`` is the backbone's final hidden state at
    each row's last real token (right-padded ``[B, T]`` inputs)."""

    config: ModelConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids_bt, attention_mask_bt):
        positions = default_positions(attention_mask_bt)
        slots = jnp.arange(ids_bt.shape[1])
        attend = _attend_mask(attention_mask_bt, slots, slots, self.config.sliding_window)
        h_bte, _ = CausalLM(self.config, dtype=self.dtype, return_hidden=True, name="backbone")(
            ids_bt, positions, attend
        )
        last_b = jnp.maximum(jnp.sum(attention_mask_bt, axis=1) - 1, 0)
        h_be = jnp.take_along_axis(h_bte, last_b[:, None, None], axis=1)[:, 0]
        return nn.Dense(1, name="score", kernel_init=nn.initializers.zeros)(h_be.astype(jnp.float32))[:, 0]


def init_reward_model(lm_params, config: ModelConfig) -> tuple[RewardModel, dict]:
    """A reward model whose backbone starts from an LM's params (the LM head is dropped)."""
    model = RewardModel(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids))["params"]
    backbone = {k: v for k, v in lm_params.items() if k != "lm_head"}
    return model, {**params, "backbone": backbone}


def reward_model_scores(model: RewardModel, params, prompts: TokenLists, responses: TokenLists, *, pad_id: int,
                        batch_size: int = 256) -> np.ndarray:
    """``[N]`` scores of (prompt, response) rows, batched with padding to a bucketed length."""
    longest = max(len(p) + len(r) for p, r in zip(prompts, responses))
    length = bucket_length(longest, default_buckets(max(longest, 16)))
    fn = jax.jit(model.apply)
    out = []
    for start in range(0, len(prompts), batch_size):
        ps, rs = list(prompts[start : start + batch_size]), list(responses[start : start + batch_size])
        n_real = len(ps)
        ps += [ps[-1]] * (batch_size - n_real)
        rs += [rs[-1]] * (batch_size - n_real)
        ids, attn, _ = pad_sequences(ps, rs, length=length, pad_id=pad_id)
        out.append(np.asarray(fn({"params": params}, ids, attn))[:n_real])
    return np.concatenate(out).astype(np.float64)


class RewardModelJudge:
    """A trained ``RewardModel`` as a judge."""

    def __init__(self, model: RewardModel, params, *, pad_id: int):
        self.model, self.params, self.pad_id = model, params, pad_id

    def rewards(self, prompts, responses):
        return reward_model_scores(self.model, self.params, prompts, responses, pad_id=self.pad_id)

    def prob(self, prompts, responses_1, responses_2):
        return _sigmoid(self.rewards(prompts, responses_1) - self.rewards(prompts, responses_2))


def save_reward_model(path: str, model: RewardModel, params) -> None:
    """Writes ``config.json`` + ``params.safetensors`` (flattened names)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(params).items()}
    save_file(flat, os.path.join(path, "params.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model.config.to_hf_dict(), f, indent=2)


def load_reward_model(path: str) -> tuple[RewardModel, dict]:
    """Reads a reward model written by ``save_reward_model`` (safetensors only, no pickle)."""
    from safetensors.numpy import load_file

    cfg_path, weights = os.path.join(path, "config.json"), os.path.join(path, "params.safetensors")
    for p in (cfg_path, weights):
        if not os.path.exists(p):
            raise FileNotFoundError(f"reward model file missing: {p}")
    with open(cfg_path) as f:
        config = as_model_config(ModelConfig.from_hf_dict(json.load(f)))
    params: dict = {}
    for name, value in load_file(weights).items():
        node = params
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return RewardModel(config), params


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
