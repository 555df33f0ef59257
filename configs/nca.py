"""NCA, pairwise (Chen et al. 2024, noise contrastive alignment) on absolute implicit rewards.

    python -m jaxpref.main --config=configs/nca.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "nca_pair"
    c.loss = "nca_pair"
    return c
