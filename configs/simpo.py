"""SimPO (Meng et al. 2024): reference-free, length-normalised, with a target margin gamma.

Pure SimPO (cpo_alpha=0); TRL's CPOTrainer(loss_type="simpo") adds the chosen NLL unless cpo_alpha=0.

    python -m jaxpref.main --config=configs/simpo.py
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.method = "simpo"
    c.loss = "simpo"
    c.beta = 2.0
    c.simpo_gamma = 0.5
    c.cpo_alpha = 0.0
    return c
