"""KTO (Ethayarajh et al. 2024): each built-in pair becomes one desirable + one undesirable example.

    python -m jaxpref.main --config=configs/kto.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "kto"
    c.loss = "kto"
    return c
