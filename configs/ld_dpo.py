"""LD-DPO (Liu et al. 2024): DPO with the response tokens beyond the shorter response of each
pair weighted by ld_alpha (length desensitisation).

    python -m jaxpref.main --config=configs/ld_dpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "ld_dpo"
    c.loss = "dpo"
    c.ld_alpha = 0.5
    return c
