"""Helpers shared by the test modules: config files and toy-sized job settings."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
    """``configs/<name>.py``'s ``get_config()``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# The toy SFT policy every job test starts from: trained once per test session (``sft_cache``).
TOY_SFT = {"sft.steps": 30, "sft.num_examples": 512, "sft.batch_size": 32}


def set_field(cfg, key: str, value) -> None:
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value


def toy(cfg, cache_dir, **overrides):
    """``cfg`` at toy sizes (a few seconds per job on a CPU), with the session's SFT cache."""
    cfg.sft.cache_dir = str(cache_dir)
    for key, value in TOY_SFT.items():
        set_field(cfg, key, value)
    cfg.data.num_pairs, cfg.batch_size, cfg.num_steps = 128, 16, 6
    cfg.eval.num_prompts, cfg.eval.batch_size = 32, 32
    cfg.log_every, cfg.checkpoint_every = 2, 3
    for k, v in overrides.items():
        set_field(cfg, k, v)
    return cfg


def toy_cli_flags(cache_dir) -> list[str]:
    """The toy SFT settings as ``--config.*`` flags, for jobs run as subprocesses."""
    return [f"--config.sft.cache_dir={cache_dir}"] + [f"--config.{k}={v}" for k, v in TOY_SFT.items()]


def tiny_online(name, cache_dir, **overrides):
    """An online config at toy sizes: 32 prompts per round, 4 steps."""
    cfg = toy(load_config(name), cache_dir)
    cfg.num_prompts, cfg.num_steps = 32, 4
    cfg.sampling.batch_size = 64
    cfg.eval.round_prompts = 16
    for k, v in overrides.items():
        set_field(cfg, k, v)
    return cfg


# The random-init 2-layer Llama of the step-level tests (the ``tiny`` fixture), over the echo
# task's vocabulary (``EchoTask().vocab_size``).
TINY_LM = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
               tie_word_embeddings=True, model_type="llama", max_position_embeddings=64, rope_theta=10000.0,
               rms_norm_eps=1e-6)
