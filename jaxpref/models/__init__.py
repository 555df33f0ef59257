"""Llama-family causal LMs (Llama, Mistral, Qwen2) and reward models in flax.linen, with checkpoint I/O.

``forward``/``forward_cached`` run a ``CausalLM`` on a plain params pytree;
``load_pretrained``/``save_pretrained`` convert from/to Hugging Face safetensors folders, and
``load_pretrained`` also reads llama.cpp GGUF files (``load_gguf``): the format is chosen here,
by the path (``hf_io`` knows only safetensors folders, ``gguf`` only GGUF files).
"""

from pathlib import Path
from typing import Any

import jax.numpy as jnp

from jaxpref.models import hf_io
from jaxpref.models.config import ModelConfig, as_model_config
from jaxpref.models.gguf import gguf_tokenizer, load_gguf
from jaxpref.models.hf_io import load_config, save_pretrained
from jaxpref.models.llama import (
    CausalLM,
    KVCache,
    attend_mask,
    count_params,
    decode_model_and_params,
    default_positions,
    forward,
    forward_cached,
    fuse_projections,
    init_cache,
    init_model,
    init_params,
    logical_axes,
    unstack_layers,
)
from jaxpref.models.reward import RewardModel, init_reward_model


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix == ".gguf"


def load_pretrained(path: str | Path, dtype: Any = jnp.float32, param_dtype: Any = None) -> tuple[CausalLM, Any]:
    """``(model, params)`` from a HF checkpoint folder (``hf_io.load_pretrained``) or a ``.gguf``
    file (``load_gguf``)."""
    if is_gguf(path):
        if not Path(path).exists():
            raise FileNotFoundError(f"checkpoint path {path} does not exist")
        return load_gguf(path, dtype=dtype, param_dtype=param_dtype)
    return hf_io.load_pretrained(path, dtype=dtype, param_dtype=param_dtype)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a HF folder (``hf_io.load_tokenizer``) or the one stored in a ``.gguf``
    file's metadata (``gguf_tokenizer``)."""
    return gguf_tokenizer(path) if is_gguf(path) else hf_io.load_tokenizer(path)


__all__ = [
    "CausalLM",
    "KVCache",
    "ModelConfig",
    "RewardModel",
    "as_model_config",
    "attend_mask",
    "count_params",
    "decode_model_and_params",
    "default_positions",
    "forward",
    "forward_cached",
    "fuse_projections",
    "init_cache",
    "init_model",
    "init_params",
    "init_reward_model",
    "load_config",
    "load_gguf",
    "load_pretrained",
    "load_tokenizer",
    "logical_axes",
    "save_pretrained",
    "unstack_layers",
]
