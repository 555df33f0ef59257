"""Llama-family causal LMs (Llama, Mistral, Qwen2) in flax.linen, with HF checkpoint I/O.

``forward``/``forward_cached`` run a ``CausalLM`` on a plain params pytree;
``load_pretrained``/``save_pretrained`` convert from/to Hugging Face safetensors folders;
``load_gguf`` reads llama.cpp GGUF files.
"""

from jaxpref.models.config import ModelConfig, as_model_config
from jaxpref.models.gguf import load_gguf
from jaxpref.models.hf_io import load_config, load_pretrained, load_tokenizer, save_pretrained
from jaxpref.models.llama import (
    CausalLM,
    KVCache,
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

__all__ = [
    "CausalLM",
    "KVCache",
    "ModelConfig",
    "as_model_config",
    "count_params",
    "decode_model_and_params",
    "default_positions",
    "forward",
    "forward_cached",
    "fuse_projections",
    "init_cache",
    "init_model",
    "init_params",
    "load_config",
    "load_gguf",
    "load_pretrained",
    "load_tokenizer",
    "logical_axes",
    "save_pretrained",
    "unstack_layers",
]
