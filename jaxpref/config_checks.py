"""Config validation that runs before anything is compiled; every error names its key.

Unknown keys and wrong types are already refused by ml_collections (``lock_config=True``
and typed fields); this checks values.
"""

from __future__ import annotations

from jaxpref.objectives import OBJECTIVES


class ConfigError(ValueError):
    """A config value is invalid; the message starts with ``config.<key>``."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{key}: {message}")


def validate_config(cfg) -> None:
    """Raises ``ConfigError`` naming the first invalid key."""
    _require(cfg.loss in OBJECTIVES, "loss", f"unknown loss {cfg.loss!r}; known: {sorted(OBJECTIVES)}")
    _require(cfg.beta > 0, "beta", f"must be > 0, got {cfg.beta}")
    _require(0.0 <= cfg.label_smoothing < 0.5, "label_smoothing", f"must be in [0, 0.5), got {cfg.label_smoothing}")
    _require(0.0 <= cfg.ref_update_alpha <= 1.0, "ref_update_alpha", f"must be in [0, 1], got {cfg.ref_update_alpha}")
    _require(cfg.ref_update_every >= 0, "ref_update_every", f"must be >= 0 (0 = frozen), got {cfg.ref_update_every}")
    if cfg.ref_update_every > 0:
        _require(cfg.ref_update_alpha > 0, "ref_update_alpha", "must be > 0 when ref_update_every > 0")
    _require(cfg.batch_size > 0, "batch_size", f"must be > 0, got {cfg.batch_size}")
    _require(cfg.num_steps > 0, "num_steps", f"must be > 0, got {cfg.num_steps}")
    _require(cfg.optimizer.learning_rate > 0, "optimizer.learning_rate", "must be > 0")
    _require(cfg.optimizer.max_grad_norm > 0, "optimizer.max_grad_norm", "must be > 0")
    _require(cfg.log_every > 0, "log_every", "must be > 0")
    _require(cfg.on_nonfinite in ("skip", "stop"), "on_nonfinite", "must be 'skip' or 'stop'")
    _require(cfg.checkpoint_every > 0, "checkpoint_every", "must be > 0")
    _require(cfg.keep_checkpoints > 0, "keep_checkpoints", "must be > 0")
    _require(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype",
             f"must be float32 or bfloat16, got {cfg.model.dtype!r}")
    unroll = cfg.model.get("scan_unroll", 0)
    _require(type(unroll) is int and unroll >= -1, "model.scan_unroll",
             f"must be -1 (all layers), 0 (auto) or a positive layer count, got {unroll!r}")
    _require(cfg.data.on_bad_row in ("error", "drop"), "data.on_bad_row", "must be 'error' or 'drop'")
    _require(0 < cfg.data.max_prompt_length < cfg.data.max_length, "data.max_prompt_length",
             "must satisfy 0 < max_prompt_length < max_length")
    _require(cfg.eval.temperature >= 0, "eval.temperature", "must be >= 0")
    _require(0 < cfg.eval.top_p <= 1, "eval.top_p", "must be in (0, 1]")
    _require(cfg.eval.batch_size > 0, "eval.batch_size", "must be > 0")
    if "active" in cfg:
        _validate_active(cfg.active)
    if "mesh" in cfg:
        import jax

        from jaxpref.sharding import mesh_shape

        data, fsdp, _ = mesh_shape(cfg.mesh, jax.device_count())
        _require(cfg.batch_size % (data * fsdp) == 0, "batch_size",
                 f"{cfg.batch_size} is not divisible by mesh data*fsdp = {data * fsdp}")
    if cfg.model.name == "tiny":
        m = cfg.model
        _require(m.hidden_size % m.num_heads == 0, "model.num_heads", "must divide model.hidden_size")
        _require(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", "must divide model.num_heads")
        _require(cfg.data.num_pairs >= cfg.batch_size, "data.num_pairs", "must be >= batch_size")


def _validate_active(acfg) -> None:
    """``config.active``: known strategies; entropy and certainty scored per sequence or per token."""
    if "strategies" in acfg:
        from jaxpref.methods.active import parse_strategies

        try:
            parse_strategies(acfg.strategies)
        except ValueError as e:
            raise ConfigError(f"config.{e}") from None
    for name in ("entropy", "certainty"):
        if name in acfg:
            _require(acfg[name] in ("sequence", "per_token"), f"active.{name}",
                     f"must be 'sequence' or 'per_token', got {acfg[name]!r}")
