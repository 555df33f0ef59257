"""SPPO on SmolLM2-135M-Instruct with your own prompts and a reward function (the sentiment
prompts as a prompt file, VADER through ``judge.kind=function``; its Bradley-Terry preferences at
``judge.temperature`` fill the K x K matrix).

    python -m jaxpref.main --config=configs/sentiment_sppo.py

Two iterations of 224 prompts x 4 samples = 1792 judge calls (each sample scored once), as many
as the offline ``sentiment_dpo`` run, and as many optimizer steps (2 x 28 of 8 pairs).
"""

import ml_collections

from jaxpref.config import sibling_config


def get_config():
    c = sibling_config(__file__, "sentiment_selm.py")
    del c["selm"]
    c.job, c.method, c.loss = "sppo", "sentiment_sppo", "sppo"
    c.sppo = ml_collections.ConfigDict(dict(iterations=2, num_samples=4))
    return c
