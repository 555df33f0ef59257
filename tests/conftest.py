"""Session-wide test setup: fast XLA compiles, and one toy SFT policy for every job test.

XLA's CPU backend optimizations are turned down (set before JAX starts, inherited by the jobs
the tests launch as subprocesses): the tests' tiny models spend far more time compiling than
running, and every check holds under either setting (they compare to tolerances that float
rounding stays within). Benchmarks and jobs outside the tests keep XLA's defaults.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sft_cache(tmp_path_factory):
    """The SFT cache folder of every job test: the toy SFT policy is trained by the first job that
    needs it and reused by all later ones (tests/helpers.py: TOY_SFT)."""
    return tmp_path_factory.mktemp("sft_cache")
