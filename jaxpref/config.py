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

import os
from collections.abc import Iterable

import jax
import ml_collections

from jaxpref.checks import FLAG, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, PROBABILITY, Check
from jaxpref.objectives import HYPERPARAMETERS, LossError, get_objective, objective_of, split_loss
from jaxpref.runtime.host_memory import DEFAULT_MAX_EXECUTABLES
from jaxpref.train.optim import OPTIMIZERS


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
    c.loss = "dpo"  # a row of jaxpref.objectives.OBJECTIVES (TRL names too), or "a,b,c" combined
    c.loss_weights = ""  # for combined losses: "0.8,0.2,1.0" (empty: all 1)
    c.seed = 0

    c.task = task_config()

    # Policy model. name="tiny": random-init Llama-style model SFT-trained on the task.
    # Otherwise `path` is a local HF folder (config.json + safetensors + tokenizer).
    c.model = ml_collections.ConfigDict(
        dict(
            name="tiny",
            path="",
            dtype="float32",  # compute dtype
            param_dtype="",  # params (and AdamW moments) storage: "" as loaded | float32 | bfloat16
            hidden_size=64,
            intermediate_size=192,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            remat="auto",  # recompute each layer in the backward: auto (on for hidden_size >= 512) | on | off | dots
            scan_unroll=0,  # layers per scan iteration: 0 auto (all if <= 8 layers), -1 all, 1 rolled
            logits_chunk=0,  # train step: LM head by vocabulary blocks of N entries: 0 auto (vocab >= 16k), -1 off
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
            # > 0: each batch takes pairs (in shuffled order) up to this many tokens (prompt +
            # responses); batch_size then caps the pairs per batch. Pairwise losses only.
            max_tokens_per_batch=0,
            on_bad_row="drop",
            eval_source="",  # held-out data (same formats); "" -> the source's eval_split, else eval_fraction of it
            eval_split="test",
            eval_fraction=0.05,
            # Online methods: your prompt dataset (same formats; a `prompt` string or chat-message list
            # per row) and its held-out prompts ("" -> its eval_split, else eval_fraction of it).
            prompts="",
            eval_prompts="",
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
    # ...and keep them on disk, keyed by (reference weights, data, tokenization, packing) hashes, so
    # a later or resumed run on the same data skips the reference pass ("" -> ~/.cache/jaxpref or
    # $JAXPREF_CACHE_DIR). precompute_only: write that cache, then stop before training.
    c.ref_cache = True
    c.ref_cache_dir = ""
    # JAX's persistent compilation cache (jaxpref.runtime.compile_cache): a later job of the same
    # shapes loads its compiled steps instead of compiling them; "" dir: ~/.cache/jaxpref/xla.
    c.compile_cache = True
    c.compile_cache_dir = ""
    # Compiled train steps kept in memory per step function (one per batch shape, least recently
    # used dropped; each costs host memory, about 20 MB for SmolLM2-135M on CPU):
    # jaxpref.runtime.host_memory.CompileAhead.
    c.max_step_executables = DEFAULT_MAX_EXECUTABLES  # 16
    c.precompute_only = False
    # Pairs: run each prompt once, chosen and rejected completions packed behind it
    # (jaxpref.data.batches.pack_shared_prompt); same log-probs, fewer tokens through the model.
    c.share_prompt = True
    # ...and padding-free: several pairs per packed row (first-fit by length), each attending only
    # to itself, so a batch of mixed lengths is not padded to its longest pair.
    c.padding_free = True

    # Clipped AdamW (or rmsprop / sgd), linear warmup, cosine decay to final_lr_fraction * learning_rate.
    # lora_learning_rate > 0 replaces learning_rate when LoRA is on (adapters want ~10x more).
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adamw", learning_rate=3e-4, warmup_steps=20, weight_decay=0.0, max_grad_norm=1.0,
             final_lr_fraction=0.1, lora_learning_rate=0.0)
    )
    c.batch_size = 32
    c.num_steps = 300
    # > 0: train this many passes over your own data (data.source) instead of num_steps.
    c.num_epochs = 0.0
    # Micro-batches per step, accumulated inside the jitted step (same gradient, less memory).
    c.grad_accum_steps = 1

    # A step whose loss, gradient or update is non-finite is never applied. skip: count it, and stop
    # the job after max_consecutive_skips of them in a row; stop: stop the job at the first one.
    c.on_nonfinite = "skip"
    c.max_consecutive_skips = 20
    c.log_every = 25
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    # False: checkpoints hold params only (a final export; such a run cannot be resumed).
    c.save_optimizer_state = True
    # Resuming with a config that differs from the checkpoint's is refused; True starts over instead,
    # deleting the workdir's checkpoints and metrics.
    c.overwrite = False

    c.eval = ml_collections.ConfigDict(
        dict(num_prompts=512, round_prompts=256, batch_size=256, temperature=1.0, top_k=0, top_p=1.0,
             max_new_tokens=12)
    )

    # Online methods: prompts per round, how responses are sampled, and who judges them.
    c.num_prompts = 512
    c.sampling = ml_collections.ConfigDict(
        dict(max_new_tokens=12, batch_size=512, temperature=1.0, top_k=0, top_p=1.0)
    )
    c.judge = ml_collections.ConfigDict(
        dict(kind="oracle", path="", function="", weights="", temperature=1.0, max_length=1024)
    )
    c.export_dir = ""  # if set, the trained policy is written there in HF format
    # LoRA (jaxpref.models.lora, through qwix): rank 0 trains every param; rank r > 0 trains only
    # adapters on lora.targets, the reference is the base with the adapters off (or init_from's).
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, dropout=0.0, targets="all", init_from=""))
    c.export_adapter_dir = ""  # with LoRA: the adapters as a PEFT folder

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


def sibling_config(this_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name`` (e.g. ``"sentiment_selm.py"``) in the folder of
    ``this_file``: a config that varies another one loads it with this."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(this_file)), name)
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


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
    "model.param_dtype": Check(str, choices=("", "float32", "bfloat16")),
    "model.hidden_size": POSITIVE_INT, "model.intermediate_size": POSITIVE_INT, "model.num_layers": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT, "model.num_kv_heads": POSITIVE_INT,
    "model.remat": Check(str, choices=("auto", "on", "off", "dots")),
    "model.scan_unroll": Check(int, low=-1), "model.logits_chunk": Check(int, low=-1),
    "sft.num_examples": POSITIVE_INT, "sft.steps": POSITIVE_INT, "sft.batch_size": POSITIVE_INT,
    "sft.learning_rate": POSITIVE,
    "data.num_pairs": POSITIVE_INT, "data.max_length": Check(int, low=2), "data.max_prompt_length": POSITIVE_INT,
    "data.max_tokens_per_batch": NON_NEGATIVE_INT,
    "data.on_bad_row": Check(str, choices=("error", "drop")),
    "ref_update_every": NON_NEGATIVE_INT, "ref_update_alpha": PROBABILITY, "precompute_ref_logps": FLAG,
    "ref_cache": FLAG, "ref_cache_dir": Check(str), "precompute_only": FLAG,
    "compile_cache": FLAG, "compile_cache_dir": Check(str), "max_step_executables": POSITIVE_INT,
    "share_prompt": FLAG, "padding_free": FLAG,
    "optimizer.name": Check(str, choices=OPTIMIZERS),
    "optimizer.learning_rate": Check(float, low=0, low_open=True, high=FLOAT32_MAX),
    "optimizer.lora_learning_rate": Check(float, low=0, high=FLOAT32_MAX),
    "optimizer.warmup_steps": NON_NEGATIVE_INT, "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.max_grad_norm": POSITIVE, "optimizer.final_lr_fraction": Check(float, low=0, high=1),
    "data.eval_source": Check(str), "data.eval_split": Check(str),
    "data.eval_fraction": Check(float, low=0, high=0.5),
    "batch_size": POSITIVE_INT, "num_steps": POSITIVE_INT, "num_epochs": NON_NEGATIVE,
    "grad_accum_steps": POSITIVE_INT, "save_optimizer_state": FLAG, "overwrite": FLAG,
    "on_nonfinite": Check(str, choices=("skip", "stop")), "max_consecutive_skips": POSITIVE_INT,
    "log_every": POSITIVE_INT, "checkpoint_every": POSITIVE_INT, "keep_checkpoints": POSITIVE_INT,
    "eval.num_prompts": POSITIVE_INT, "eval.round_prompts": NON_NEGATIVE_INT,
    **{f"eval.{k}": v for k, v in SAMPLING.items()},
    "num_prompts": POSITIVE_INT,
    **{f"sampling.{k}": v for k, v in SAMPLING.items()},
    "judge.kind": Check(str), "judge.path": Check(str), "judge.function": Check(str), "judge.weights": Check(str),
    "judge.temperature": POSITIVE, "judge.max_length": Check(int, low=2),
    "data.prompts": Check(str), "data.eval_prompts": Check(str), "export_dir": Check(str),
    "lora.rank": NON_NEGATIVE_INT, "lora.alpha": POSITIVE, "lora.dropout": Check(float, low=0.0, high=0.999),
    "lora.targets": Check(str), "lora.init_from": Check(str), "export_adapter_dir": Check(str),
}


# Keys that may change when a run resumes: how long it trains, what it logs and exports, where it
# runs. Any other difference from the checkpoint's config is refused (``config_changes``).
RESUMABLE = ("num_steps", "num_epochs", "log_every", "checkpoint_every", "keep_checkpoints", "export_dir",
             "export_adapter_dir",
             "save_optimizer_state", "overwrite", "on_nonfinite", "max_consecutive_skips", "eval", "mesh",
             "distributed", "sft.cache_dir", "sampling.batch_size", "ref_cache", "ref_cache_dir", "precompute_only",
             "compile_cache", "compile_cache_dir", "max_step_executables")


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"optimizer": {"learning_rate": 1}}`` -> ``{"optimizer.learning_rate": 1}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def as_record(cfg) -> dict:
    """The config as JSON data (what ``config.json`` and every checkpoint record)."""
    import json

    return json.loads(cfg.to_json_best_effort())


def config_changes(old: dict, new: dict) -> list[str]:
    """Keys (dotted) whose values differ between two configs' JSON dicts, except ``RESUMABLE`` ones;
    as ``"key: old -> new"``."""
    a, b = flatten(old), flatten(new)
    resumable = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE)  # noqa: E731
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if not resumable(k) and a.get(k) != b.get(k)]


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
    try:
        objective_of(cfg)
    except LossError as exc:
        raise ConfigError(str(exc)) from None
    for name, hp in HYPERPARAMETERS.items():
        problem = hp.check.problem(cfg[name])
        require(problem is None, name, problem or "")
    objectives = tuple(objectives)
    if objectives:
        rows = [objective_of(cfg, o) for o in objectives]
        read = {h for o in rows for h in o.hparams}
        for name, hp in HYPERPARAMETERS.items():
            require(name in read or cfg[name] == hp.default, name,
                    f"set to {cfg[name]!r}, but the job's loss ({', '.join(objectives)}) does not read it")
        _check_loss_combination(cfg, rows)
        _check_token_budget(cfg, rows)
    if cfg.ref_update_every > 0:
        require(cfg.ref_update_alpha > 0, "ref_update_alpha", "must be > 0 when ref_update_every > 0")
    require(cfg.data.max_prompt_length < cfg.data.max_length, "data.max_prompt_length",
            "must satisfy 0 < max_prompt_length < max_length")
    if "lora" in cfg:
        _check_lora(cfg)
    if cfg.model.name == "tiny":
        m = cfg.model
        require(m.hidden_size % m.num_heads == 0, "model.num_heads", "must divide model.hidden_size")
        require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", "must divide model.num_heads")
        require((m.hidden_size // m.num_heads) % 2 == 0, "model.num_heads",
                "hidden_size / num_heads (the head dim) must be even for RoPE")


def _check_token_budget(cfg, rows) -> None:
    """``data.max_tokens_per_batch`` needs pairwise losses that average over pairs (filler slots
    must not change a batch statistic) and no gradient accumulation."""
    if not cfg.data.get("max_tokens_per_batch", 0):
        return
    key = "data.max_tokens_per_batch"
    for o in rows:
        require(o.paired and not o.batch_statistic, key,
                f"loss {cfg.loss!r} {'reads whole-batch statistics' if o.paired else 'trains on unpaired rows'}; "
                "a token budget needs a pairwise loss averaged over pairs")
    require(cfg.get("grad_accum_steps", 1) == 1, key, "not with grad_accum_steps > 1")


def _check_lora(cfg) -> None:
    from jaxpref.models.lora import LoraSpec, parse_targets

    lo = cfg.lora
    if lo.rank == 0 and not lo.init_from:
        require(not cfg.get("export_adapter_dir", ""), "export_adapter_dir",
                "needs LoRA (set lora.rank or lora.init_from)")
        return
    require(cfg.job not in ("reward_model", "sft"), "lora.rank", f"LoRA is for policy training, not job {cfg.job!r}")
    if lo.init_from:
        require(os.path.isdir(lo.init_from), "lora.init_from", f"{lo.init_from!r} is not a folder")
        return  # rank, alpha and targets come from the adapter's own config
    try:
        LoraSpec(lo.rank, lo.alpha, lo.dropout, parse_targets(lo.targets))
    except ValueError as exc:
        raise ConfigError(f"config.{exc}") from None  # "lora.targets: unknown [...]"


def _check_loss_combination(cfg, rows) -> None:
    """What a loss needs beyond its hyper-parameters' ranges, for the losses the job trains."""
    losses = set(split_loss(cfg.loss))
    if "exo_pair" in losses:
        require(cfg.label_smoothing > 0, "label_smoothing",
                "exo_pair needs label_smoothing > 0 (its target puts that mass on the rejected response; 1e-3 "
                "is the usual value): at 0 the loss is infinite")
    if cfg.f_divergence_type != HYPERPARAMETERS["f_divergence_type"].default:
        plain = [p for p in losses if "f_divergence_type" not in get_objective(p).hparams]
        require(not plain, "f_divergence_type",
                f"set to {cfg.f_divergence_type!r}, but {', '.join(sorted(plain))} does not support it")
    if any("kl" in o.groups for o in rows):
        per_process = cfg.batch_size // max(jax.process_count(), 1) // max(cfg.get("grad_accum_steps", 1), 1)
        require(per_process >= 2, "batch_size",
                f"KTO needs at least 2 examples per process batch (its KL rows pair each example with another "
                f"one's response); got {per_process}")


# --- help -----------------------------------------------------------------------------------

_SAMPLING_HELP = {
    "max_new_tokens": "longest sampled response, in tokens", "batch_size": "prompts per sampling batch",
    "temperature": "sampling temperature (0: greedy)", "top_k": "top-k sampling (0: off)",
    "top_p": "nucleus sampling (1: off)",
}

HELP: dict[str, str] = {
    "job": "what runs: offline | sft | reward_model | rso | sppo | selm | active_dpo",
    "method": "the name written to summary.json and the default workdir runs/<method>",
    "loss": "the preference loss: a row of jaxpref.objectives.OBJECTIVES or a TRL loss_type ('sigmoid'), or a "
            "comma-separated combination ('sigmoid,sft')",
    "loss_weights": "weights of a combined loss, comma-separated ('0.8,0.2,1.0'); empty: all 1",
    "seed": "seed of data order, sampling and init",
    "task": "the built-in task (used when data.source and model.path are unset)",
    "model.name": "'tiny' (built-in model, SFT-trained on the task), 'smollm2-135m', or 'hf' (use model.path)",
    "model.path": "a local Hugging Face folder (config.json + safetensors + tokenizer) or a .gguf file",
    "model.dtype": "compute dtype (activations, matmuls): float32 | bfloat16; log-probs and losses stay float32",
    "model.param_dtype": "params and AdamW moments: '' (as loaded; float32 master weights under bf16 compute) | "
                         "float32 | bfloat16",
    "model.hidden_size": "tiny model: width", "model.intermediate_size": "tiny model: MLP width",
    "model.num_layers": "tiny model: layers", "model.num_heads": "tiny model: attention heads",
    "model.num_kv_heads": "tiny model: key/value heads (grouped-query attention)",
    "model.remat": "recompute each layer in the backward pass: auto (on for hidden_size >= 512) | on | off | dots "
                   "(keep the projections' outputs, recompute the rest)",
    "model.scan_unroll": "layers per scan iteration: 0 auto, -1 all, 1 rolled",
    "model.logits_chunk": "train step: LM head by vocabulary blocks of this many entries, so [B, T, V] logits never "
                          "exist: 0 auto, -1 off",
    "sft.num_examples": "tiny model SFT: examples", "sft.steps": "tiny model SFT: steps",
    "sft.batch_size": "tiny model SFT: batch size", "sft.learning_rate": "tiny model SFT: learning rate",
    "sft.cache_dir": "where the SFT policy is cached (default ~/.cache/jaxpref or $JAXPREF_CACHE_DIR)",
    "data.source": "your data: a .json/.jsonl/.parquet file, a folder of them, a save_to_disk folder, or a hub name",
    "data.split": "the split of data.source to train on",
    "data.num_pairs": "built-in task: preference pairs to generate",
    "data.max_length": "longest prompt + response, in tokens (longer responses are cut)",
    "data.max_prompt_length": "longest prompt, in tokens (longer prompts keep their end)",
    "data.max_tokens_per_batch": "> 0: a token budget per batch (prompt + responses); batch_size caps its pairs",
    "data.on_bad_row": "a row with a missing/empty/invalid field: drop (counted) | error (names file, row, field)",
    "data.eval_source": "held-out data in the same format (default: data.source's eval_split, else eval_fraction)",
    "data.eval_split": "split of data.source used as held-out data when it has one",
    "data.eval_fraction": "share of data.source's rows held out when there is no eval split",
    "ref_update_every": "TR-*: update the reference every this many steps (0: frozen reference)",
    "ref_update_alpha": "TR-*: ref <- alpha * policy + (1 - alpha) * ref (1: hard copy)",
    "precompute_ref_logps": "frozen reference: compute its log-probs once (for the rows the run uses)",
    "ref_cache": "precomputed reference log-probs: reuse them from (and save them to) ref_cache_dir",
    "ref_cache_dir": "reference log-prob cache (default ~/.cache/jaxpref/reference_logps or $JAXPREF_CACHE_DIR)",
    "precompute_only": "compute (or find) the reference log-probs, write the cache, and stop before training",
    "compile_cache": "keep compiled steps on disk (JAX persistent compilation cache) for jobs of the same shapes; "
                     "JAXPREF_COMPILE_CACHE=0 in the environment turns it off",
    "compile_cache_dir": "compilation cache (default ~/.cache/jaxpref/xla or $JAXPREF_CACHE_DIR/xla)",
    "max_step_executables": "compiled train steps kept in memory per step function, one per batch shape "
                            "(least recently used dropped, compiled again if met again)",
    "padding_free": "share_prompt packing puts several pairs per row (not with grad_accum_steps > 1)",
    "share_prompt": "pairs: run each prompt once with both responses packed behind it (not with ld_alpha, "
                    "use_weighting or orpo, which score unpacked rows)",
    "optimizer.name": "adamw | rmsprop | sgd",
    "optimizer.learning_rate": "peak learning rate",
    "optimizer.lora_learning_rate": "peak learning rate when LoRA is on (0: optimizer.learning_rate)",
    "optimizer.warmup_steps": "linear warmup steps",
    "optimizer.weight_decay": "decoupled weight decay",
    "optimizer.max_grad_norm": "clip the gradient's global norm to this",
    "optimizer.final_lr_fraction": "cosine decay to this fraction of the peak learning rate",
    "batch_size": "global batch (examples per optimizer step, over all devices and processes)",
    "num_steps": "optimizer steps (offline and SFT jobs; online jobs: per round)",
    "num_epochs": "> 0: passes over your own data instead of num_steps",
    "grad_accum_steps": "micro-batches per step, accumulated in the jitted step (same gradient, less memory)",
    "on_nonfinite": "a step with a non-finite loss/gradient/update is never applied: skip (count it) | stop",
    "max_consecutive_skips": "stop the job after this many skipped steps in a row",
    "log_every": "steps between metric lines", "checkpoint_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept", "save_optimizer_state": "False: checkpoints hold params only (no resume)",
    "overwrite": "True: delete the workdir's previous run instead of resuming it",
    "eval.num_prompts": "held-out prompts of the final evaluation (built-in task or data.prompts)",
    "eval.round_prompts": "held-out prompts of the quick evaluation after each online round (0: none)",
    **{f"eval.{k}": f"evaluation: {v}" for k, v in _SAMPLING_HELP.items()},
    "num_prompts": "online methods: prompts per round",
    **{f"sampling.{k}": f"online sampling: {v}" for k, v in _SAMPLING_HELP.items()},
    "judge.kind": "who judges online samples: oracle (built-in task) | reward_model | function | "
                  "pairwise_function | intransitive",
    "judge.path": "judge.kind=reward_model: a Hugging Face *ForSequenceClassification folder with its tokenizer",
    "judge.function": "judge.kind=function: 'pkg.module:fn' (or 'file.py:fn'), comma-separated to sum several; "
                      "pairwise_function: one fn(prompts, a, b) -> P(a > b)",
    "judge.weights": "weights of the judge.function rewards, comma-separated (default: 1 each)",
    "judge.temperature": "Bradley-Terry preferences of a pointwise judge: sigmoid((r1 - r2) / temperature)",
    "judge.max_length": "reward model: longest scored sequence in its tokens (longer ones keep their end)",
    "data.prompts": "online methods: your prompts (file / folder / save_to_disk / hub name; a 'prompt' column)",
    "data.eval_prompts": "held-out prompts (default: data.prompts' eval_split, else eval_fraction of it)",
    "export_dir": "write the trained policy there in Hugging Face format",
    "lora.rank": "LoRA rank (0: full fine-tuning); only the adapters train, the reference is the base",
    "lora.alpha": "LoRA scale numerator: the update is (alpha / rank) * A B",
    "lora.dropout": "dropout on the LoRA branch's input during training",
    "lora.targets": "projections with adapters: all | comma-separated q,k,v,o,gate,up,down (or q_proj, ...)",
    "lora.init_from": "start from a PEFT LoRA adapter folder (its rank, alpha and targets; the reference keeps it)",
    "export_adapter_dir": "with LoRA: write the adapters there as a PEFT folder (PeftModel.from_pretrained)",
    "mesh.data": "devices on the data axis (-1: the rest)", "mesh.fsdp": "devices on the fsdp axis (-1: the rest)",
    "mesh.tensor": "devices on the tensor axis (-1: the rest)",
    "mesh.rules": "logical -> mesh axis rules: fsdp | tensor | fsdp_tensor, or a list of pairs",
    "distributed.coordinator_address": "multi-process: host:port of process 0 (or $JAXPREF_COORDINATOR)",
    "distributed.num_processes": "multi-process: number of processes (or $JAXPREF_NUM_PROCESSES)",
    "distributed.process_id": "multi-process: this process's index (or $JAXPREF_PROCESS_ID)",
    "distributed.auto_detect": "detect Cloud TPU / SLURM multi-host settings",
}


def describe_config(cfg) -> str:
    """Every key of ``cfg`` with its value, one-line help and valid range, one per line."""
    rows = []
    for key, value in flatten(as_record(cfg)).items():
        hp = HYPERPARAMETERS.get(key)
        check = hp.check if hp else CHECKS.get(key)
        text = hp.help if hp else HELP.get(key) or HELP.get(key.split(".")[0], "")
        allowed = check.describe() if check is not None and check.kind in (int, float) or (
            check is not None and check.choices) else ""
        rows.append((f"{key} = {value!r}", text + (f"  [{allowed}]" if allowed else "")))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  # {h}" if h else k for k, h in rows)
