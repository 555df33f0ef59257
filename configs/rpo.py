"""RPO (Pang et al. 2024): DPO plus the NLL of the chosen responses, combined as TRL does.

    python -m jaxpref.main --config=configs/rpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "rpo"
    c.loss = "sigmoid,sft"
    c.loss_weights = "1.0,1.0"
    return c
