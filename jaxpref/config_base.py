"""The default job configuration that every file in ``configs/`` starts from.

Configs are plain data (ml_collections). A method's config file changes only what differs
from these defaults, so the configs stay short and never drift apart.
"""

from __future__ import annotations

import ml_collections


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
    c.job = "offline"  # offline | rso | sppo | selm | active_dpo | reward_model
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

    # Loss hyper-parameters (jaxpref.objectives.LossHParams).
    c.beta = 0.1
    c.label_smoothing = 0.0
    c.delta = 1.0
    c.sft_weight = 0.0
    c.desirable_weight = 1.0
    c.undesirable_weight = 1.0
    c.selm_alpha = 0.001
    c.ipo_average = True

    # Trust-region reference updates: every `ref_update_every` steps (tau),
    # ref <- alpha * policy + (1 - alpha) * ref. 0 disables (frozen reference).
    c.ref_update_every = 0
    c.ref_update_alpha = 1.0
    # With a frozen reference, compute its log-probs once before training.
    c.precompute_ref_logps = True
    # Pairs: run each prompt once, chosen and rejected completions packed behind it
    # (jaxpref.batches.pack_shared_prompt); same log-probs, fewer tokens through the model.
    c.share_prompt = True

    c.optimizer = ml_collections.ConfigDict(
        dict(name="adamw", learning_rate=3e-4, warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0)
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

    # Device mesh (jaxpref.sharding): sizes of the data / fsdp / tensor axes, one may be -1 (the
    # remaining devices). rules: a preset of jaxpref.sharding.RULE_PRESETS (fsdp | tensor |
    # fsdp_tensor) or a list of (logical_axis, mesh_axis or None) pairs.
    c.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1, rules=ml_collections.FieldReference("fsdp_tensor", field_type=object))
    )
    # Multi-process jobs (jaxpref.distributed). ""/0/-1: from the JAXPREF_COORDINATOR /
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
