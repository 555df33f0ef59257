"""Hugging Face checkpoint I/O: safetensors folders <-> jaxpref params, and tokenizers.

A checkpoint folder holds ``config.json`` and either ``model.safetensors`` or shards
``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``. Tensors keep
the PyTorch names and layouts (``nn.Linear`` weights are ``[out, in]``); they are read one at a
time with plain file reads (``read_safetensors_header``; bf16 via ``ml_dtypes``), never with pickle
or torch, and written with ``safetensors``' numpy backend.

The conversion (``params_from_hf`` / ``params_to_hf``) only sees a ``name -> array`` lookup,
so another container format (e.g. GGUF) needs only a reader that produces HF names.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ml_dtypes import bfloat16
from safetensors.numpy import save_file

from jaxpref.models.config import ModelConfig
from jaxpref.models.llama import CausalLM, init_params

DType = Any
TensorLookup = Callable[[str], np.ndarray]

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": bfloat16}
# HF tensors that carry no parameters of ours (old checkpoints store RoPE buffers).
_IGNORED_TENSOR = re.compile(r".*rotary_emb\.inv_freq$")


class _Rule(NamedTuple):
    """How one param leaf maps to HF tensors.

    ``kind``: ``"copy"`` (same shape), ``"flatten"`` (HF tensor is our leaf flattened) or
    ``"linear"`` (an ``nn.Linear`` weight: our leaf, reshaped to 2-D with its first
    ``in_dims`` dims as inputs, is the transpose of the HF ``[out, in]`` tensor).
    """

    hf_name: str
    kind: str = "copy"
    in_dims: int = 1

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "linear":
            return (math.prod(shape[self.in_dims :]), math.prod(shape[: self.in_dims]))
        return (math.prod(shape),) if self.kind == "flatten" else shape

    def to_ours(self, hf_array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return (hf_array.T if self.kind == "linear" else hf_array).reshape(shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return np.ascontiguousarray(array.reshape(self.hf_shape(array.shape)[::-1]).T)
        return array.reshape(self.hf_shape(array.shape))


_TOP_LEVEL_RULES = {
    ("embed", "embedding"): _Rule("model.embed_tokens.weight"),
    ("final_norm", "scale"): _Rule("model.norm.weight"),
    ("lm_head", "kernel"): _Rule("lm_head.weight", "linear"),
}
_LAYER_RULES = {  # HF names below "model.layers.{i}."
    ("attn_norm", "scale"): _Rule("input_layernorm.weight"),
    ("attn", "q", "kernel"): _Rule("self_attn.q_proj.weight", "linear"),
    ("attn", "q", "bias"): _Rule("self_attn.q_proj.bias", "flatten"),
    ("attn", "k", "kernel"): _Rule("self_attn.k_proj.weight", "linear"),
    ("attn", "k", "bias"): _Rule("self_attn.k_proj.bias", "flatten"),
    ("attn", "v", "kernel"): _Rule("self_attn.v_proj.weight", "linear"),
    ("attn", "v", "bias"): _Rule("self_attn.v_proj.bias", "flatten"),
    ("attn", "o", "kernel"): _Rule("self_attn.o_proj.weight", "linear", in_dims=2),
    ("mlp_norm", "scale"): _Rule("post_attention_layernorm.weight"),
    ("mlp", "gate", "kernel"): _Rule("mlp.gate_proj.weight", "linear"),
    ("mlp", "up", "kernel"): _Rule("mlp.up_proj.weight", "linear"),
    ("mlp", "down", "kernel"): _Rule("mlp.down_proj.weight", "linear"),
}


def _leaf_path(key_path: Any) -> tuple[str, ...]:
    return tuple(str(k.key) for k in key_path)


def _hf_tensors_of_leaf(path: tuple[str, ...], num_layers: int) -> tuple[_Rule, list[str]]:
    """The rule for a param leaf and its HF tensor names (one per layer for stacked leaves)."""
    if path[0] == "layers":
        rule = _LAYER_RULES[path[1:]]
        return rule, [f"model.layers.{i}.{rule.hf_name}" for i in range(num_layers)]
    rule = _TOP_LEVEL_RULES[path]
    return rule, [rule.hf_name]


def param_shapes(model: CausalLM) -> Any:
    """``ShapeDtypeStruct`` tree of ``model``'s params (nothing is allocated)."""
    return jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))


def params_from_hf(config: ModelConfig, get_tensor: TensorLookup, param_dtype: DType,
                   place: Callable[[np.ndarray], Any] | None = None) -> Any:
    """Params of ``config``'s model from HF-named tensors: host (numpy) arrays, or what ``place``
    makes of each.

    ``get_tensor(name)`` returns the HF tensor or raises ``KeyError``. Raises ``ValueError``
    naming the tensor when one is missing or has an unexpected shape. ``place`` (e.g.
    ``jax.device_put``) is applied to each param as soon as it is converted, so that at most one
    host copy of a param exists at a time (loading then peaks at the params plus about one leaf,
    a stacked leaf holding one weight of every layer, not at twice the params).
    """
    dtype = np.dtype(param_dtype)

    def convert(key_path: Any, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        path = _leaf_path(key_path)
        rule, names = _hf_tensors_of_leaf(path, config.num_layers)
        stacked = path[0] == "layers"
        shape = leaf.shape[1:] if stacked else leaf.shape
        out = np.empty((len(names),) + shape, dtype)
        for i, name in enumerate(names):
            try:
                hf_array = get_tensor(name)
            except KeyError:
                raise ValueError(f"checkpoint has no tensor {name!r}") from None
            if hf_array.shape != rule.hf_shape(shape):
                raise ValueError(
                    f"tensor {name!r} has shape {hf_array.shape}, expected {rule.hf_shape(shape)} for this config"
                )
            out[i] = rule.to_ours(hf_array, shape).astype(dtype)
        out = out if stacked else out[0]
        return out if place is None else place(out)

    shapes = param_shapes(CausalLM(config, param_dtype=dtype))
    return jax.tree_util.tree_map_with_path(convert, shapes)


def params_to_hf(config: ModelConfig, params: Any) -> dict[str, np.ndarray]:
    """HF-named host tensors in PyTorch layouts, in checkpoint order."""
    tensors: dict[str, np.ndarray] = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = _leaf_path(key_path)
        rule, names = _hf_tensors_of_leaf(path, config.num_layers)
        array = np.asarray(jax.device_get(leaf))
        per_name = list(array) if path[0] == "layers" else [array]
        for name, value in zip(names, per_name, strict=True):
            tensors[name] = rule.to_hf(value)
    return dict(sorted(tensors.items(), key=lambda item: _checkpoint_order(item[0])))


def _checkpoint_order(name: str) -> tuple[int, int, str]:
    match = re.match(r"model\.layers\.(\d+)\.", name)
    if match:
        return (1, int(match.group(1)), name)
    return (0 if "embed_tokens" in name else 2, 0, name)


class _SafetensorsFolder:
    """``name -> numpy array`` lookup over the safetensors file(s) of a folder, each tensor read
    from its file when asked for (``read_safetensors_header`` + plain reads, no memory map).

    ``safetensors.safe_open`` maps the whole file, and every page of a mapped file that has been
    read counts in the process's resident set (RSS, the peak memory that jobs and benchmarks
    report) until the file is closed, although the kernel could reclaim those pages: loading
    SmolLM2-135M (float32) through it peaked at the params plus the whole 0.54 GB file. Plain
    reads go through the page cache, which is not counted as the process's, so loading peaks at
    the params plus about two tensors (the one read and its converted copy). Tensors of dtypes
    jaxpref does not read (e.g. integer buffers) may be present; reading one raises.
    """

    def __init__(self, folder: Path):
        index_path, single_path = folder / INDEX_FILE, folder / SINGLE_FILE
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif single_path.exists():
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")
        self._where: dict[str, tuple[Path, _TensorEntry]] = {}
        for file in files:
            if not (folder / file).exists():
                raise FileNotFoundError(f"checkpoint shard {folder / file} is missing")
            for name, entry in read_safetensors_header(folder / file).items():
                self._where[name] = (folder / file, entry)

    def names(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> np.ndarray:
        file, entry = self._where[name]
        out = np.empty(entry.shape, _numpy_dtype(file, name, entry))
        view = out.reshape(-1).view(np.uint8)
        with open(file, "rb", buffering=0) as f:
            f.seek(entry.offset)
            done = 0
            while done < view.size:  # one read() returns at most ~2 GiB on Linux
                n = f.readinto(view[done:])
                if not n:
                    raise ValueError(f"{file} is truncated: tensor {name!r} ends at byte "
                                     f"{entry.offset + view.size}, the file at {entry.offset + done}")
                done += n
        return out

    def dtype(self, name: str) -> np.dtype:
        """The stored dtype of a tensor, without reading it."""
        if name not in self._where:
            raise ValueError(f"checkpoint has no tensor {name!r}")
        file, entry = self._where[name]
        return _numpy_dtype(file, name, entry)


class _TensorEntry(NamedTuple):
    """Where a tensor lies in a safetensors file: its ``dtype`` as the file names it ("F32",
    "BF16", "I64", ...), ``shape`` and absolute byte ``offset``."""

    dtype: str
    shape: tuple[int, ...]
    offset: int


# Bytes per element of the safetensors dtypes (the format's list); jaxpref reads the float ones
# (``_SAFETENSORS_DTYPES``, little-endian as the format is, on a little-endian host).
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                         "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _numpy_dtype(file: Path, name: str, entry: _TensorEntry) -> np.dtype:
    if entry.dtype not in _SAFETENSORS_DTYPES:
        raise ValueError(f"{file}: tensor {name!r} has dtype {entry.dtype!r}; jaxpref reads "
                         f"{', '.join(_SAFETENSORS_DTYPES)}")
    return np.dtype(_SAFETENSORS_DTYPES[entry.dtype])


def read_safetensors_header(path: str | Path) -> dict[str, _TensorEntry]:
    """The tensors of a safetensors file (name -> dtype, shape, absolute byte offset), from its
    header only: 8 bytes little-endian header size, then a JSON object of ``{name: {"dtype",
    "shape", "data_offsets": [begin, end]}}`` (offsets relative to the end of the header).

    Raises ``ValueError`` naming the file (and the tensor) when the header is malformed or a
    tensor's byte range does not fit its shape or the file. Any dtype is listed (reading one that
    is not in ``_SAFETENSORS_DTYPES`` raises then).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < header_size <= size - 8:
            raise ValueError(f"{path} is not a safetensors file (header size {header_size}, file size {size})")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    data_start = 8 + header_size
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a malformed entry {info!r} (expected dtype, "
                             f"shape and two data_offsets)") from None
        itemsize = _SAFETENSORS_ITEMSIZE.get(dtype)
        fits = 0 <= begin <= end and data_start + end <= size and all(d >= 0 for d in shape)
        if not fits or (itemsize is not None and end - begin != math.prod(shape) * itemsize):
            raise ValueError(f"{path}: tensor {name!r} ({dtype} {list(shape)}) has byte range "
                             f"[{begin}, {end}), which does not fit its shape or the file")
        entries[name] = _TensorEntry(dtype, shape, data_start + begin)
    return entries


def load_config(path: str | Path) -> ModelConfig:
    """The ``ModelConfig`` of a HF checkpoint folder (reads ``config.json``)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path}")
    return ModelConfig.from_hf_dict(json.loads(config_path.read_text()))


def load_pretrained(
    path: str | Path, dtype: DType = jnp.float32, param_dtype: DType | None = None
) -> tuple[CausalLM, Any]:
    """``(model, params)`` from a local HF checkpoint folder.

    ``dtype`` is the compute dtype; ``param_dtype`` defaults to the checkpoint's dtype (that
    of the embedding table), so bf16 checkpoints stay bf16. Params land on the default
    device; use ``params_from_hf`` for host arrays to place with shardings yourself.

    Raises ``FileNotFoundError`` naming the missing path or file, ``ValueError`` naming an
    unsupported architecture or a missing / wrongly shaped tensor. Unused tensors are logged.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    config = load_config(path)
    folder = _SafetensorsFolder(path)
    if param_dtype is None:
        param_dtype = folder.dtype("model.embed_tokens.weight")
    read: set[str] = set()

    def get_tensor(name: str) -> np.ndarray:
        read.add(name)
        return folder.get(name)

    params = params_from_hf(config, get_tensor, param_dtype, place=jax.device_put)
    if config.tie_word_embeddings:
        read.add("lm_head.weight")  # some tied checkpoints store the shared matrix twice
    unused = [n for n in folder.names() if n not in read and not _IGNORED_TENSOR.match(n)]
    if unused:
        logging.warning("ignoring %d checkpoint tensors, e.g. %s", len(unused), unused[:5])
    model = CausalLM(config, dtype=dtype, param_dtype=np.dtype(param_dtype))
    return model, params


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"500MB"`` (10^6) or ``"2GiB"`` (2^30)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot parse size {size!r}")
    unit = (match.group(2) or "B").upper()
    powers = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    powers.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})
    return int(float(match.group(1)) * powers[unit])


def _shards(tensors: dict[str, np.ndarray], max_bytes: int | None) -> list[dict[str, np.ndarray]]:
    """Greedy split keeping checkpoint order; a tensor larger than the limit gets its own shard."""
    shards: list[dict[str, np.ndarray]] = [{}]
    current = 0
    for name, array in tensors.items():
        if max_bytes is not None and shards[-1] and current + array.nbytes > max_bytes:
            shards.append({})
            current = 0
        shards[-1][name] = array
        current += array.nbytes
    return shards


def save_pretrained(model: CausalLM, params: Any, path: str | Path, *, max_shard_size: int | str | None = None) -> None:
    """Writes a HF checkpoint folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    Tensors keep the params' dtype. With ``max_shard_size`` (bytes or e.g. ``"2GB"``) the
    weights are split into ``model-0000i-of-0000n.safetensors`` plus an index. Previous
    weight files in ``path`` are removed first so that no stale shard is picked up.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for stale in [path / SINGLE_FILE, path / INDEX_FILE, *path.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)

    config = model.config
    tensors = params_to_hf(config, params)
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype)
    (path / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {
        k: v for k, v in hf_config.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id") and v is not None
    }
    (path / GENERATION_CONFIG_FILE).write_text(json.dumps(generation, indent=2) + "\n")

    shards = _shards(tensors, None if max_shard_size is None else parse_size(max_shard_size))
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(tensors, str(path / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file))
    index = {
        "metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
        "weight_map": weight_map,
    }
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def load_tokenizer(path: str | Path) -> Any:
    """``transformers.AutoTokenizer`` from a local folder (no hub access, no remote code)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has none of the tokenizer files {_TOKENIZER_FILES}")
    from transformers import AutoTokenizer  # heavy import, only when a tokenizer is needed

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
