"""JAX's persistent compilation cache for jaxpref jobs (``config.compile_cache``).

A job compiles its train step once per batch shape, its reference pass and its sampler, which on
a CPU takes seconds to minutes for a real model (SmolLM2-135M: about 10-25 s each). With the cache
on, XLA executables are written to ``<cache root>/xla`` (the compile options and XLA flags are part
of each entry's key), and a later job of the same shapes (a resumed run, a re-run, the next
experiment on the same model) loads them instead of compiling. Only compilations that took at
least ``MIN_COMPILE_SECONDS`` are stored. A directory set in JAX's own configuration
(``JAX_COMPILATION_CACHE_DIR``) takes precedence; ``JAXPREF_COMPILE_CACHE=0`` in the environment
turns the cache off for every job (the test suite does, so its timings stay those of a cold start).
"""

from __future__ import annotations

import logging
import os

import jax

from jaxpref.runtime.cache_dirs import cache_dir

log = logging.getLogger("jaxpref")

MIN_COMPILE_SECONDS = 1.0


def default_dir() -> str:
    """``$JAXPREF_COMPILE_CACHE_DIR``, else ``$JAXPREF_CACHE_DIR/xla``, else ``~/.cache/jaxpref/xla``."""
    return cache_dir("xla", "JAXPREF_COMPILE_CACHE_DIR")


def enable(directory: str = "") -> str:
    """Turns the cache on in ``directory`` (default ``default_dir()``) unless JAX already has one;
    returns the directory in use ("" when ``$JAXPREF_COMPILE_CACHE`` is 0)."""
    if os.environ.get("JAXPREF_COMPILE_CACHE", "1") == "0":
        return ""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    directory = directory or default_dir()
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    log.info("compiled steps are cached in %s (config.compile_cache)", directory)
    return directory
