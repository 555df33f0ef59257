"""The controlled-sentiment task: VADER reward (hand-checked), BT labels, prompt split, pairs."""

from __future__ import annotations

import math
import re

import jax
import numpy as np
import pytest

from jaxpref.models import init_model
from jaxpref.tasks.sentiment import SentimentTask, all_prompts

pytest.importorskip("vaderSentiment")

# Many sentiment words, so that a random model's samples usually carry some sentiment.
SENTIMENT_WORDS = (
    "great good wonderful love delicious amazing excellent happy nice fantastic terrible bad awful hate rude "
    "horrible boring sad ugly disappointing not"
).split()
FILLER_WORDS = "food staff was is very and it".split()


def _word_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` covering every prompt word and the words above."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    prompt_words = {w for text in all_prompts() for w in re.findall(r"\w+|[^\w\s]+", text)}
    words = ["<pad>", "<eos>", "<unk>", *sorted(prompt_words | set(SENTIMENT_WORDS) | set(FILLER_WORDS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def task():
    return SentimentTask(_word_tokenizer(), max_new_tokens=6, bt_temperature=0.5)


def _ids(task, text: str) -> list[int]:
    return task.tokenizer(text, add_special_tokens=False)["input_ids"]


def _vader_compound(valence_sum: float) -> float:
    """VADER's normalisation of a summed valence (alpha = 15)."""
    return valence_sum / math.sqrt(valence_sum**2 + 15)


def test_vader_reward_hand_checked(task):
    eos = task.eos_id
    responses = [
        _ids(task, "the food was great"),  # lexicon: great = 3.1
        _ids(task, "the staff was terrible"),  # terrible = -2.1
        _ids(task, "it was not great"),  # negation scales by -0.74
        _ids(task, "the food was great") + [eos] + _ids(task, "terrible terrible"),  # cut at EOS
        [eos],
    ]
    rewards = task.rewards([[0]] * len(responses), responses)
    expected = [_vader_compound(3.1), _vader_compound(-2.1), _vader_compound(-0.74 * 3.1), _vader_compound(3.1), 0.0]
    np.testing.assert_allclose(rewards, expected, atol=1e-4)  # VADER rounds to 4 decimals
    assert task.response_text(responses[3]) == "the food was great"
    with pytest.raises(ValueError, match="prompts but"):
        task.rewards([[0]], [])


def test_preference_probs_bradley_terry(task):
    p = task.preference_probs(np.array([0.5, 0.0, 0.3]), np.array([0.0, 0.5, 0.3]))
    sig = 1 / (1 + math.exp(-1.0))  # (0.5 - 0) / 0.5 = 1
    np.testing.assert_allclose(p, [sig, 1 - sig, 0.5])


def test_prompt_pool_and_split(task):
    texts = all_prompts()
    assert len(texts) == len(set(texts)) == 700
    assert "The movie was" in texts and "My experience at the hotel" in texts
    train, held_out = task.split()
    assert not set(train) & set(held_out) and sorted(train + held_out) == list(range(len(texts)))
    assert len(held_out) == 140
    other = SentimentTask(task.tokenizer, split_seed=1)
    assert other.split() != task.split() and SentimentTask(task.tokenizer).split() == task.split()

    key = tuple
    train_ids = {key(_ids(task, texts[i])) for i in train}
    eval_ids = {key(_ids(task, texts[i])) for i in held_out}
    assert len(train_ids) == len(train) and len(eval_ids) == len(held_out)  # distinct after tokenizing
    many_train = task.train_prompts(0, 1000)
    assert len(many_train) == 1000 and {key(p) for p in many_train} == train_ids
    assert len({key(p) for p in many_train[: len(train)]}) == len(train)  # no repeat before the pool is used up
    evals = task.eval_prompts(0, 50)
    assert len({key(p) for p in evals}) == 50 and {key(p) for p in evals} <= eval_ids
    assert task.train_prompts(0, 20) == many_train[:20] and task.eval_prompts(0, 50) == evals
    assert task.train_prompts(1, 20) != many_train[:20]
    assert {key(p) for p in task.train_prompts(7, 600)} <= train_ids  # any seed: still the train split
    assert task.max_length == task.max_prompt_tokens + task.max_new_tokens
    assert task.max_prompt_tokens == max(len(p) for p in many_train + task.eval_prompts(0, 140))


def make_preference_pairs(task, model, params, prompts, rng, *, num_samples=2, pairing="adjacent", batch_size=16,
                          min_reward_gap=0.0):
    """``methods.offline.sampled_preference_pairs`` for a policy ``(model, params)`` on ``task``."""
    import types

    from jaxpref.judges import OracleJudge
    from jaxpref.methods.offline import sampled_preference_pairs

    ctx = types.SimpleNamespace(policy=types.SimpleNamespace(task=task), model=model, sft_params=params,
                                eos_id=task.eos_id, pad_id=task.pad_id, mesh=None,
                                cfg=types.SimpleNamespace(sampling=types.SimpleNamespace(batch_size=batch_size)),
                                judge_rewards=OracleJudge(task).rewards)
    return sampled_preference_pairs(ctx, prompts, rng, num_samples=num_samples, pairing=pairing,
                                    min_reward_gap=min_reward_gap)


@pytest.fixture(scope="module")
def tiny_policy(task):
    config = dict(vocab_size=len(task.tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=64)
    model, params = init_model(config, seed=0)
    # Large output weights: peaked but varied next-token distributions.
    params = jax.tree.map(lambda x: x * 6.0 if x.ndim >= 2 else x, params)
    return model, params


def test_make_preference_pairs_labels_by_reward(tiny_policy):
    model, params = tiny_policy
    task = SentimentTask(_word_tokenizer(), max_new_tokens=6, bt_temperature=1e-6)  # ~deterministic labels
    prompts = task.train_prompts(0, 8)
    pairs = make_preference_pairs(task, model, params, prompts, jax.random.key(0), num_samples=4, batch_size=8)
    assert 0 < len(pairs) <= 16
    prompt_set = {tuple(p) for p in prompts}
    gaps = []
    for pair in pairs:
        assert tuple(pair.prompt) in prompt_set
        assert pair.chosen != pair.rejected
        assert 1 <= len(pair.chosen) <= task.max_new_tokens and 1 <= len(pair.rejected) <= task.max_new_tokens
        r_chosen, r_rejected = task.rewards([pair.prompt] * 2, [pair.chosen, pair.rejected])
        gaps.append(r_chosen - r_rejected)
    assert min(gaps) >= 0.0 and max(gaps) > 0.1  # the oracle's winner is chosen, and it varies

    strict = make_preference_pairs(task, model, params, prompts, jax.random.key(0), num_samples=4, batch_size=8,
                                   min_reward_gap=0.05)
    assert strict == [p for p, gap in zip(pairs, gaps) if gap >= 0.05]


def test_best_worst_pairing_takes_each_prompts_extremes(tiny_policy):
    model, params = tiny_policy
    task = SentimentTask(_word_tokenizer(), max_new_tokens=6, bt_temperature=1e-6)
    prompts = task.train_prompts(0, 8)
    pairs = make_preference_pairs(task, model, params, prompts, jax.random.key(0), num_samples=4, batch_size=8,
                                  pairing="best_worst")
    # The same samples (same key): recompute every prompt's 4 rewards independently.
    from jaxpref.infer.sampling import sample_responses

    sample_key, _ = jax.random.split(jax.random.key(0))
    repeated = [list(p) for p in prompts for _ in range(4)]
    responses, _ = sample_responses(model, params, repeated, sample_key, eos_id=task.eos_id, pad_id=task.pad_id,
                                    max_new_tokens=task.max_new_tokens, batch_size=8)
    rewards = np.asarray(task.rewards(repeated, responses)).reshape(8, 4)
    assert 0 < len(pairs) <= 8
    assert len({tuple(p.prompt) for p in pairs}) == len(pairs)  # one pair per prompt
    for pair in pairs:
        row = next(i for i, p in enumerate(prompts) if list(p) == list(pair.prompt))
        r_chosen, r_rejected = task.rewards([pair.prompt] * 2, [pair.chosen, pair.rejected])
        assert r_chosen == pytest.approx(rewards[row].max()) and r_rejected == pytest.approx(rewards[row].min())
    with pytest.raises(ValueError, match="pairing"):
        make_preference_pairs(task, model, params, prompts, jax.random.key(0), pairing="random")


def test_make_preference_pairs_drops_identical_responses(tiny_policy, task):
    model, params = tiny_policy
    # Near-one-hot next-token distributions (same sampler compilation as above): the two
    # samples of each prompt coincide, so every pair is dropped.
    peaked = {**params, "lm_head": {"kernel": params["lm_head"]["kernel"] * 1e5}}
    prompts = task.train_prompts(0, 8)
    assert make_preference_pairs(task, model, peaked, prompts, jax.random.key(0), num_samples=4, batch_size=8) == []
    with pytest.raises(ValueError, match="even"):
        make_preference_pairs(task, model, params, prompts, jax.random.key(0), num_samples=3)
