"""MPO (Wang et al. 2024, mixed preference optimisation): preference (DPO), quality (BCO) and
generation (SFT) losses, combined as TRL does.

    python -m jaxpref.main --config=configs/mpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "mpo"
    c.loss = "sigmoid,bco_pair,sft"
    c.loss_weights = "0.8,0.2,1.0"
    return c
