"""Architecture hyper-parameters of the Llama-family decoders (Llama, Mistral, Qwen2).

``ModelConfig`` is a frozen, hashable dataclass, so a model built from it can be a static
argument of ``jax.jit``. It converts to and from the ``config.json`` of Hugging Face
transformers (both the transformers-5 layout, where ``rope_theta`` lives inside
``rope_parameters``, and the older one with top-level ``rope_theta``/``rope_scaling``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_LLAMA3_ROPE_KEYS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama-family causal LM.

    ``num_kv_heads`` defaults to ``num_heads`` (no GQA), ``head_dim`` to
    ``hidden_size // num_heads`` and ``attention_bias`` (bias on the Q/K/V projections) to
    ``model_type == 'qwen2'``. ``rope_scaling`` is ``None`` or a Llama-3 scaling dict with keys
    ``factor, low_freq_factor, high_freq_factor, original_max_position_embeddings``.
    ``sliding_window`` is ``None`` or the number of most recent positions a query may see
    (itself included), as in Mistral. ``eos_token_id`` may be a tuple of ids (Llama 3).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None
    sliding_window: int | None = None
    max_position_embeddings: int = 2048
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        # Resolve the derived defaults (frozen dataclass, hence object.__setattr__).
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.attention_bias is None:
            object.__setattr__(self, "attention_bias", self.model_type == "qwen2")
        if isinstance(self.eos_token_id, (list, tuple)):
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", _normalize_llama3_scaling(self.rope_scaling))
        self._validate()

    def _validate(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        # Each HF architecture fixes which projections carry a bias; keep configs expressible.
        if self.attention_bias != (self.model_type == "qwen2"):
            raise ValueError(
                f"attention_bias={self.attention_bias} is not supported for model_type "
                f"{self.model_type!r} (only qwen2 has Q/K/V biases)"
            )
        if self.sliding_window is not None and self.model_type == "llama":
            raise ValueError("sliding_window needs model_type 'mistral' or 'qwen2', not 'llama'")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.model_type == "qwen2" and self.head_dim != self.hidden_size // self.num_heads:
            raise ValueError("qwen2 requires head_dim == hidden_size // num_heads")

    def __hash__(self) -> int:
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        values = [tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values]
        return hash(tuple(values))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a Hugging Face ``config.json`` dict.

        Raises ``ValueError`` naming the ``model_type`` (or the feature) when the architecture
        is not one this module implements.
        """
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{model_type}: unsupported hidden_act {d['hidden_act']!r}")
        if d.get("mlp_bias", False):
            raise ValueError(f"{model_type}: mlp_bias=True is not supported")
        if model_type == "llama" and d.get("attention_bias", False):
            raise ValueError("llama: attention_bias=True (bias on o_proj too) is not supported")
        rope_theta, rope_scaling = _rope_from_hf(d)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            sliding_window=_sliding_window_from_hf(d),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            model_type=model_type,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict that transformers 5 loads into the matching architecture."""
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters.update(self.rope_scaling)
        d: dict[str, Any] = {
            "architectures": [_HF_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope_parameters,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id),
            "pad_token_id": self.pad_token_id,
        }
        if self.model_type == "llama":
            d.update(head_dim=self.head_dim, attention_bias=False, mlp_bias=False)
        elif self.model_type == "mistral":
            d.update(head_dim=self.head_dim, sliding_window=self.sliding_window)
        else:  # qwen2: every layer slides (max_window_layers=0) or none does
            d.update(
                use_sliding_window=self.sliding_window is not None,
                sliding_window=self.sliding_window,
                max_window_layers=0,
            )
        return d


def as_model_config(config: ModelConfig | Mapping[str, Any] | Any) -> ModelConfig:
    """A ``ModelConfig`` from itself, a dict of its fields or an ``ml_collections.ConfigDict``.

    Unknown keys raise ``TypeError`` so that typos fail loudly.
    """
    if isinstance(config, ModelConfig):
        return config
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return ModelConfig(**fields)


def _normalize_llama3_scaling(scaling: Mapping[str, Any]) -> dict[str, Any]:
    rope_type = scaling.get("rope_type", scaling.get("type", "llama3"))
    if rope_type != "llama3":
        raise ValueError(f"unsupported rope scaling type {rope_type!r}; supported: 'llama3'")
    missing = [k for k in _LLAMA3_ROPE_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"llama3 rope scaling is missing {missing}")
    out: dict[str, Any] = {"rope_type": "llama3"}
    for k in _LLAMA3_ROPE_KEYS[:3]:
        out[k] = float(scaling[k])
    out["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return out


def _rope_from_hf(d: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, llama3 scaling or None)`` from either HF config layout."""
    params = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    if any(isinstance(v, Mapping) for v in params.values()):
        raise ValueError("per-layer-type rope_parameters are not supported")
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    if params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type == "llama3" and "original_max_position_embeddings" not in params:
        params["original_max_position_embeddings"] = d.get("max_position_embeddings", 2048)
    return theta, _normalize_llama3_scaling(params)


def _sliding_window_from_hf(d: Mapping[str, Any]) -> int | None:
    """The window if every layer slides, ``None`` if none does; mixed stacks are rejected."""
    if d["model_type"] == "mistral":
        return d.get("sliding_window")
    if d["model_type"] != "qwen2" or not d.get("use_sliding_window", False):
        return None
    num_layers = d["num_hidden_layers"]
    layer_types = d.get("layer_types") or [
        "sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention" for i in range(num_layers)
    ]
    if set(layer_types) == {"full_attention"}:
        return None
    if set(layer_types) == {"sliding_attention"}:
        return d["sliding_window"]
    raise ValueError("qwen2 with both sliding and full attention layers is not supported")
