"""GGUF checkpoints (llama.cpp's format) -> jaxpref params and a HF tokenizer.

A GGUF file holds the architecture and the tokenizer as metadata (``llama.*``,
``tokenizer.ggml.*``, ``tokenizer.chat_template``) and the weights as (possibly quantized)
tensors with llama.cpp names. The ``gguf`` package reads the file with numpy (memory-mapped)
and dequantizes every tensor to float32; the tensors are then renamed to HF names and converted
by ``hf_io.params_from_hf``, exactly as for a safetensors folder.

Two facts about llama.cpp's layout matter:
- Tensor data are row-major ``[out, in]``, i.e. already PyTorch's ``nn.Linear`` layout (the
  ``shape`` GGUF lists is reversed, ``[in, out]``).
- llama.cpp rotates *adjacent* pairs ``(x[2i], x[2i+1])`` in RoPE, while HF Llama rotates
  ``(x[i], x[i + D/2])`` ("rotate half"). Its converter therefore permutes the rows of each
  head of ``attn_q`` / ``attn_k``; ``unpermute_rope_rows`` undoes that.

Only ``general.architecture == "llama"`` with a byte-level BPE tokenizer
(``tokenizer.ggml.model == "gpt2"``) is supported; anything else raises ``ValueError``.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import ModelConfig
from jaxpref.models.hf_io import params_from_hf
from jaxpref.models.llama import CausalLM

DType = Any

SUPPORTED_ARCHITECTURES = ("llama",)
# llama.cpp token types (gguf.TokenType): CONTROL tokens are special, USER_DEFINED are added.
_TOKEN_CONTROL, _TOKEN_USER_DEFINED = 3, 4
# llama.cpp pre-tokenizer name -> split digits one by one before the GPT-2 regex?
_PRE_TOKENIZERS = {"default": False, "gpt-2": False, "gpt2": False, "smollm": True, "starcoder": True}

_TOP_LEVEL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {  # below "blk.{i}." -> below "model.layers.{i}."
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(.+)")
_REQUIRED = object()


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name of a llama.cpp tensor name, or ``None`` if it has no HF counterpart."""
    if gguf_name in _TOP_LEVEL_NAMES:
        return _TOP_LEVEL_NAMES[gguf_name]
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def unpermute_rope_rows(weight_oi: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's interleaved-RoPE row order -> HF's rotate-half order.

    ``weight_oi``: ``[num_heads * D, in]`` Q or K projection. Within each head llama.cpp stores
    row ``2j + c`` for HF row ``c * D/2 + j`` (``c`` in {0, 1}); this returns the HF layout.
    """
    out_dim = weight_oi.shape[0]
    half = out_dim // num_heads // 2
    per_head = weight_oi.reshape(num_heads, half, 2, *weight_oi.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight_oi.shape)


def _open(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` of ``path``, shared by ``load_gguf`` and ``gguf_tokenizer``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    stat = path.stat()
    return _cached_reader(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime_ns: int, size: int) -> Any:
    # Parsing the metadata (~100k tokenizer strings) takes seconds; tensors stay memory-mapped.
    from gguf import GGUFReader

    del mtime_ns, size  # cache key only: a rewritten file is parsed again
    return GGUFReader(path)


def _field(reader: Any, key: str, default: Any = _REQUIRED) -> Any:
    """A metadata value (scalar, string or list); ``default`` when absent, else ``ValueError``."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"GGUF metadata has no {key!r}")
        return default
    return field.contents()


def _float32(value: float) -> float:
    """The shortest decimal that rounds to the stored float32 (1e-5, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def gguf_config(reader: Any) -> ModelConfig:
    """The ``ModelConfig`` described by a GGUF file's metadata (``reader``: ``gguf.GGUFReader``)."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHITECTURES}")
    scaling = _field(reader, f"{arch}.rope.scaling.type", "none")
    if scaling != "none" or any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(f"GGUF RoPE scaling ({scaling!r} / rope_freqs) is not supported")
    num_heads = int(_field(reader, f"{arch}.attention.head_count"))
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // num_heads))
    if int(_field(reader, f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("partial RoPE (rope.dimension_count != head dim) is not supported")
    vocab_size = _field(reader, f"{arch}.vocab_size", None)
    if vocab_size is None:  # older files: the tokenizer's size
        vocab_size = len(_field(reader, "tokenizer.ggml.tokens"))
    return ModelConfig(
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_layers=int(_field(reader, f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rope_theta=_float32(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=_float32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 2048)),
        model_type="llama",
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id", None),
        eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id", None),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id", None),
    )


def load_gguf(
    path: str | Path, dtype: DType = jnp.float32, param_dtype: DType | None = None
) -> tuple[CausalLM, Any]:
    """``(model, params)`` from a llama-architecture GGUF file.

    Quantized tensors are dequantized to float32; ``param_dtype`` (default float32, which holds
    every dequantized value exactly) is the params' storage dtype and ``dtype`` the compute
    dtype. Raises ``FileNotFoundError``, or ``ValueError`` for an unsupported architecture or a
    missing / wrongly shaped tensor. Tensors without an HF counterpart are logged.
    """
    from gguf.quants import dequantize

    reader = _open(path)
    config = gguf_config(reader)
    param_dtype = np.dtype(jnp.float32 if param_dtype is None else param_dtype)
    tensors = {name: t for t in reader.tensors if (name := hf_tensor_name(t.name)) is not None}
    unused = [t.name for t in reader.tensors if hf_tensor_name(t.name) is None]
    if unused:
        logging.warning("ignoring %d GGUF tensors, e.g. %s", len(unused), unused[:5])
    heads = {"self_attn.q_proj.weight": config.num_heads, "self_attn.k_proj.weight": config.num_kv_heads}

    def get_tensor(name: str) -> np.ndarray:
        tensor = tensors[name]  # KeyError when absent, as params_from_hf expects
        weight = dequantize(tensor.data, tensor.tensor_type)
        suffix = name.split(".", 3)[-1]
        return unpermute_rope_rows(weight, heads[suffix]) if suffix in heads else weight

    params = params_from_hf(config, get_tensor, param_dtype, place=jax.device_put)
    model = CausalLM(config, dtype=dtype, param_dtype=param_dtype)
    return model, params


def _byte_level_bpe(tokens: list[str], merges: list[str], split_digits: bool) -> Any:
    """A ``tokenizers.Tokenizer``: GPT-2 byte-level BPE (optionally digits split first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    digits = [pre_tokenizers.Digits(individual_digits=True)] if split_digits else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level])
    tok.decoder = decoders.ByteLevel()
    return tok


def gguf_tokenizer(path: str | Path) -> Any:
    """``transformers.PreTrainedTokenizerFast`` built from a GGUF file's tokenizer metadata.

    Byte-level BPE from ``tokenizer.ggml.tokens`` / ``merges``; CONTROL tokens become special
    tokens and USER_DEFINED tokens added ones; bos/eos/unk/pad and the chat template come from
    the metadata; BOS/EOS are added to encodings only if ``add_bos_token`` /
    ``add_eos_token`` say so.
    """
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    reader = _open(path)
    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"unsupported GGUF tokenizer model={kind!r} pre={pre!r}; "
            f"supported: model 'gpt2' with pre in {sorted(_PRE_TOKENIZERS)}"
        )
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = _byte_level_bpe(tokens, list(_field(reader, "tokenizer.ggml.merges")), _PRE_TOKENIZERS[pre])
    tok.add_tokens(
        [AddedToken(t, special=ty == _TOKEN_CONTROL, normalized=False) for t, ty in zip(tokens, types)
         if ty in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED)]
    )

    def special(key: str) -> str | None:
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id", None)
        return None if token_id is None else tokens[int(token_id)]

    bos, eos = special("bos"), special("eos")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        ends = [(t, tokens.index(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
        single = " ".join(([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else []))
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=ends)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=special("unknown"),
        pad_token=special("padding"),
        chat_template=_field(reader, "tokenizer.chat_template", None),
        clean_up_tokenization_spaces=False,
    )
