"""Iterative online DPO on SmolLM2-135M-Instruct: ``configs/sentiment_selm.py`` with the plain DPO
loss (the SELM paper's baseline), same prompts, judge calls and steps.

    python -m jaxpref.main --config=configs/sentiment_online_dpo.py
"""

from jaxpref.config import sibling_config


def get_config():
    c = sibling_config(__file__, "sentiment_selm.py")
    c.method, c.loss = "sentiment_online_dpo", "dpo"
    return c
