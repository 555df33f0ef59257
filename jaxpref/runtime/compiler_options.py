"""XLA compiler options for jaxpref's jitted train steps, per backend and model width.

On CPU, XLA routes dots and element-wise fusions to the YNNPACK library by default. For narrow
models its calls mostly ran on one of the two cores of our benchmark machine while the other
waited; with them off, XLA's own (Eigen) dots split each matmul over the cores. For wider
models YNNPACK's kernels win. Measured on the DPO benchmark (``benchmarks/train_step.py``,
2-core AMD EPYC, 2026-11-30, in-process A/B over 4-8 alternating rounds of the same step):

- tiny (hidden 256): YNNPACK off +8% tokens/s;
- small (hidden 768): YNNPACK off -12% (precomputed reference), -7% (reference in the step).

So the options apply below ``NARROW_HIDDEN_SIZE`` (only those two widths were measured; the
threshold sits between them). GPU and TPU compiles get no options.

Pass the result as ``jax.jit(..., compiler_options=train_compiler_options(hidden_size))``.
"""

from __future__ import annotations

import functools
import logging

import jax

log = logging.getLogger(__name__)

NARROW_HIDDEN_SIZE = 512
CPU_NARROW_MODEL_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_accepts_narrow_model_options() -> bool:
    """Whether this jaxlib's CPU compiler takes ``CPU_NARROW_MODEL_OPTIONS`` (checked once, on a
    scalar function)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_NARROW_MODEL_OPTIONS).lower(1.0).compile()
    except Exception as err:  # noqa: BLE001 - any rejection means: compile without the options
        log.warning("XLA CPU options %s not accepted (%s); using XLA's defaults", CPU_NARROW_MODEL_OPTIONS, err)
        return False
    return True


def train_compiler_options(hidden_size: int) -> dict[str, str]:
    """``CPU_NARROW_MODEL_OPTIONS`` for a model narrower than ``NARROW_HIDDEN_SIZE`` on a CPU
    backend that accepts them; else ``{}`` (XLA's defaults).

    The option is experimental in XLA: if this jaxlib rejects it, the default compile is used
    and a warning says so.
    """
    if jax.default_backend() != "cpu" or hidden_size >= NARROW_HIDDEN_SIZE:
        return {}
    if not _cpu_accepts_narrow_model_options():
        return {}
    return dict(CPU_NARROW_MODEL_OPTIONS)
