"""Active DPO (Muldrew et al. 2024): entropy + implicit-reward-certainty acquisition vs random.

    python -m jaxpref.main --config=configs/active_dpo.py
"""

import ml_collections

from jaxpref.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "active_dpo"
    c.loss = "dpo"
    # After each acquisition DPO is re-trained from SFT for `epochs` passes over the labels so far
    # (a fixed step count over-fits the first 64 labels: win rate < 0.5). 8 acquisitions of 64
    # labels, 8 samples per prompt (28 candidate pairs). Chosen on seeds 1 and 2; reported on seed 0.
    c.num_steps = 150  # used only when active.epochs = 0
    c.active = ml_collections.ConfigDict(
        dict(acquisitions=8, labels_per_step=64, pool_size=512, num_samples=8, entropy_pool_factor=2, epochs=10,
             entropy="sequence")  # entropy: sequence (the paper's) | per_token (length-normalised)
    )
    c.eval.round_prompts = 512  # learning-curve points: less evaluation noise
    return c
