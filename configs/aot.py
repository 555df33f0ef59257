"""AOT (Melnyk et al. 2024): DPO on batch-sorted log-ratio margins (distributional alignment).

--config.loss=aot_unpaired sorts the chosen and rejected log-ratios separately.

    python -m jaxpref.main --config=configs/aot.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "aot"
    c.loss = "aot"
    return c
