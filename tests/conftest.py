"""Session-wide test setup: fast XLA compiles, and one toy SFT policy for every job test.

XLA's CPU backend optimizations are turned down (set before JAX starts, inherited by the jobs
the tests launch as subprocesses): the tests' tiny models spend far more time compiling than
running, and every check holds under either setting (they compare to tolerances that float
rounding stays within). Benchmarks and jobs outside the tests keep XLA's defaults.
"""

import os

FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

# Reference log-prob caches of the tests' jobs (and their subprocesses) live for one session only.
import tempfile  # noqa: E402

os.environ.setdefault("JAXPREF_REF_CACHE_DIR", tempfile.mkdtemp(prefix="jaxpref_ref_cache_"))
# Jobs compile from scratch (no persistent compilation cache: config.compile_cache), so the tests
# that signal a job during its first compilation find it compiling.
os.environ.setdefault("JAXPREF_COMPILE_CACHE", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sft_cache(tmp_path_factory):
    """The SFT cache folder of every job test: the toy SFT policy is trained by the first job that
    needs it and reused by all later ones (tests/helpers.py: TOY_SFT)."""
    return tmp_path_factory.mktemp("sft_cache")


@pytest.fixture(scope="session")
def echo_task():
    from jaxpref.tasks.synthetic import EchoTask

    return EchoTask()


@pytest.fixture(scope="session")
def tiny(echo_task):
    """A random-init 2-layer Llama over the echo task's vocabulary: ``(model, params)``."""
    from helpers import TINY_LM

    from jaxpref.models import init_model

    return init_model({"vocab_size": echo_task.vocab_size, **TINY_LM}, seed=0)


@pytest.fixture(scope="session")
def pairs(echo_task):
    """64 echo-task preference pairs (seed 0)."""
    return echo_task.preference_dataset(seed=0, n=64)
