"""XLA compiler options for jaxpref's jitted train steps, per backend.

On CPU, XLA routes dots and element-wise fusions to the YNNPACK library by default. At the
matmul sizes of small models (hidden 256-768, a few hundred tokens per step) those calls
mostly ran on one of the two cores of our benchmark machine while the other waited; with
them off, XLA's own (Eigen) dots split each matmul over the cores. Measured on the tiny DPO
benchmark (``benchmarks/train_step.py --size tiny``, 2-core AMD EPYC, 2026-11-30): +8% tokens/s
in an in-process A/B over 8 alternating rounds; at the small size no change (within ±3%).
GPU and TPU compiles get no options.

Pass the result as ``jax.jit(..., compiler_options=train_compiler_options())``.
"""

from __future__ import annotations

import functools
import logging

import jax

log = logging.getLogger(__name__)

CPU_TRAIN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def train_compiler_options() -> dict[str, str]:
    """``CPU_TRAIN_OPTIONS`` on a CPU backend that accepts them, else ``{}``.

    The option is experimental in XLA: if this jaxlib rejects it (checked once on a scalar
    function), the default compile is used and a warning says so.
    """
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_TRAIN_OPTIONS).lower(1.0).compile()
    except Exception as err:  # noqa: BLE001 - any rejection means: compile without the option
        log.warning("XLA CPU options %s not accepted (%s); using XLA's defaults", CPU_TRAIN_OPTIONS, err)
        return {}
    return dict(CPU_TRAIN_OPTIONS)
