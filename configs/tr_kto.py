"""TR-KTO (Gorbatovski et al. 2024): KTO whose reference follows the policy.

Every `ref_update_every` (tau) steps: ref <- alpha * policy + (1 - alpha) * ref.

    python -m jaxpref.main --config=configs/tr_kto.py
    python -m jaxpref.main --config=configs/tr_kto.py --config.ref_update_alpha=1.0  # hard copy
"""

from jaxpref.config import get_base_config, with_trust_region


def get_config():
    c = get_base_config()
    c.method = "kto"
    c.loss = "kto"
    return with_trust_region(c, alpha=0.6, tau=64)
