"""The job configuration: defaults that every file in ``configs/`` starts from, and its checks.

Configs are plain data (ml_collections). A method's config file changes only what differs
from these defaults, so the configs stay short and never drift apart. Loss hyper-parameters
(``beta``, ``label_smoothing``, ...) are top-level keys taken from
``jaxpref.objectives.HYPERPARAMETERS``, where each is declared once.

``validate_config`` runs before anything is compiled: unknown keys and wrong types are already
refused by ml_collections (``lock_config=True`` and typed fields); it checks every value against
``CHECKS`` (key, type, range) and the loss hyper-parameters against their declarations. Every
error is a ``ConfigError`` whose message starts with ``config.<key>``.
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_collections

from jaxpref.checks import FLAG, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY, Check
from jaxpref.objectives import HYPERPARAMETERS, OBJECTIVES


class ConfigError(ValueError):
    """A config value is invalid; the message starts with ``config.<key>``."""


def task_config() -> ml_collections.ConfigDict:
    """The built-in echo task (``jaxpref.tasks.synthetic.EchoTask`` fields)."""
    return ml_collections.ConfigDict(
        dict(
            name="echo",
            num_words=24,
            min_prompt_words=3,
            max_prompt_words=6,
            max_response_words=8,
            behaviour_skill=0.35,
            length_noise=0.6,
            length_penalty=0.2,
            bt_temperature=0.1,
        )
    )


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "offline"  # jaxpref.methods: offline | sft | reward_model | rso | sppo | selm | active_dpo
    c.method = "dpo"  # the name written to summary.json
    c.loss = "dpo"  # a row of jaxpref.objectives.OBJECTIVES
    c.seed = 0

    c.task = task_config()

    # Policy model. name="tiny": random-init Llama-style model SFT-trained on the task.
    # Otherwise `path` is a local HF folder (config.json + safetensors + tokenizer).
    c.model = ml_collections.ConfigDict(
        dict(
            name="tiny",
            path="",
            dtype="float32",
            hidden_size=64,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            remat=False,
            scan_unroll=0,  # layers per scan iteration: 0 auto (all if <= 8 layers), -1 all, 1 rolled
        )
    )

    # Supervised fine-tuning of the tiny model (cached by config hash).
    c.sft = ml_collections.ConfigDict(
        dict(num_examples=8192, steps=600, batch_size=64, learning_rate=3e-3, cache_dir="")
    )

    # Preference data. source="": built-in task; else a local .json/.jsonl/.parquet file,
    # a folder, or a hub dataset name (online only).
    c.data = ml_collections.ConfigDict(
        dict(
            source="",
            split="train",
            num_pairs=4096,
            max_length=32,
            max_prompt_length=16,
            on_bad_row="drop",
        )
    )

    # Loss hyper-parameters, declared once in jaxpref.objectives.HYPERPARAMETERS.
    for name, hp in HYPERPARAMETERS.items():
        c[name] = hp.default

    # Trust-region reference updates: every `ref_update_every` steps (tau),
    # ref <- alpha * policy + (1 - alpha) * ref. 0 disables (frozen reference).
    c.ref_update_every = 0
    c.ref_update_alpha = 1.0
    # With a frozen reference, compute its log-probs once before training.
    c.precompute_ref_logps = True
    # Pairs: run each prompt once, chosen and rejected completions packed behind it
    # (jaxpref.data.batches.pack_shared_prompt); same log-probs, fewer tokens through the model.
    c.share_prompt = True

    # Clipped AdamW (or rmsprop / sgd), linear warmup, cosine decay to final_lr_fraction * learning_rate.
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adamw", learning_rate=3e-4, warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0,
             final_lr_fraction=0.1)
    )
    c.batch_size = 32
    c.num_steps = 300

    c.on_nonfinite = "skip"  # skip: drop the update and count it; stop: fail at the next log point
    c.log_every = 25
    c.checkpoint_every = 100
    c.keep_checkpoints = 2

    c.eval = ml_collections.ConfigDict(
        dict(num_prompts=512, round_prompts=256, batch_size=256, temperature=1.0, top_k=0, top_p=1.0,
             max_new_tokens=12)
    )

    # Online methods: prompts per round, how responses are sampled, and who judges them.
    c.num_prompts = 512
    c.sampling = ml_collections.ConfigDict(
        dict(max_new_tokens=12, batch_size=512, temperature=1.0, top_k=0, top_p=1.0)
    )
    c.judge = ml_collections.ConfigDict(dict(kind="oracle", path=""))
    c.export_dir = ""  # if set, the trained policy is written there in HF format

    # Device mesh (jaxpref.runtime.sharding): sizes of the data / fsdp / tensor axes, one may be -1
    # (the remaining devices). rules: a preset of RULE_PRESETS (fsdp | tensor | fsdp_tensor) or a
    # list of (logical_axis, mesh_axis or None) pairs.
    c.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1, rules=ml_collections.FieldReference("fsdp_tensor", field_type=object))
    )
    # Multi-process jobs (jaxpref.runtime.distributed). ""/0/-1: from the JAXPREF_COORDINATOR /
    # JAXPREF_NUM_PROCESSES / JAXPREF_PROCESS_ID env vars (launch/local.sh), else auto-detected on
    # Cloud TPU and SLURM (auto_detect), else a single process.
    c.distributed = ml_collections.ConfigDict(
        dict(coordinator_address="", num_processes=0, process_id=-1, auto_detect=True)
    )
    return c


def with_trust_region(c: ml_collections.ConfigDict, *, alpha: float = 0.6, tau: int = 64) -> ml_collections.ConfigDict:
    """Turns a DPO-family config into its TR- variant (soft update by default).

    The paper's tau in [32, 512] is for runs of thousands of steps; the built-in task runs a
    few hundred, so the default tau is 64 (several reference updates per run).
    """
    c.method = "tr_" + c.method
    c.ref_update_every = tau
    c.ref_update_alpha = alpha
    c.precompute_ref_logps = False  # the reference changes during training
    return c


# --- checks ---------------------------------------------------------------------------------

FLOAT32_MAX = 3.4028234663852886e38  # larger values are inf in float32

SAMPLING = {
    "max_new_tokens": POSITIVE_INT, "batch_size": POSITIVE_INT, "temperature": NON_NEGATIVE,
    "top_k": NON_NEGATIVE_INT, "top_p": Check(float, low=0, low_open=True, high=1),
}

# Every key of get_base_config() except the loss hyper-parameters (checked from their table),
# `mesh` and `distributed` (checked where they are resolved: jaxpref.runtime).
CHECKS: dict[str, Check] = {
    "seed": NON_NEGATIVE_INT,
    "model.dtype": Check(str, choices=("float32", "bfloat16")),
    "model.hidden_size": POSITIVE_INT, "model.intermediate_size": POSITIVE_INT, "model.num_layers": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT, "model.num_kv_heads": POSITIVE_INT, "model.remat": FLAG,
    "model.scan_unroll": Check(int, low=-1),
    "sft.num_examples": POSITIVE_INT, "sft.steps": POSITIVE_INT, "sft.batch_size": POSITIVE_INT,
    "sft.learning_rate": POSITIVE,
    "data.num_pairs": POSITIVE_INT, "data.max_length": Check(int, low=2), "data.max_prompt_length": POSITIVE_INT,
    "data.on_bad_row": Check(str, choices=("error", "drop")),
    "ref_update_every": NON_NEGATIVE_INT, "ref_update_alpha": PROBABILITY, "precompute_ref_logps": FLAG,
    "share_prompt": FLAG,
    "optimizer.learning_rate": Check(float, low=0, low_open=True, high=FLOAT32_MAX),
    "optimizer.warmup_steps": NON_NEGATIVE_INT, "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.max_grad_norm": POSITIVE, "optimizer.final_lr_fraction": Check(float, low=0, high=1),
    "batch_size": POSITIVE_INT, "num_steps": POSITIVE_INT,
    "on_nonfinite": Check(str, choices=("skip", "stop")),
    "log_every": POSITIVE_INT, "checkpoint_every": POSITIVE_INT, "keep_checkpoints": POSITIVE_INT,
    "eval.num_prompts": POSITIVE_INT, "eval.round_prompts": POSITIVE_INT,
    **{f"eval.{k}": v for k, v in SAMPLING.items()},
    "num_prompts": POSITIVE_INT,
    **{f"sampling.{k}": v for k, v in SAMPLING.items()},
    "judge.kind": Check(str), "judge.path": Check(str), "export_dir": Check(str),
}


def require(ok: bool, key: str, message: str) -> None:
    """Raises ``ConfigError("config.<key>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def lookup(cfg, key: str):
    """``cfg`` at a dotted ``key`` (``"optimizer.learning_rate"``); KeyError if absent."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_config(cfg, objectives: Iterable[str] = ()) -> None:
    """Raises ``ConfigError`` naming the first invalid key.

    ``objectives``: the losses the job will train with (``jaxpref.methods``); a loss
    hyper-parameter set away from its default that none of them reads is refused.
    """
    for key, check in CHECKS.items():
        try:
            value = lookup(cfg, key)
        except KeyError:
            continue  # a config may leave a section out (an older or custom config)
        problem = check.problem(value)
        require(problem is None, key, problem or "")
    require(cfg.loss in OBJECTIVES, "loss", f"unknown loss {cfg.loss!r}; known: {sorted(OBJECTIVES)}")
    for name, hp in HYPERPARAMETERS.items():
        problem = hp.check.problem(cfg[name])
        require(problem is None, name, problem or "")
    objectives = tuple(objectives)
    if objectives:
        read = {h for o in objectives for h in OBJECTIVES[o].hparams}
        for name, hp in HYPERPARAMETERS.items():
            require(name in read or cfg[name] == hp.default, name,
                    f"set to {cfg[name]!r}, but the job's loss ({', '.join(objectives)}) does not read it")
    if cfg.ref_update_every > 0:
        require(cfg.ref_update_alpha > 0, "ref_update_alpha", "must be > 0 when ref_update_every > 0")
    require(cfg.data.max_prompt_length < cfg.data.max_length, "data.max_prompt_length",
            "must satisfy 0 < max_prompt_length < max_length")
    if cfg.model.name == "tiny":
        m = cfg.model
        require(m.hidden_size % m.num_heads == 0, "model.num_heads", "must divide model.hidden_size")
        require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", "must divide model.num_heads")
        require((m.hidden_size // m.num_heads) % 2 == 0, "model.num_heads",
                "hidden_size / num_heads (the head dim) must be even for RoPE")
