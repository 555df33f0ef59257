"""The real-workload benchmark's generated data: exact token counts, chat-like length spread."""

import os
import sys

import numpy as np
import pytest
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import real_workload  # noqa: E402


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE trained on the benchmark's words (words split into several tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(real_workload.WORDS, 12)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def test_fixed_rows_have_exact_token_counts(bpe):
    rows = real_workload.make_rows(bpe, 6, max_length=256, max_prompt_length=128, fixed=128)
    n = lambda s: len(bpe(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    for r in rows:
        assert n(r["prompt"]) == 32 and n(r["chosen"]) == n(r["rejected"]) == 128 - 32 - 2
        assert n(r["prompt"] + r["chosen"]) == 32 + 94  # no merge across the boundary (leading space)
    assert real_workload.row_tokens(bpe, rows) == [2 * 32 + 2 * 94 + 2] * 6


def test_variable_rows_spread_like_chat_data_and_fit(bpe):
    rows = real_workload.make_rows(bpe, 64, max_length=1024, max_prompt_length=512, seed=1)
    n = lambda s: len(bpe(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    prompts = np.array([n(r["prompt"]) for r in rows])
    responses = np.array([n(r[k]) for r in rows for k in ("chosen", "rejected")])
    assert prompts.min() >= 15 and prompts.max() <= 512
    assert all(n(r["prompt"]) + max(n(r["chosen"]), n(r["rejected"])) <= 1024 - 2 for r in rows)
    assert responses.max() / responses.min() > 8  # lengths spread over an order of magnitude
    assert abs(np.median(responses) - 192) < 80
