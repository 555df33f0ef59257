"""Length-normalised DPO (TRL's sigmoid_norm; Tulu 3): DPO on per-token average log-ratios.

    python -m jaxpref.main --config=configs/dpo_norm.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "sigmoid_norm"
    c.loss = "sigmoid_norm"
    c.beta = 1.0
    return c
