"""DPO (sigmoid loss) on the built-in echo task.

    python -m jaxpref.main --config=configs/dpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "dpo"
    c.loss = "dpo"
    return c
