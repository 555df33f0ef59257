"""APO-zero (D'Oosterlinck et al. 2024): chosen log-ratios pushed up and rejected down, each
against zero. --config.loss=apo_down when the chosen responses are worse than the model's own.

    python -m jaxpref.main --config=configs/apo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "apo_zero"
    c.loss = "apo_zero"
    return c
