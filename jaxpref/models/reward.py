"""Reward models: a Llama-family backbone with a scalar ``score`` head at the last real token.

The layout of Hugging Face's ``*ForSequenceClassification`` with ``num_labels=1``: the backbone's
final (normed) hidden state at each row's last non-padding token goes through a bias-free
``score`` projection. ``RewardModel`` takes right-padded ``[B, T]`` rows.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpref.models.config import ModelConfig
from jaxpref.models.llama import CausalLM, attend_mask, default_positions


class RewardModel(nn.Module):
    """``scores[B] = w . h_last`` where ``h_last`` is the backbone's final hidden state at each
    row's last real token (right-padded ``[B, T]`` inputs)."""

    config: ModelConfig
    dtype: Any = jnp.float32
    scan_unroll: int = 0
    remat: bool = False

    @nn.compact
    def __call__(self, ids_bt, attention_mask_bt):
        positions = default_positions(attention_mask_bt)
        slots = jnp.arange(ids_bt.shape[1])
        attend = attend_mask(attention_mask_bt, slots, slots, self.config.sliding_window)
        backbone = CausalLM(self.config, dtype=self.dtype, return_hidden=True, scan_unroll=self.scan_unroll,
                            remat=self.remat, name="backbone")
        h_bte, _ = backbone(ids_bt, positions, attend)
        last_b = jnp.maximum(jnp.sum(attention_mask_bt, axis=1) - 1, 0)
        h_be = jnp.take_along_axis(h_bte, last_b[:, None, None], axis=1)[:, 0]
        score = nn.Dense(1, use_bias=False, name="score", kernel_init=nn.initializers.zeros)
        return score(h_be.astype(jnp.float32))[:, 0]


def init_reward_model(lm_params, config: ModelConfig) -> tuple[RewardModel, dict]:
    """A reward model whose backbone starts from an LM's params (the LM head is dropped) and
    whose score head starts at zero."""
    model = RewardModel(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))["params"]
    backbone = {k: v for k, v in lm_params.items() if k != "lm_head"}
    score = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params["score"])
    return model, {"backbone": backbone, "score": score}


def save_reward_model(path: str, model: RewardModel, params) -> None:
    """Writes ``config.json`` + ``params.safetensors`` (flattened ``/``-joined names)."""
    import json
    import os

    import numpy as np
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(params).items()}
    save_file(flat, os.path.join(path, "params.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model.config.to_hf_dict(), f, indent=2)


def load_reward_model(path: str) -> tuple[RewardModel, dict]:
    """Reads a reward model written by ``save_reward_model`` (safetensors only, no pickle)."""
    import json
    import os

    from safetensors.numpy import load_file

    from jaxpref.models.config import as_model_config

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
        if hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
