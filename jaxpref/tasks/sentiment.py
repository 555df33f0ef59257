"""Controlled sentiment generation (the DPO paper's first experiment), on real text.

The policy continues the opening of a short review or message ("The movie was", "My
experience at the hotel") and should write *positive* text. The oracle reward is the VADER
compound score in ``[-1, 1]`` of the decoded continuation (``vaderSentiment``, a rule-based
analyser with an offline lexicon, standing in for the paper's IMDb sentiment classifier).
Preferences are Bradley-Terry on that reward:
``P(y1 > y2 | x) = sigmoid((r(y1) - r(y2)) / bt_temperature)``
(Rafailov et al., 2023, https://arxiv.org/abs/2305.18290, section 6.1).

Prompt format: **raw text continuation, no BOS, no chat template.** The task is "continue
this text", which a raw prefix states directly; under the chat template the model would
instead *answer* a user turn (and SmolLM2's default system prompt alone adds ~30 tokens to
every sequence, which a CPU run cannot afford). SmolLM2's tokenizer adds no BOS and its
pretraining data has no BOS either, so ids are ``tokenizer(text, add_special_tokens=False)``.
Raw continuations rarely emit EOS, so responses usually end at ``max_new_tokens``.

The prompt pool (``all_prompts``) is templates x subjects, deterministic and de-duplicated;
``split_seed`` shuffles it once and splits off ``eval_fraction`` as held-out prompts. The seed
passed to ``train_prompts`` / ``eval_prompts`` only picks the draw order, so training prompts
never overlap held-out ones, whatever seeds a job uses (e.g. one per online round).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger("jaxpref")

_ANY_TEMPLATES = (
    "The {} was",
    "Honestly, the {}",
    "I have to say that the {}",
    "To be honest, the {}",
    "Overall, the {}",
    "Everyone told me that the {}",
    "Let me tell you about the {}.",
    "After a long wait, the {}",
    "I went in with no expectations, but the {}",
    "My friends and I agreed that the {}",
    "Here is my review of the {}:",
    "If you ask me, the {}",
)
_PLACE_TEMPLATES = (
    "My experience at the {}",
    "Our visit to the {}",
    "The service at the {}",
    "Yesterday we went to the {} and",
    "The staff at the {}",
    "I spent the whole afternoon at the {} and",
)
_THING_TEMPLATES = (
    "The {} I bought last month",
    "I just finished the {}, and",
    "My first impression of the {}",
    "I finally tried the {} and",
    "What I think about the {}:",
)
_PLACES = (
    "hotel", "restaurant", "museum", "airport", "gym", "bakery", "dentist", "beach resort",
    "theme park", "library", "coffee shop", "pizzeria", "spa", "zoo", "campsite", "bookstore",
    "cinema", "train station", "farmers market", "bowling alley",
)
_THINGS = (
    "movie", "book", "album", "new phone", "laptop", "video game", "TV show", "concert", "play",
    "novel", "headphones", "car", "sofa", "documentary", "podcast", "board game", "jacket",
    "recipe", "painting", "software update",
)


def all_prompts() -> list[str]:
    """The sorted, de-duplicated prompt pool (templates x subjects; 700 prompts)."""
    texts = {t.format(s) for t, s in itertools.product(_ANY_TEMPLATES, _PLACES + _THINGS)}
    texts |= {t.format(s) for t, s in itertools.product(_PLACE_TEMPLATES, _PLACES)}
    texts |= {t.format(s) for t, s in itertools.product(_THING_TEMPLATES, _THINGS)}
    return sorted(texts)


def prompt_split(split_seed: int = 0, eval_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """``(train, eval)`` indices into ``all_prompts()`` (disjoint, covering it)."""
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    n = len(all_prompts())
    order = np.random.default_rng([split_seed, 0]).permutation(n)
    n_eval = max(1, round(eval_fraction * n))
    return sorted(order[n_eval:].tolist()), sorted(order[:n_eval].tolist())


def write_prompt_files(folder: str) -> dict[str, int]:
    """The task's prompts as a prompt dataset (``config.data.prompts``): ``train.jsonl`` and
    ``test.jsonl`` with one ``{"prompt": ...}`` per line, the same split as ``SentimentTask``.
    Returns the row count of each file."""
    import json
    import os

    texts = all_prompts()
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for name, idx in zip(("train", "test"), prompt_split()):
        with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
            for i in idx:
                f.write(json.dumps({"prompt": texts[i]}) + "\n")
        counts[name] = len(idx)
    return counts


_ANALYZER = None


def vader_reward(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """The VADER compound score in ``[-1, 1]`` of each completion: the task's reward as a TRL-style
    reward function, for ``judge.kind=function`` with
    ``judge.function="jaxpref.tasks.sentiment:vader_reward"``."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [float(_ANALYZER.polarity_scores(c)["compound"]) for c in completions]


def _sigmoid(x: Any) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))  # no overflow for large |x|


def _draw(pool: list[list[int]], rng: np.random.Generator, n: int) -> list[list[int]]:
    """``n`` prompts from ``pool``: a shuffle without repeats, reshuffled when exhausted."""
    out: list[list[int]] = []
    while len(out) < n:
        order = rng.permutation(len(pool))[: n - len(out)]
        out += [list(pool[i]) for i in order]
    return out


class SentimentTask:
    """Controlled positive-sentiment continuation with a VADER oracle.

    Args:
      tokenizer: a HF tokenizer (``__call__``, ``decode``, ``eos_token_id``, ``pad_token_id``).
      max_new_tokens: response budget (tokens) for sampling.
      bt_temperature: Bradley-Terry temperature on the VADER reward difference.
      eval_fraction: share of the prompt pool held out for evaluation.
      split_seed: seed of the train / held-out split of the pool.

    Attributes mirror ``EchoTask`` where the training job reads them: ``max_new_tokens``,
    ``pad_id``, ``eos_id``, ``max_prompt_tokens``, ``max_length`` (prompt + response).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_new_tokens: int = 24,
        bt_temperature: float = 0.1,
        eval_fraction: float = 0.2,
        split_seed: int = 0,
    ):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.bt_temperature = bt_temperature
        self.eval_fraction = eval_fraction
        self.split_seed = split_seed
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(self.eos_id if pad is None else pad)
        self._texts = all_prompts()
        self._ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in self._texts]
        self.max_prompt_tokens = max(len(ids) for ids in self._ids)
        self.max_length = self.max_prompt_tokens + max_new_tokens
        self._analyzer = SentimentIntensityAnalyzer()

    # --- prompts ---------------------------------------------------------------------------

    def split(self) -> tuple[list[int], list[int]]:
        """``(train, eval)`` indices into the prompt pool (disjoint, covering it)."""
        return prompt_split(self.split_seed, self.eval_fraction)

    def train_prompts(self, seed: int, n: int) -> list[list[int]]:
        """``n`` training prompts (token ids), repeating the train split only when ``n`` exceeds it."""
        train, _ = self.split()
        return _draw([self._ids[i] for i in train], np.random.default_rng([seed, 1]), n)

    def eval_prompts(self, seed: int, n: int) -> list[list[int]]:
        """``n`` held-out prompts (token ids), never among the training prompts."""
        _, held_out = self.split()
        return _draw([self._ids[i] for i in held_out], np.random.default_rng([seed, 3]), n)

    # --- the oracle ------------------------------------------------------------------------

    def response_text(self, response: Sequence[int]) -> str:
        """Decoded response up to (excluding) its first EOS, special tokens dropped."""
        tokens = [int(t) for t in response]
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id)]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def rewards(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> np.ndarray:
        """VADER compound score ``[N]`` float64 in ``[-1, 1]`` of each decoded response.

        ``prompts`` only fixes N (the reward judges the continuation alone).
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        scores = [self._analyzer.polarity_scores(self.response_text(r))["compound"] for r in responses]
        return np.asarray(scores, np.float64)

    def preference_probs(self, rewards_1: np.ndarray, rewards_2: np.ndarray) -> np.ndarray:
        """Bradley-Terry ``P(y1 > y2)`` from reward arrays (any shape)."""
        return _sigmoid((np.asarray(rewards_1) - np.asarray(rewards_2)) / self.bt_temperature)


if __name__ == "__main__":  # python -m jaxpref.tasks.sentiment DIR: write the prompt files
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m jaxpref.tasks.sentiment OUTPUT_DIR")
    print(write_prompt_files(sys.argv[1]))
