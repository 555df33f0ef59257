"""DiscoPOP (Lu et al. 2024): a log-ratio modulated blend of the logistic and exponential losses.

    python -m jaxpref.main --config=configs/discopop.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "discopop"
    c.loss = "discopop"
    c.discopop_tau = 0.05
    # beta = 0.1 (and the paper's 0.05) lose to the starting policy on the built-in task (win rate 0.36,
    # 0.28); beta = 0.3 wins (0.62).
    c.beta = 0.3
    return c
