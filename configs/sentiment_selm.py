"""SELM online on SmolLM2-135M-Instruct with your own prompts and a reward function: the sentiment
prompts as a prompt file and VADER through ``judge.kind=function`` (nothing sentiment-specific
inside the online code).

    python -m jaxpref.assets smollm2
    python -m jaxpref.main --config=configs/sentiment_selm.py
    python -m jaxpref.main --config=configs/sentiment_online_dpo.py   # the same loop with plain DPO

Two online rounds of 224 prompts x 4 samples = 1792 judge calls, as many as the offline
``sentiment_dpo`` run's 448 prompts x 4 samples, and as many optimizer steps (2 x 28 of 8 pairs).
"""

import os

import ml_collections

from jaxpref.config import get_base_config

PROMPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "sentiment_prompts")


def get_config():
    c = get_base_config()
    c.job, c.method = "selm", "sentiment_selm"
    c.loss = "selm"
    c.model.name = "smollm2-135m"
    # Prompts: examples/sentiment_prompts/{train,test}.jsonl (python -m jaxpref.tasks.sentiment DIR writes them).
    c.data.prompts = os.path.normpath(PROMPTS)
    c.data.max_prompt_length = 32
    c.data.max_length = 48
    c.judge = ml_collections.ConfigDict(dict(kind="function", path="", function="jaxpref.tasks.sentiment:vader_reward",
                                             weights="", temperature=0.1, max_length=1024))
    c.selm = ml_collections.ConfigDict(dict(rounds=2, num_samples=4))
    c.num_prompts = 224  # per round
    c.num_steps = 28  # per round: one pass over its pairs
    c.batch_size = 8
    c.beta = 0.1
    # Unpacked rows: with share_prompt the online round's fixed packed shape (sized for the longest
    # prompt) made each step slower (benchmarks/real_workload.py --only online, 2026-12-07: 10.7 vs
    # about 7 s per step, the round 89 vs 77 s).
    c.share_prompt = False
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 4
    c.log_every = 4
    c.checkpoint_every = 28
    c.sampling = ml_collections.ConfigDict(dict(max_new_tokens=16, batch_size=32, temperature=1.0, top_k=0, top_p=1.0))
    c.eval.num_prompts = 280  # each of the 140 held-out prompts twice
    c.eval.round_prompts = 64
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 16
    return c
