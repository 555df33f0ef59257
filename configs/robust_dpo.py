"""Robust DPO (Chowdhury et al. 2024): DPO made unbiased under an assumed label-flip rate.

    python -m jaxpref.main --config=configs/robust_dpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "robust"
    c.loss = "robust"
    c.label_smoothing = 0.1
    return c
