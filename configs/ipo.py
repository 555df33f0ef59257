"""IPO (Azar et al. 2023) on the built-in echo task, per-token averaged log-ratios (TRL's form).

    python -m jaxpref.main --config=configs/ipo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "ipo"
    c.loss = "ipo"
    c.beta = 0.5
    return c
