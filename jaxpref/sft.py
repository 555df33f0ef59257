"""Supervised fine-tuning of the built-in task's tiny policy, cached by config hash.

The SFT policy is the starting point (and the frozen reference) of every preference run on
the built-in task. It is stored as an HF-format folder (``save_pretrained``) under
``<cache_dir>/<hash>/``, where the hash covers everything that determines it (task, model
shape, SFT hyper-parameters, seed), so later runs of any method reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxpref.batches import default_buckets, pad_sequences
from jaxpref.compiler_options import train_compiler_options
from jaxpref.models import init_model, load_pretrained, save_pretrained
from jaxpref.objectives import Sequences
from jaxpref.tasks.synthetic import BOS, EOS, PAD, EchoTask
from jaxpref.train_state import create_train_state
from jaxpref.train_step import make_sft_step

log = logging.getLogger("jaxpref")


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
        "seed": seed,
        "version": 2,  # 2: unrolled small stacks and CPU compile options (rounding-level changes)
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    """``$JAXPREF_CACHE_DIR/sft``, else ``~/.cache/jaxpref/sft`` (``$XDG_CACHE_HOME`` honoured)."""
    root = os.environ.get("JAXPREF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxpref"
    )
    return os.path.join(root, "sft")


def load_or_train_sft(task: EchoTask, model_cfg, sft_cfg, seed: int, *, dtype=jnp.float32):
    """Returns ``(model, sft_params, info)``; trains and caches the SFT policy if needed."""
    fields = tiny_model_config(task, model_cfg)
    key = sft_cache_key(task, fields, sft_cfg, seed)
    path = os.path.join(sft_cfg.cache_dir or default_cache_dir(), key)
    if os.path.exists(os.path.join(path, "config.json")):
        log.info("SFT policy: cached at %s", path)
        model, params = load_pretrained(path, dtype=dtype)
        return model, params, {"sft_cache": path, "sft_cached": True}
    log.info("SFT policy: training (%d steps), will cache at %s", sft_cfg.steps, path)
    t0 = time.perf_counter()
    model, params = init_model(fields, seed=seed, dtype=dtype)
    params, final_loss = train_sft(model, params, task, sft_cfg, seed)
    tmp = path + f".tmp{os.getpid()}"
    save_pretrained(model, params, tmp)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.replace(tmp, path)  # atomic: a half-written cache entry is never picked up
    except OSError:  # another process (multi-host job) cached the same policy first
        if not os.path.exists(os.path.join(path, "config.json")):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return model, params, {
        "sft_cache": path, "sft_cached": False, "sft_seconds": time.perf_counter() - t0, "sft_final_loss": final_loss,
    }


def train_sft(model, params, task: EchoTask, sft_cfg, seed: int):
    """Fits ``params`` to the task's behaviour-policy responses; returns ``(params, last_loss)``."""
    data = task.sft_dataset(seed, sft_cfg.num_examples)
    length = default_buckets(task.max_length)[-1]
    ids, attn, comp = pad_sequences([p for p, _ in data], [y for _, y in data], length=length, pad_id=PAD)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, sft_cfg.learning_rate, 20, sft_cfg.steps))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(seed), with_reference=False)
    options = train_compiler_options(model.config.hidden_size)
    step_fn = jax.jit(make_sft_step(model, tx), donate_argnums=0, compiler_options=options)
    rng = np.random.default_rng([seed, 7])
    loss = float("nan")
    for i in tqdm(range(sft_cfg.steps), desc="sft", mininterval=2.0, disable=jax.process_index() != 0):
        idx = rng.integers(0, len(data), sft_cfg.batch_size)
        state, metrics = step_fn(state, Sequences(ids[idx], attn[idx], comp[idx]))
        if i % 100 == 0 or i == sft_cfg.steps - 1:
            loss = float(metrics["loss"])
            log.info("sft step %d loss %.4f", i, loss)
    return state.params, loss
