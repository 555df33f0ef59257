"""The built-in task: "echo the prompt's words", with a programmatic oracle.

A prompt is ``[BOS] w_1 .. w_n [SEP]`` with ``n`` content words; a response is
``v_1 .. v_m [EOS]``. The oracle's reward

    r(x, y) = mean_i 1[v_i in {w_1..w_n}]  -  length_penalty * |m - n|

prefers responses that reuse the prompt's words and have the prompt's length. Pairwise
preferences are Bradley-Terry on r: ``P(y1 > y2 | x) = sigmoid((r1 - r2) / bt_temperature)``.

The SFT data come from a deliberately imperfect *behaviour policy*: each response word is a
prompt word with probability ``behaviour_skill`` and a uniformly random content word otherwise,
and the length is off by a random amount. A model fit to those data (the SFT policy) is thus
mediocre but learnable, and preference optimization has clear room to improve on it.

Everything is integer token ids (no text); ``make_tokenizer`` gives a word-level HF tokenizer
for printing and for exporting the policy with ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxpref.data.batches import PairExample

PAD, BOS, EOS, SEP = 0, 1, 2, 3
NUM_SPECIAL = 4


@dataclasses.dataclass(frozen=True)
class EchoTask:
    """Parameters of the built-in task (all hashable, so they key the SFT cache)."""

    num_words: int = 24
    min_prompt_words: int = 3
    max_prompt_words: int = 6
    max_response_words: int = 8
    behaviour_skill: float = 0.35
    length_noise: float = 0.6
    length_penalty: float = 0.2
    bt_temperature: float = 0.1

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + self.num_words

    @property
    def max_prompt_tokens(self) -> int:
        return self.max_prompt_words + 2  # BOS ... SEP

    @property
    def max_response_tokens(self) -> int:
        return self.max_response_words + 1  # words + EOS

    @property
    def max_length(self) -> int:
        return self.max_prompt_tokens + self.max_response_tokens

    # --- sampling data ---------------------------------------------------------------------

    def sample_prompts(self, rng: np.random.Generator, n: int) -> list[list[int]]:
        """``n`` prompts ``[BOS, w.., SEP]`` with distinct words."""
        prompts = []
        for _ in range(n):
            k = int(rng.integers(self.min_prompt_words, self.max_prompt_words + 1))
            words = rng.choice(self.num_words, size=k, replace=False) + NUM_SPECIAL
            prompts.append([BOS, *words.tolist(), SEP])
        return prompts

    def behaviour_response(self, rng: np.random.Generator, prompt: list[int]) -> list[int]:
        """One response of the imperfect behaviour policy (words + EOS)."""
        words = prompt_words(prompt)
        n = len(words)
        jitter = int(rng.choice([-2, -1, 1, 2])) if rng.random() < self.length_noise else 0
        m = int(np.clip(n + jitter, 1, self.max_response_words))
        out = []
        for _ in range(m):
            if rng.random() < self.behaviour_skill:
                out.append(int(rng.choice(words)))
            else:
                out.append(int(rng.integers(self.num_words)) + NUM_SPECIAL)
        return out + [EOS]

    # --- the oracle ------------------------------------------------------------------------

    def reward(self, prompt: list[int], response: list[int]) -> float:
        """Oracle reward r(x, y) of a response (token list, EOS optional)."""
        return float(self.rewards([prompt], [response])[0])

    def rewards(self, prompts: list[list[int]], responses: list[list[int]]) -> np.ndarray:
        """Vectorised-over-rows oracle reward: ``[N]`` float64."""
        out = np.empty(len(prompts))
        for i, (p, y) in enumerate(zip(prompts, responses)):
            words = set(prompt_words(p))
            resp = response_words(y)
            if not resp:
                out[i] = -1.0 - self.length_penalty * len(words)
                continue
            hit = np.mean([w in words for w in resp])
            out[i] = hit - self.length_penalty * abs(len(resp) - len(words))
        return out

    def preference_prob(self, prompt, response_1, response_2) -> float:
        """Bradley-Terry ``P(y1 > y2 | x)``."""
        r = self.rewards([prompt, prompt], [response_1, response_2])
        return float(_sigmoid((r[0] - r[1]) / self.bt_temperature))

    def preference_probs(self, rewards_1: np.ndarray, rewards_2: np.ndarray) -> np.ndarray:
        """Bradley-Terry probabilities from reward arrays (any shape)."""
        return _sigmoid((np.asarray(rewards_1) - np.asarray(rewards_2)) / self.bt_temperature)

    # --- datasets ----------------------------------------------------------------------------

    def sft_dataset(self, seed: int, n: int) -> list[tuple[list[int], list[int]]]:
        """``n`` (prompt, behaviour response) pairs for supervised fine-tuning."""
        rng = np.random.default_rng([seed, 1])
        prompts = self.sample_prompts(rng, n)
        return [(p, self.behaviour_response(rng, p)) for p in prompts]

    def preference_dataset(self, seed: int, n: int) -> list[PairExample]:
        """``n`` offline pairs: two behaviour responses per prompt, labelled by sampling BT.

        Pairs whose two responses are identical are re-drawn (they carry no preference).
        """
        rng = np.random.default_rng([seed, 2])
        prompts = self.sample_prompts(rng, n)
        pairs = []
        for p in prompts:
            y1, y2 = self.behaviour_response(rng, p), self.behaviour_response(rng, p)
            while y1 == y2:
                y2 = self.behaviour_response(rng, p)
            r1, r2 = self.rewards([p, p], [y1, y2])
            first_wins = rng.random() < self.preference_probs(r1, r2)
            chosen, rejected = (y1, y2) if first_wins else (y2, y1)
            pairs.append(PairExample(p, chosen, rejected))
        return pairs

    def train_prompts(self, seed: int, n: int) -> list[list[int]]:
        """Prompts for online sampling rounds (their own stream per seed)."""
        return self.sample_prompts(np.random.default_rng([seed, 4]), n)

    def eval_prompts(self, seed: int, n: int) -> list[list[int]]:
        """Held-out prompts (a stream disjoint from the training seeds' streams)."""
        return self.sample_prompts(np.random.default_rng([seed, 3]), n)


def prompt_words(prompt) -> list[int]:
    """Content words of a prompt token list (specials and padding removed)."""
    return [int(t) for t in prompt if t >= NUM_SPECIAL]


def response_words(response) -> list[int]:
    """Content words of a response up to its first EOS (padding removed)."""
    out = []
    for t in response:
        t = int(t)
        if t == EOS:
            break
        if t >= NUM_SPECIAL:
            out.append(t)
    return out


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def make_tokenizer(task: EchoTask):
    """A word-level ``PreTrainedTokenizerFast`` for the task's vocabulary (for printing/export)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<sep>"] + [f"w{i}" for i in range(task.num_words)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", sep_token="<sep>"
    )
