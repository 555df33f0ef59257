"""SLiC-HF calibration hinge (no reference model) on the built-in echo task.

    python -m jaxpref.main --config=configs/slic.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "slic"
    c.loss = "slic"
    c.delta = 1.0
    c.sft_weight = 1.0
    return c
