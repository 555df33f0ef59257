"""SELM (Zhang et al. 2024): optimistic online DPO in iterative rounds.

    python -m jaxpref.main --config=configs/selm.py
    python -m jaxpref.main --config=configs/selm.py --config.selm.online_loss=dpo   # iterative online DPO
"""

import ml_collections

from jaxpref.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "selm"
    c.loss = "selm"
    c.selm_alpha = 0.001
    c.num_steps = 150  # per round
    c.selm = ml_collections.ConfigDict(dict(rounds=3, num_samples=4, online_loss="selm"))
    return c
