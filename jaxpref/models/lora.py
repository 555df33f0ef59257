"""LoRA adapters (Hu et al. 2021, arXiv:2106.09685) on the decoder's projections, through qwix.

``qwix.apply_lora_to_model`` (Google's quantization / LoRA library for JAX) wraps the Flax
``CausalLM`` so that each targeted projection computes ``y = x W + (alpha / r) * (x A) B``: next to
each targeted ``kernel`` it reads ``kernel_lora_a`` ``[L, d_in, r]`` and ``kernel_lora_b``
``[L, r, d_out]`` (``L`` stacked layers; ``d_in`` / ``d_out`` the kernel's contracted / output
axes flattened, e.g. ``q``: kernel ``[L, E, H, D]``, ``d_in = E``, ``d_out = H * D``). ``A``
starts He-uniform and ``B`` at zero, so fresh adapters leave the model unchanged.

The params tree of a LoRA policy is the base params with the adapter leaves added
(``combine``); ``split`` takes them apart again, ``merge`` folds the adapters into the kernels
(``W + (alpha / r) A B``, plain params for sampling and export). ``write_peft_adapter`` /
``read_peft_adapter`` convert the adapters from / to a PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` loads on the HF base.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# Our projection names, in layer order, and their Hugging Face / PEFT module names.
TARGETS = {"q": ("attn", "self_attn.q_proj"), "k": ("attn", "self_attn.k_proj"),
           "v": ("attn", "self_attn.v_proj"), "o": ("attn", "self_attn.o_proj"),
           "gate": ("mlp", "mlp.gate_proj"), "up": ("mlp", "mlp.up_proj"), "down": ("mlp", "mlp.down_proj")}
HF_TARGETS = {hf.rsplit(".", 1)[1]: ours for ours, (_, hf) in TARGETS.items()}  # q_proj -> q
ADAPTER_A, ADAPTER_B = "kernel_lora_a", "kernel_lora_b"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Rank ``r``, ``alpha`` (the update is scaled by ``alpha / r``), dropout on the adapter
    branch's input, and the targeted projections (names of ``TARGETS``)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets: unknown {unknown or 'empty'}; choose from {', '.join(TARGETS)} "
                             f"(or {', '.join(HF_TARGETS)})")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def module_path(self) -> str:
        """The qwix rule's regex over module paths (``layers/attn/q``, ``layers/mlp/up``, ...)."""
        return "layers/(" + "|".join(f"{TARGETS[t][0]}/{t}" for t in self.targets) + ")"


def parse_targets(text: str) -> tuple[str, ...]:
    """``"q,v"`` or ``"q_proj,v_proj"`` or ``"all"`` -> our target names, in layer order."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if items == ["all"]:
        return tuple(TARGETS)
    names = {HF_TARGETS.get(t, t) for t in items}
    return tuple(t for t in TARGETS if t in names) + tuple(sorted(n for n in names if n not in TARGETS))


def lora_model(model, spec: LoraSpec, *, dropout: float | None = None):
    """``model`` (a scanned, unfused ``CausalLM``) with qwix LoRA on ``spec.targets``.

    ``dropout`` overrides ``spec.dropout`` (0 for evaluation: qwix applies a non-zero dropout on
    every call, which then needs a ``"dropout"`` rng).
    """
    import qwix

    if not model.scan_layers or model.fused_projections:
        raise ValueError("LoRA needs the scanned, unfused model layout")
    rule = qwix.LoraRule(module_path=spec.module_path, rank=spec.rank, alpha=spec.alpha,
                         dropout=spec.dropout if dropout is None else dropout)
    return qwix.apply_lora_to_model(model, qwix.LoraProvider([rule]))


def is_adapter(path: tuple[str, ...]) -> bool:
    return path[-1] in (ADAPTER_A, ADAPTER_B)


def _paths(tree: PyTree) -> dict[tuple[str, ...], Any]:
    from flax.traverse_util import flatten_dict

    return flatten_dict(tree)


def split(params: PyTree) -> tuple[PyTree, PyTree]:
    """``(adapters, base)``: the adapter leaves and the rest, as two nested dicts."""
    from flax.traverse_util import unflatten_dict

    flat = _paths(params)
    adapters = {k: v for k, v in flat.items() if is_adapter(k)}
    base = {k: v for k, v in flat.items() if not is_adapter(k)}
    return unflatten_dict(adapters), unflatten_dict(base)


def has_adapters(params: PyTree) -> bool:
    """Whether ``params`` holds LoRA adapter leaves."""
    return any(is_adapter(k) for k in _paths(params))


def combine(base: PyTree, adapters: PyTree) -> PyTree:
    """The LoRA model's params: ``base`` with the ``adapters`` leaves added (no copies)."""
    from flax.traverse_util import unflatten_dict

    return unflatten_dict({**_paths(base), **_paths(adapters)})


def _kernel_sizes(kernel_shape: tuple[int, ...], name: str) -> tuple[int, int]:
    """``(d_in, d_out)`` of a stacked kernel ``[L, ...]`` (``o`` contracts two axes, others one)."""
    inner = kernel_shape[1:]
    k = 2 if name == "o" else 1
    return math.prod(inner[:k]), math.prod(inner[k:])


def adapter_shapes(base: PyTree, spec: LoraSpec) -> dict[tuple[str, ...], tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{(layers, attn, q): ((L, d_in, r), (L, r, d_out)), ...}`` for the targeted kernels."""
    out = {}
    for t in spec.targets:
        block = TARGETS[t][0]
        kernel = base["layers"][block][t]["kernel"]
        d_in, d_out = _kernel_sizes(kernel.shape, t)
        layers = kernel.shape[0]
        out[("layers", block, t)] = ((layers, d_in, spec.rank), (layers, spec.rank, d_out))
    return out


def init_adapters(base: PyTree, spec: LoraSpec, rng: jax.Array, dtype=jnp.float32) -> PyTree:
    """Fresh adapters for ``base``: ``A`` He-uniform (fan-in ``d_in``, as qwix inits it), ``B``
    zero, so that the LoRA model starts equal to the base model."""
    from flax.traverse_util import unflatten_dict

    flat = {}
    shapes = adapter_shapes(base, spec)
    keys = jax.random.split(rng, len(shapes))
    init = jax.nn.initializers.he_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
    for key, (path, (a_shape, b_shape)) in zip(keys, shapes.items()):
        flat[path + (ADAPTER_A,)] = init(key, a_shape, dtype)
        flat[path + (ADAPTER_B,)] = jnp.zeros(b_shape, dtype)
    return unflatten_dict(flat)


def merge(params: PyTree, spec: LoraSpec) -> PyTree:
    """Plain params from a LoRA tree: every targeted ``kernel <- kernel + (alpha / r) A B``, the
    adapter leaves dropped. Works under ``jit``; the result equals the LoRA model's function."""
    adapters, base = split(params)
    if not adapters:
        return params
    layers = dict(base["layers"])
    for block, projections in adapters.get("layers", {}).items():
        layers[block] = dict(layers[block])
        for name, ab in projections.items():
            kernel = layers[block][name]["kernel"]
            delta = jnp.einsum("lir,lro->lio", ab[ADAPTER_A].astype(jnp.float32), ab[ADAPTER_B].astype(jnp.float32))
            new = kernel.astype(jnp.float32) + spec.scale * delta.reshape(kernel.shape)
            layers[block][name] = {**layers[block][name], "kernel": new.astype(kernel.dtype)}
    return {**base, "layers": layers}


# --- PEFT adapter folders ------------------------------------------------------------------------


def _peft_name(layer: int, name: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{TARGETS[name][1]}.lora_{which}.weight"


def write_peft_adapter(path: str | Path, adapters: PyTree, spec: LoraSpec, *, base_model: str = "") -> None:
    """Writes ``adapters`` as a PEFT LoRA folder for the HF causal LM the base params came from:
    ``lora_A.weight [r, d_in]`` = ``A[l].T``, ``lora_B.weight [d_out, r]`` = ``B[l].T`` per layer and
    projection (the HF weight is ``[d_out, d_in]`` with our kernel's axes flattened in order)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for block in adapters.get("layers", {}).values():
        for name, ab in block.items():
            a, b = (np.asarray(jax.device_get(ab[k]), np.float32) for k in (ADAPTER_A, ADAPTER_B))
            for layer in range(a.shape[0]):
                tensors[_peft_name(layer, name, "A")] = np.ascontiguousarray(a[layer].T)
                tensors[_peft_name(layer, name, "B")] = np.ascontiguousarray(b[layer].T)
    modules = sorted({TARGETS[t][1].rsplit(".", 1)[1] for t in spec.targets})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
              "lora_dropout": spec.dropout, "target_modules": modules, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "modules_to_save": None,
              "base_model_name_or_path": base_model, "inference_mode": True}
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})


def read_peft_adapter(path: str | Path, base: PyTree) -> tuple[LoraSpec, PyTree]:
    """``(spec, adapters)`` from a PEFT LoRA folder, shaped for ``base`` (the plain params of the
    model it was trained on). Raises ``FileNotFoundError`` / ``ValueError`` naming the folder and
    what is wrong (not LoRA, rsLoRA / DoRA, bias training, a projection we do not have)."""
    from flax.traverse_util import unflatten_dict
    from safetensors.numpy import load_file

    path = Path(path)
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / f).exists():
            raise FileNotFoundError(f"lora.init_from {path}: no {f} (expected a PEFT LoRA adapter folder)")
    cfg = json.loads((path / CONFIG_FILE).read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"lora.init_from {path}: peft_type {cfg.get('peft_type')!r}, expected 'LORA'")
    for key, ok in (("use_rslora", False), ("use_dora", False), ("bias", "none"), ("fan_in_fan_out", False)):
        if cfg.get(key, ok) != ok:
            raise ValueError(f"lora.init_from {path}: {key}={cfg[key]!r} is not supported")
    modules = cfg.get("target_modules") or []
    if isinstance(modules, str):
        raise ValueError(f"lora.init_from {path}: target_modules as a regex ({modules!r}) is not supported")
    unknown = [m for m in modules if m not in HF_TARGETS]
    if unknown:
        raise ValueError(f"lora.init_from {path}: target_modules {unknown} are not decoder projections")
    spec = LoraSpec(int(cfg["r"]), float(cfg["lora_alpha"]), float(cfg.get("lora_dropout", 0.0)),
                    parse_targets(",".join(modules)))
    tensors = load_file(str(path / WEIGHTS_FILE))
    tensors = {re.sub(r"\.default\.weight$", ".weight", k): v for k, v in tensors.items()}
    flat = {}
    for p, (a_shape, b_shape) in adapter_shapes(base, spec).items():
        name, layers = p[-1], a_shape[0]
        try:
            a = np.stack([tensors[_peft_name(i, name, "A")].T for i in range(layers)])
            b = np.stack([tensors[_peft_name(i, name, "B")].T for i in range(layers)])
        except KeyError as e:
            raise ValueError(f"lora.init_from {path}: no tensor {e.args[0]}") from None
        if a.shape != a_shape or b.shape != b_shape:
            raise ValueError(f"lora.init_from {path}: {name} adapters {a.shape} / {b.shape} do not fit the model "
                             f"({a_shape} / {b_shape})")
        flat[p + (ADAPTER_A,)], flat[p + (ADAPTER_B,)] = a.astype(np.float32), b.astype(np.float32)
    return spec, unflatten_dict(flat)
