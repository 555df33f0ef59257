"""Bradley-Terry reward model on the built-in task's preference pairs (a judge for RSO/SELM/SPPO).

    python -m jaxpref.main --config=configs/reward_model.py --workdir=runs/reward_model
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "reward_model"
    c.loss = "bradley_terry"
    c.num_steps = 400
    c.optimizer.learning_rate = 1e-3
    return c
