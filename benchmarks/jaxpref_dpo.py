"""The jaxpref side of the DPO benchmarks: build the jitted step, warm it up, time it.

Used by ``train_step.py`` (in a worker subprocess) and ``mfu.py``. The step is what
``jaxpref.main`` runs: ``make_train_step`` with the ``dpo`` objective and the AdamW of
``jaxpref.train.optim.make_optimizer``, jitted with the state donated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from harness import current_rss_mb, peak_rss_mb

from jaxpref.data.batches import PairExample, collate_pairs
from jaxpref.infer.scoring import reference_pass
from jaxpref.objectives import default_hparams, get_objective
from jaxpref.runtime.compiler_options import train_compiler_options
from jaxpref.runtime.host_memory import release_free_heap
from jaxpref.train.optim import make_optimizer, start_schedule
from jaxpref.train.state import TrainState, create_train_state
from jaxpref.train.step import batch_groups, make_train_step

PAIR = ("chosen", "rejected")


def optimizer_config(learning_rate: float, max_grad_norm: float = 1.0) -> ml_collections.ConfigDict:
    """AdamW, no warmup, no weight decay, clipped at ``max_grad_norm`` (TRL's defaults)."""
    return ml_collections.ConfigDict(
        dict(name="adamw", learning_rate=learning_rate, weight_decay=0.0, warmup_steps=0, max_grad_norm=max_grad_norm)
    )


def collate(
    pairs: Sequence[Mapping[str, Sequence[int]]], batch_size: int, seq_len: int, pad_id: int, *, share_prompt: bool
) -> list[Any]:
    """Right-padded ``(groups, extras)`` per batch, all of length ``seq_len``; with
    ``share_prompt`` (jaxpref's default, ``config.share_prompt``) each pair is also packed
    behind one copy of its prompt."""
    examples = [PairExample(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    batches = []
    for i in range(0, len(examples), batch_size):
        batch = collate_pairs(examples[i : i + batch_size], pad_id=pad_id, buckets=[seq_len])
        batches.append(batch_groups(batch, share_prompt=share_prompt, pad_id=pad_id))
    return batches


def batch_tokens(groups: Mapping[str, Any]) -> int:
    """Non-pad tokens of all groups of a batch (host arrays)."""
    return int(sum(np.sum(groups[n].attention_mask) for n in PAIR))


class DPOBench:
    """A jitted jaxpref DPO step on one model, ready to time.

    ``precomputed=True`` feeds reference log-probs as ``extras`` (no reference forward in
    the step, no reference params in the state).
    """

    def __init__(self, model, params, *, learning_rate: float, beta: float, total_steps: int):
        self.model = model
        self.tx = make_optimizer(optimizer_config(learning_rate))
        objective = get_objective("dpo")
        self.step_fn = jax.jit(
            make_train_step(model, objective, default_hparams(objective, beta=beta), self.tx), donate_argnums=0,
            compiler_options=train_compiler_options(model.config.hidden_size),
        )
        state = create_train_state(params, self.tx, rng=jax.random.key(0), with_reference=True)
        self.state: TrainState = state.replace(opt_state=start_schedule(state.opt_state, total_steps))

    def compile(self, batch: tuple[Any, Any]) -> tuple[Any, float]:
        """AOT-compiles the step for ``batch``'s shapes, then returns the compiler's freed heap
        to the OS as the job's step loop does (``jaxpref.runtime.host_memory.CompileAhead``); returns
        ``(compiled, seconds)``."""
        start = time.perf_counter()
        compiled = self.step_fn.lower(self.state, *batch).compile()
        seconds = time.perf_counter() - start
        release_free_heap()
        return compiled, seconds

    def precompute_reference(self, batches: Sequence[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        """Batches whose extras carry ``ref_chosen``/``ref_rejected``; drops the reference params."""
        out = []
        for groups, extras in batches:
            ref = jax.device_get(reference_pass(self.model, self.state.ref_params, groups, PAIR))
            out.append((groups, {**extras, **{f"ref_{n}": np.asarray(ref[n]) for n in PAIR}}))
        self.state = self.state.replace(ref_params=None)
        return out

    def run(self, compiled, batches: Sequence[tuple[Any, Any]]) -> tuple[float, float, list[float]]:
        """Runs one step per batch, blocking only at the end.

        Returns ``(wall seconds, process CPU seconds, losses)``.
        """
        metrics = []
        cpu_start, start = time.process_time(), time.perf_counter()
        for groups, extras in batches:
            self.state, m = compiled(self.state, groups, extras)
            metrics.append(m["loss"])
        jax.block_until_ready((self.state, metrics))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return seconds, cpu_seconds, [float(x) for x in jax.device_get(metrics)]


def time_dpo(bench: DPOBench, batches: Sequence[tuple[Any, Any]], *, steps: int) -> dict[str, Any]:
    """Compile, one warm-up step on ``batches[0]``, then ``steps`` timed steps on the next ones."""
    rss_before_compile = current_rss_mb()
    compiled, compile_s = bench.compile(batches[0])
    peak_after_compile = peak_rss_mb()
    warm_s, _, warm_loss = bench.run(compiled, batches[:1])
    timed = [batches[1 + i % (len(batches) - 1)] for i in range(steps)]
    seconds, cpu_seconds, losses = bench.run(compiled, timed)
    tokens = sum(batch_tokens(g) for g, _ in timed)
    return {
        "compile_s": compile_s,
        "rss_before_compile_mb": rss_before_compile,
        "peak_rss_after_compile_mb": peak_after_compile,
        "rss_after_steps_mb": current_rss_mb(),
        "warmup_step_s": warm_s,
        "timed_steps": steps,
        "timed_s": seconds,
        "timed_cpu_s": cpu_seconds,
        "step_s": seconds / steps,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "losses": warm_loss + losses,
        "step0_loss_minus_log2": warm_loss[0] - math.log(2),
    }


def dtype_of(name: str) -> Any:
    """``jnp`` dtype from its name (``float32``, ``bfloat16``)."""
    return jnp.dtype(name)
