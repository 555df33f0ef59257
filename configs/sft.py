"""Supervised fine-tuning (token-mean NLL of the completions) on the built-in echo task.

    python -m jaxpref.main --config=configs/sft.py
    python -m jaxpref.main --config=configs/sft.py --config.model.name=hf --config.model.path=DIR \
        --config.data.source=sft.jsonl --config.data.max_length=512 --config.data.max_prompt_length=256

On the built-in task the tiny model starts from its random init (the same SFT that every other
job's starting policy gets, cached) and is evaluated against it. Own data: `prompt`/`completion`
rows (strings or chat messages).
"""

from jaxpref.config import get_base_config


def get_config():
    c = get_base_config()
    c.job = c.method = "sft"
    c.loss = "sft"
    c.num_steps = 600
    c.batch_size = 64
    c.optimizer.learning_rate = 3e-3
    c.log_every = 100
    c.checkpoint_every = 300
    return c
