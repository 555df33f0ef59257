"""RSO (Liu et al. 2023): rejection-sampled pairs from pi_sft * exp(r / beta), then sigmoid-norm.

    python -m jaxpref.main --config=configs/rso.py
    python -m jaxpref.main --config=configs/rso.py --config.loss=hinge    # hinge-norm
    python -m jaxpref.main --config=configs/rso.py --config.rso.pairing=tournament
"""

import ml_collections

from jaxpref.config_base import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "rso"
    c.loss = "dpo"  # sigmoid-norm; "hinge" for hinge-norm
    c.beta = 0.1  # the loss's gamma
    c.rso = ml_collections.ConfigDict(
        dict(num_samples=16, num_accept=8, sampling_beta=0.1, pairing="first_round")
    )
    return c
