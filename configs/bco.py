"""BCO, pairwise (Jung et al. 2024): chosen and rejected classified against a running reward
baseline carried in the train state.

    python -m jaxpref.main --config=configs/bco.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "bco_pair"
    c.loss = "bco_pair"
    return c
