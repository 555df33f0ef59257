"""EXO-pref (Ji et al. 2024): reverse KL from the policy's pair distribution to the smoothed labels.

    python -m jaxpref.main --config=configs/exo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "exo_pair"
    c.loss = "exo_pair"
    c.label_smoothing = 0.001
    return c
