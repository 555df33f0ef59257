"""Reward models: a Llama-family backbone with a scalar ``score`` head, in the layout (and the
checkpoint format) of Hugging Face's ``*ForSequenceClassification`` with ``num_labels=1``.

The backbone's final (normed) hidden state at each row's last non-padding token goes through a
bias-free ``score`` projection. As in transformers, the last non-padding token is the rightmost
one whose id is not ``config.pad_token_id`` (within the attention mask); without a pad id it is
the last token of the mask. ``RewardModel`` takes right-padded ``[B, T]`` rows.

``write_reward_model`` / ``read_reward_model`` read and write the folders transformers and
TRL use (``config.json`` with ``architectures = [LlamaForSequenceClassification]`` (or Mistral /
Qwen2), ``num_labels = 1``; ``model.safetensors`` with the backbone under ``model.*`` and
``score.weight [1, H]``), so a reward model trained here loads in PyTorch and back.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpref.models.config import ModelConfig
from jaxpref.models.llama import CausalLM, attend_mask, default_positions

SEQ_CLS_ARCHITECTURES = {
    "llama": "LlamaForSequenceClassification",
    "mistral": "MistralForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
}
SCORE_WEIGHT = "score.weight"


def last_token_index(ids_bt, attention_mask_bt, pad_token_id: int | None):
    """``[B]`` index of each row's last real token: the rightmost position inside the mask whose
    id is not ``pad_token_id`` (transformers' rule), or the mask's last position without one."""
    real = attention_mask_bt.astype(bool)
    if pad_token_id is not None:
        real = real & (ids_bt != pad_token_id)
    slots = jnp.arange(ids_bt.shape[1])
    return jnp.max(jnp.where(real, slots, 0), axis=1)


class RewardModel(nn.Module):
    """``scores[B] = w . h_last`` where ``h_last`` is the backbone's final hidden state at each
    row's last real token (``last_token_index``; right-padded ``[B, T]`` inputs)."""

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
        last_b = last_token_index(ids_bt, attention_mask_bt, self.config.pad_token_id)
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


def write_reward_model(path: str | Path, model: RewardModel, params, tokenizer=None) -> None:
    """Writes a ``*ForSequenceClassification`` folder (``num_labels=1``) that
    ``transformers.AutoModelForSequenceClassification.from_pretrained`` loads; with
    ``tokenizer``, its files too."""
    from safetensors.numpy import save_file

    from jaxpref.models.hf_io import CONFIG_FILE, SINGLE_FILE, params_to_hf

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    tensors = params_to_hf(config, params["backbone"])
    tensors[SCORE_WEIGHT] = np.ascontiguousarray(np.asarray(jax.device_get(params["score"]["kernel"])).T)
    hf = config.to_hf_dict()
    hf.update(architectures=[SEQ_CLS_ARCHITECTURES[config.model_type]], id2label={"0": "LABEL_0"},
              label2id={"LABEL_0": 0}, dtype=str(tensors[SCORE_WEIGHT].dtype))
    (path / CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
    save_file(tensors, str(path / SINGLE_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def read_reward_model(path: str | Path, *, dtype: Any = jnp.float32) -> tuple[RewardModel, dict]:
    """``(RewardModel, host params)`` from a ``*ForSequenceClassification`` folder with one label.

    Raises ``FileNotFoundError`` naming a missing folder or file and ``ValueError`` naming the
    problem when the folder is not a one-label sequence classifier of a supported backbone.
    """
    from jaxpref.models.hf_io import CONFIG_FILE, _SafetensorsFolder, params_from_hf

    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"reward model {path}: no {CONFIG_FILE} (expected a Hugging Face "
                                "*ForSequenceClassification folder)")
    hf = json.loads((path / CONFIG_FILE).read_text())
    architectures = hf.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ValueError(f"reward model {path}: architectures {architectures} has no *ForSequenceClassification")
    num_labels = len(hf.get("id2label") or {"0": None}) if "num_labels" not in hf else hf["num_labels"]
    if num_labels != 1:
        raise ValueError(f"reward model {path}: {num_labels} labels; a reward model has num_labels=1")
    config = ModelConfig.from_hf_dict(hf)
    folder = _SafetensorsFolder(path)
    try:
        score = folder.get(SCORE_WEIGHT)
    except KeyError:
        raise ValueError(f"reward model {path}: no tensor {SCORE_WEIGHT!r}") from None
    if score.shape != (1, config.hidden_size):
        raise ValueError(f"reward model {path}: {SCORE_WEIGHT} has shape {score.shape}, expected "
                         f"(1, {config.hidden_size})")
    param_dtype = np.float32 if np.dtype(dtype) == np.float32 else folder.dtype("model.embed_tokens.weight")
    # The backbone has no LM head whatever the config says: read it as a tied model.
    backbone = params_from_hf(dataclasses.replace(config, tie_word_embeddings=True), folder.get, param_dtype)
    params = {"backbone": backbone, "score": {"kernel": np.ascontiguousarray(score.T).astype(np.float32)}}
    return RewardModel(config, dtype=dtype), params
