"""AlphaPO (Gupta et al. 2025): SimPO on reward-shaped length-normalised probabilities.

    python -m jaxpref.main --config=configs/alphapo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "alphapo"
    c.loss = "alphapo"
    c.beta = 2.0
    c.simpo_gamma = 0.5
    c.cpo_alpha = 0.0
    c.alphapo_alpha = 0.25
    return c
