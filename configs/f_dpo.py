"""f-DPO (Wang et al. 2023): DPO regularised by the Jensen-Shannon divergence instead of
reverse KL (f_divergence_type: forward_kl, js_divergence or alpha_divergence).

    python -m jaxpref.main --config=configs/f_dpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "f_dpo"
    c.loss = "dpo"
    c.f_divergence_type = "js_divergence"
    return c
