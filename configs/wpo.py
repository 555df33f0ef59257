"""WPO (Zhou et al. 2024): DPO with each pair weighted by its responses' length-normalised,
sampling-aligned probabilities under the policy (TRL's use_weighting).

    python -m jaxpref.main --config=configs/wpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "wpo"
    c.loss = "dpo"
    c.use_weighting = True
    return c
