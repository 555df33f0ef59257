"""Active DPO (Muldrew et al. 2024): entropy + implicit-reward-certainty acquisition vs random.

    python -m jaxpref.main --config=configs/active_dpo.py
"""

import ml_collections

from jaxpref.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "active_dpo"
    c.loss = "dpo"
    c.num_steps = 150  # DPO steps after each acquisition (re-trained from SFT)
    c.active = ml_collections.ConfigDict(
        dict(acquisitions=4, labels_per_step=128, pool_size=512, num_samples=4, entropy_pool_factor=2)
    )
    return c
