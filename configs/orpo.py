"""ORPO (Hong et al. 2024): the chosen NLL minus lambda (config beta) times log sigmoid of the
log odds ratio; no reference model. The NLL covers prompt and response, as in TRL.

    python -m jaxpref.main --config=configs/orpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "orpo"
    c.loss = "orpo"
    c.beta = 0.1
    return c
