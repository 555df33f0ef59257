"""TR-IPO (Gorbatovski et al. 2024): IPO whose reference follows the policy.

Every `ref_update_every` (tau) steps: ref <- alpha * policy + (1 - alpha) * ref.

    python -m jaxpref.main --config=configs/tr_ipo.py
    python -m jaxpref.main --config=configs/tr_ipo.py --config.ref_update_alpha=1.0  # hard copy
"""

from jaxpref.config import get_base_config, with_trust_region


def get_config():
    c = get_base_config()
    c.method = "ipo"
    c.loss = "ipo"
    c.beta = 0.5
    return with_trust_region(c, alpha=0.6, tau=64)
