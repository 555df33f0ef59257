"""SPPO (Wu et al. 2024): self-play iterations toward the Nash policy of a preference game.

    python -m jaxpref.main --config=configs/sppo.py
    python -m jaxpref.main --config=configs/sppo.py --config.judge.kind=reward_model \
        --config.judge.path=runs/reward_model/reward_model
"""

import ml_collections

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "sppo"
    c.loss = "sppo"
    c.beta = 0.1  # eta = 1 / beta
    c.num_steps = 150  # per iteration
    c.sppo = ml_collections.ConfigDict(dict(iterations=3, num_samples=5))
    return c
