"""SELM (Zhang et al. 2024): optimistic online DPO in iterative rounds.

    python -m jaxpref.main --config=configs/selm.py
    python -m jaxpref.main --config=configs/selm.py --config.loss=dpo --config.method=online_dpo  # iterative online DPO
"""

import ml_collections

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "selm"
    c.loss = "selm"
    c.selm_alpha = 0.001
    c.num_steps = 150  # per round
    # Round 1: DPO on the offline pairs; rounds 2-3: `loss` on pairs sampled from the current policy.
    c.selm = ml_collections.ConfigDict(dict(rounds=3, num_samples=4))
    return c
