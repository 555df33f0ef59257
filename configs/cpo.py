"""CPO (Xu et al. 2024): reference-free sigmoid preference loss plus the chosen NLL (cpo_alpha).

--config.cpo_loss_type=hinge or ipo selects its other forms.

    python -m jaxpref.main --config=configs/cpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "cpo"
    c.loss = "cpo"
    c.beta = 0.1
    c.cpo_alpha = 1.0
    return c
