"""A Hugging Face reward model as a judge: any ``*ForSequenceClassification`` folder with one
label (Llama / Mistral / Qwen2 backbones) and its own tokenizer and chat template.

    from jaxpref.judges import load_hf_reward_model

    judge = load_hf_reward_model("path/to/reward_model")
    scores = judge.score_texts(["The movie was"], [" wonderful."])   # np.ndarray [N]

``score_texts(prompts, completions)`` scores ``tokenizer(prompt + completion)`` for plain-text
prompts (as ``AutoModelForSequenceClassification(...).logits[:, 0]`` does on those ids), and
``apply_chat_template(messages + [assistant completion])`` for chat-message prompts (as TRL's
online trainers do). Rows longer than ``max_length`` tokens keep their last tokens. Scoring is
jitted once per padded length (``infer.scoring`` buckets) and runs on the mesh when one is given.

Inside a job (``judge.kind=reward_model``) the policy's samples are decoded to text and
re-tokenized with the reward model's tokenizer; when both tokenizers have the same vocabulary the
token ids are scored directly (``rewards``), as for the reward models ``configs/reward_model.py``
trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxpref.judges.base import BradleyTerry
from jaxpref.judges.text import TextView


class HFRewardModel(BradleyTerry):
    """A loaded reward model (``load_hf_reward_model``): ``score_texts`` on text, ``rewards`` on
    token ids of its own tokenizer.

    Attributes: ``model`` (``models.RewardModel``), ``params`` (placed on ``mesh``),
    ``tokenizer``, ``pad_id``, ``max_length``, ``batch_size``, ``temperature`` (Bradley-Terry).
    """

    def __init__(self, model, params, tokenizer, *, mesh=None, batch_size: int = 64, max_length: int = 1024,
                 temperature: float = 1.0):
        self.model, self.params, self.tokenizer, self.mesh = model, params, tokenizer, mesh
        self.batch_size, self.max_length, self.temperature = int(batch_size), int(max_length), float(temperature)
        pad = model.config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        self.pad_id = int(pad)

    def encode(self, prompts: list[Any], completions: list[str]) -> list[list[int]]:
        """The reward model's token ids of each (prompt, completion): see the module docstring."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        tok = self.tokenizer
        texts, chat = [], []
        for p, c in zip(prompts, completions):
            if isinstance(p, str):
                texts.append(p + c)
                chat.append(False)
            else:
                if getattr(tok, "chat_template", None) is None:
                    raise ValueError("judge.path: chat-message prompts need a reward-model tokenizer with a "
                                     "chat_template")
                messages = list(p) + [{"role": "assistant", "content": c}]
                texts.append(tok.apply_chat_template(messages, tokenize=False))
                chat.append(True)
        out: list[list[int]] = [[] for _ in texts]
        for flag in (False, True):
            idx = [i for i, f in enumerate(chat) if f == flag]
            if idx:
                ids = tok([texts[i] for i in idx], add_special_tokens=not flag)["input_ids"]
                for i, row in zip(idx, ids):
                    out[i] = [int(t) for t in row][-self.max_length:]
        return out

    def score_ids(self, sequences: list[list[int]]) -> np.ndarray:
        """``[N]`` float64 scores of whole token sequences (the reward model's tokenizer)."""
        from jaxpref.infer.scoring import sequence_scores

        return sequence_scores(self.model, self.params, sequences, pad_id=self.pad_id, batch_size=self.batch_size,
                               mesh=self.mesh)

    def score_texts(self, prompts: list[Any], completions: list[str]) -> np.ndarray:
        """``[N]`` float64 rewards of ``completions`` to ``prompts`` (strings or message lists)."""
        if not len(prompts):
            return np.zeros((0,), np.float64)
        return self.score_ids(self.encode(list(prompts), list(completions)))

    def rewards(self, prompts, responses) -> np.ndarray:
        """``[N]`` scores of ``prompt + response`` token ids (already in this model's vocabulary)."""
        return self.score_ids([list(p) + list(r) for p, r in zip(prompts, responses)])


class RetokenizedJudge(BradleyTerry):
    """A reward model whose tokenizer differs from the policy's: token ids -> text -> its ids."""

    def __init__(self, reward_model: HFRewardModel, view: TextView):
        self.reward_model, self.view = reward_model, view
        self.temperature = reward_model.temperature

    def rewards(self, prompts, responses) -> np.ndarray:
        return self.reward_model.score_texts(self.view.prompts(prompts), self.view.completions(responses))


def load_hf_reward_model(path: str, *, mesh=None, rules=None, batch_size: int = 64, max_length: int = 1024,
                         temperature: float = 1.0, tokenizer=None) -> HFRewardModel:
    """The reward model of a ``*ForSequenceClassification`` folder (``models.reward.read_reward_model``)
    with the tokenizer stored beside it (or ``tokenizer``); params placed on ``mesh`` (default: the
    first device) by the logical-axis ``rules`` (default: ``fsdp_tensor``)."""
    import jax

    from jaxpref.models import load_tokenizer
    from jaxpref.models.reward import read_reward_model
    from jaxpref.runtime import sharding

    model, params = read_reward_model(path)
    tok = tokenizer if tokenizer is not None else load_tokenizer(path)
    if mesh is not None:
        rules = sharding.resolve_rules(rules if rules is not None else "fsdp_tensor")
        params = jax.device_put(params, sharding.param_shardings(params, mesh, rules))
    else:
        params = jax.device_put(params)
    return HFRewardModel(model, params, tok, mesh=mesh, batch_size=batch_size, max_length=max_length,
                         temperature=temperature)


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    """Both tokenizers map every token to the same id (token ids can be shared)."""
    if tokenizer_a is tokenizer_b:
        return True
    try:
        return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()
    except (AttributeError, NotImplementedError):
        return False
