"""The starting policy of a job, resolved once from ``config.model``: the built-in task's tiny
SFT policy (trained once and cached by config hash), SmolLM2-135M-Instruct for the sentiment
task, or your own Hugging Face checkpoint (a folder or a ``.gguf`` file).

The tiny policy is SFT-trained by the same ``train.rounds.Trainer`` as every job (one round of
the ``sft`` objective) and stored as an HF folder under ``<cache_dir>/<hash>/``, where the hash
covers everything that determines it (task, model shape, SFT hyper-parameters, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxpref.data.batches import UnpairedExample
from jaxpref.data.training_set import TrainingSet
from jaxpref.models import count_params, init_model, load_pretrained, load_tokenizer, save_pretrained
from jaxpref.runtime import distributed, sharding
from jaxpref.tasks.synthetic import BOS, EOS, PAD, EchoTask, make_tokenizer
from jaxpref.train.rounds import Round, Trainer

log = logging.getLogger("jaxpref")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SFT_CACHE_VERSION = 4  # 4: SFT through the shared trainer (same recipe and data order as before)


@dataclasses.dataclass
class Policy:
    """The starting policy of a run and what is needed to feed and judge it.

    ``reward_fn(prompts, responses) -> [N]`` is the oracle on the built-in task, None otherwise.
    """

    model: Any
    params: Any
    tokenizer: Any
    pad_id: int
    eos_id: int
    task: Any
    reward_fn: Callable | None
    info: dict


def echo_task(cfg) -> EchoTask:
    fields = {f.name for f in dataclasses.fields(EchoTask)}
    return EchoTask(**{k: v for k, v in cfg.task.items() if k in fields})


def resolve_policy(cfg, mesh, rules, *, pretrained_sft: bool = True) -> Policy:
    """The starting policy named by ``config.model`` (see the module docstring).

    ``pretrained_sft=False`` (the ``sft`` job) starts the tiny model from its random init.
    ``config.model.dtype`` is the compute dtype (activations and matmuls; log-probs and losses
    are float32 whatever it is); ``config.model.param_dtype`` (default: as loaded, float32 for
    GGUF and the tiny model) the params' storage dtype, which the AdamW moments follow.
    ``config.model.remat`` turns on per-layer recomputation in the backward pass (``remat_of``);
    ``config.model.scan_unroll`` sets how many
    layers one iteration of the scanned stack runs; ``config.model.logits_chunk`` how many
    positions the train step sends through the LM head at a time. None changes any result.
    """
    policy = _load_policy(cfg, mesh, rules, pretrained_sft)
    param_dtype = cfg.model.get("param_dtype", "")
    if param_dtype:  # storage dtype of the params (and so of the AdamW moments); compute stays model.dtype
        dt = DTYPES[param_dtype]
        policy = dataclasses.replace(policy, params=jax.tree.map(lambda x: x.astype(dt), policy.params),
                                     model=policy.model.clone(param_dtype=dt))
    model = policy.model.clone(remat=remat_of(cfg.model.get("remat", "auto"), policy.model.config.hidden_size),
                               scan_unroll=cfg.model.get("scan_unroll", 0),
                               logits_chunk=int(cfg.model.get("logits_chunk", 0)))
    return dataclasses.replace(policy, model=model)


REMAT_MIN_HIDDEN = 512


def remat_of(setting: str, hidden_size: int) -> bool | str:
    """``config.model.remat``: ``"on"``, ``"off"``, ``"dots"`` (recompute all but the projections'
    outputs: ``CausalLM.remat``), or ``"auto"``: on for models at least
    ``REMAT_MIN_HIDDEN`` wide. Measured on SmolLM2-135M (hidden 576) DPO at 8 x 256 tokens on a
    2-core CPU: the step's temporaries 0.74 GiB with it, 4.9 GiB without, at the same step time
    (22.2 s both; the saved activations cost as much memory traffic as the recompute costs
    FLOPs); tiny models keep every activation (faster to compile and run)."""
    if setting == "auto":
        return hidden_size >= REMAT_MIN_HIDDEN
    return "dots" if setting == "dots" else setting == "on"


def _load_policy(cfg, mesh, rules, pretrained_sft: bool) -> Policy:
    dtype = DTYPES[cfg.model.dtype]
    if cfg.model.name == "smollm2-135m":
        from jaxpref.assets import asset_path
        from jaxpref.models import load_gguf
        from jaxpref.tasks.sentiment import SentimentTask

        path = asset_path("smollm2-135m", download=False)  # the error names the fetch command
        model, params = load_gguf(path, dtype=dtype)
        tokenizer = load_tokenizer(path)
        if cfg.data.get("prompts", ""):  # your own prompts and judge: the model alone, no built-in task
            return _own_policy(model, params, tokenizer, path)
        if cfg.task.name != "sentiment":
            raise ValueError("config.task.name: smollm2-135m runs the 'sentiment' task")
        task = SentimentTask(tokenizer, max_new_tokens=cfg.task.max_new_tokens, bt_temperature=cfg.task.bt_temperature)
        return Policy(model, params, tokenizer, task.pad_id, task.eos_id, task, task.rewards, {"model_path": path})
    if cfg.model.name == "tiny":
        task = echo_task(cfg)
        if pretrained_sft:
            model, params, info = load_or_train_sft(task, cfg.model, cfg.sft, cfg.seed, mesh, rules, dtype=dtype)
        else:
            model, params = init_model(tiny_model_config(task, cfg.model), seed=cfg.seed, dtype=dtype)
            info = {"init": "random"}
        return Policy(model, params, make_tokenizer(task), PAD, EOS, task, task.rewards, info)
    if not cfg.model.path:
        raise ValueError("config.model.path: set a local HF checkpoint folder (or model.name='tiny')")
    model, params = load_pretrained(cfg.model.path, dtype=dtype)
    return _own_policy(model, params, load_tokenizer(cfg.model.path), cfg.model.path)


def _own_policy(model, params, tokenizer, path: str) -> Policy:
    """A checkpoint without a built-in task: padding and EOS from its tokenizer."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"config.model.path: the tokenizer of {path} has no eos_token_id")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Policy(model, params, tokenizer, int(pad_id), int(tokenizer.eos_token_id), None, None,
                  {"model_path": path})


# --- the tiny SFT policy of the built-in task -------------------------------------------------


def tiny_model_config(task: EchoTask, model_cfg) -> dict:
    """ModelConfig fields of the tiny Llama-style policy for the built-in task."""
    return dict(
        vocab_size=task.vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_layers=model_cfg.num_layers,
        num_heads=model_cfg.num_heads,
        num_kv_heads=model_cfg.num_kv_heads,
        head_dim=model_cfg.hidden_size // model_cfg.num_heads,
        rope_theta=10000.0,
        rope_scaling=None,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        sliding_window=None,
        max_position_embeddings=max(64, task.max_length),
        model_type="llama",
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def sft_cache_key(task: EchoTask, model_fields: dict, sft_cfg, seed: int) -> str:
    spec = {
        "task": task.__dict__,
        "model": model_fields,
        "sft": {k: sft_cfg[k] for k in ("num_examples", "steps", "batch_size", "learning_rate")},
        "optimizer": sft_trainer_config(sft_cfg, seed).optimizer.to_dict(),
        "seed": seed,
        "version": SFT_CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$JAXPREF_CACHE_DIR/sft``, else ``~/.cache/jaxpref/sft`` (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("JAXPREF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxpref"
    )
    return os.path.join(root, "sft")


def sft_training_set(task: EchoTask, seed: int, n: int) -> TrainingSet:
    """The built-in task's SFT data: ``n`` (prompt, behaviour response) examples."""
    return TrainingSet([UnpairedExample(p, y, True) for p, y in task.sft_dataset(seed, n)])


def sft_trainer_config(sft_cfg, seed: int) -> ml_collections.ConfigDict:
    """The trainer settings of the tiny policy's SFT: AdamW (optax's default weight decay 1e-4, no
    clipping), 20 warmup steps, cosine decay to 0, batches drawn with replacement — the recipe
    every result of this project was measured with."""
    return ml_collections.ConfigDict(dict(
        optimizer=dict(name="adamw", learning_rate=sft_cfg.learning_rate, warmup_steps=20, weight_decay=1e-4,
                       max_grad_norm=float("inf"), final_lr_fraction=0.0),
        batch_size=sft_cfg.batch_size, log_every=100, checkpoint_every=sft_cfg.steps, on_nonfinite="skip",
        share_prompt=False, seed=seed))


def load_or_train_sft(task: EchoTask, model_cfg, sft_cfg, seed: int, mesh, rules, *, dtype=jnp.float32):
    """Returns ``(model, sft_params, info)``; trains and caches the SFT policy if needed."""
    fields = tiny_model_config(task, model_cfg)
    key = sft_cache_key(task, fields, sft_cfg, seed)
    path = os.path.join(sft_cfg.cache_dir or default_cache_dir(), key)
    if os.path.exists(os.path.join(path, "config.json")):
        try:
            model, params = load_pretrained(path, dtype=dtype)
            log.info("SFT policy: cached at %s", path)
            return model, params, {"sft_cache": path, "sft_cached": True}
        except Exception as err:  # noqa: BLE001 - any unreadable entry is trained again
            log.warning("SFT policy cache %s is damaged (%s); training it again", path,
                        str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
            if distributed.is_main_process():
                os.replace(path, f"{path}.damaged-{int(time.time())}")
    log.info("SFT policy: training (%d steps), will cache at %s", sft_cfg.steps, path)
    t0 = time.perf_counter()
    model, params = init_model(fields, seed=seed, dtype=dtype)
    trainer = Trainer(model=model, start_params=params, cfg=sft_trainer_config(sft_cfg, seed), mesh=mesh, rules=rules,
                      pad_id=PAD, buckets=(task.max_length,))
    rnd = Round("sft", sft_training_set(task, seed, sft_cfg.num_examples), "sft", sft_cfg.steps, seed=seed,
                shapes=(task.max_prompt_tokens, task.max_response_tokens), order="replacement")
    result = trainer.train(rnd, trainer.start_params, first_step=0)
    params = sharding.to_host(result.params)  # a collective with several processes
    if distributed.is_main_process():
        tmp = path + f".tmp{os.getpid()}"
        save_pretrained(model, params, tmp)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.replace(tmp, path)  # atomic: a half-written cache entry is never picked up
        except OSError:  # another job cached the same policy first
            if not os.path.exists(os.path.join(path, "config.json")):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    final_loss = result.stats.last_metrics.get("loss", float("nan"))
    return model, jax.device_put(params), {
        "sft_cache": path, "sft_cached": False, "sft_seconds": time.perf_counter() - t0, "sft_final_loss": final_loss,
    }


def lora_start(cfg, params):
    """``(LoraSpec, adapters, fresh)`` of a LoRA job (``config.lora``), or None without LoRA:
    the adapters of ``lora.init_from`` (a PEFT folder; its rank, alpha and targets) or fresh ones
    (``A`` He-uniform from ``config.seed``, ``B`` zero) for the host or device ``params``."""
    lo = cfg.get("lora")
    if lo is None or (lo.rank == 0 and not lo.init_from):
        return None
    from jaxpref.models import lora

    if lo.init_from:
        spec, adapters = lora.read_peft_adapter(lo.init_from, params)
        if lo.dropout != spec.dropout:
            spec = dataclasses.replace(spec, dropout=float(lo.dropout))
        log.info("LoRA from %s: rank %d, alpha %g, targets %s", lo.init_from, spec.rank, spec.alpha,
                 ",".join(spec.targets))
        return spec, adapters, False
    spec = lora.LoraSpec(int(lo.rank), float(lo.alpha), float(lo.dropout), lora.parse_targets(lo.targets))
    adapters = jax.jit(lambda p: lora.init_adapters(p, spec, jax.random.PRNGKey(cfg.seed)))(params)
    log.info("LoRA: rank %d, alpha %g, targets %s: %d trainable params of %d", spec.rank, spec.alpha,
             ",".join(spec.targets), count_params(adapters), count_params(params))
    return spec, adapters, True
