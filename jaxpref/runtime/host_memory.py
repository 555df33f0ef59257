"""Give the C heap's free pages back to the operating system (glibc ``malloc_trim``).

XLA's compiler allocates a few hundred MiB of short-lived host memory while it compiles a step.
glibc keeps those pages mapped after they are freed, and the step's execution buffers are
separate large mappings that never reuse them, so on CPU they stay in the process's resident set
for the whole run (measured: 180-250 MiB of a 0.8-3 GiB peak, ``benchmarks/RESULTS.md``).
Trimming the heap after each compilation, before the compiled step first runs
(``CompileAhead``), returns them. Elsewhere (macOS, musl) the trim is a no-op.

``CompileAhead`` also bounds how many compiled steps stay in memory (one per batch shape).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import threading
import time

import jax
import numpy as np


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim  # noqa: B018 - raises AttributeError off glibc
    except (OSError, AttributeError):
        return None
    return lib


def release_free_heap() -> bool:
    """Returns freed heap pages to the OS; True if glibc released any memory."""
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.malloc_trim(0))


class CompileInterrupted(Exception):
    """A compilation was abandoned because ``CompileAhead.interrupt()`` became true."""


COMPILE_THREAD = "xla-compile"

# Train-step executables kept per step function (``config.max_step_executables``).
DEFAULT_MAX_EXECUTABLES = 16


def compiling_in_background() -> bool:
    """True while an abandoned compilation (``CompileInterrupted``) still runs in its thread: the
    process must then leave by ``os._exit``, as finalizing the interpreter under a thread inside
    the XLA compiler aborts it (SIGABRT instead of the exit status the job chose)."""
    return any(t.name == COMPILE_THREAD and t.is_alive() for t in threading.enumerate())


class CompileAhead:
    """Wraps a jitted ``step(state, *batch)``: compiles each new batch shape ahead of running it,
    then trims the heap, so the compiler's freed memory is returned before the step's buffers
    are allocated (the process's peak is then state + step temporaries, not + compiler residue).

    Calls with a shape/dtype signature seen before reuse its executable; donation and shardings
    are those of the jitted function. At most ``max_executables`` executables are kept, the least
    recently used dropped first; a dropped shape is compiled again when it comes back (from JAX's
    persistent cache when that is on and the compile took long enough to be stored).

    Each executable holds host memory (about 20 MB for a SmolLM2-135M train step on CPU; its
    serialized form is 0.3 MB), and variable-length data meets a new shape on most of its first
    steps. JAX's own caches would also keep each shape's lowering and executable for as long as
    the jitted function lives (about 50 MB a shape together), so they are told to forget it once
    its executable is here (``clear_cache``), and a dropped executable is really freed. In JAX 0.10
    that also empties jit's parameter-inference cache for every function: others pay a little
    Python on their next slow-path call, no retrace or recompile. Measured on a 10-step LoRA DPO
    job (SmolLM2-135M, a new shape every step): peak 1.81 GiB keeping everything before JAX's
    caches were cleared, 1.63 GiB with 8 kept, 1.50 GiB with 1. The default, 16, holds the 16
    shapes a 21-step job of that data met without dropping one: dropping costs time (8 kept made
    that job's wall time 266 s instead of 227-235 s for 0.08 GiB less peak).

    With ``interrupt`` set (a callable), each compilation runs
    in a worker thread while this thread polls ``interrupt()`` (and so stays able to run signal
    handlers); when it turns true, ``CompileInterrupted`` is raised and the compilation is left
    to finish in the background.
    """

    def __init__(self, jitted, max_executables: int = DEFAULT_MAX_EXECUTABLES):
        if max_executables < 1:
            raise ValueError(f"max_executables must be >= 1, got {max_executables}")
        self.jitted = jitted
        self.max_executables = max_executables
        self._executables: collections.OrderedDict = collections.OrderedDict()
        self.interrupt = None
        self.compile_seconds = 0.0  # spent compiling new shapes, in total
        self.compilations = 0  # executables built (a shape dropped and met again counts again)

    def _compile(self, state, batch):
        lowered = self.jitted.lower(state, *batch)
        if self.interrupt is None:
            return lowered.compile()
        result: dict = {}

        def work():
            try:
                result["compiled"] = lowered.compile()
            except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
                result["error"] = err

        worker = threading.Thread(target=work, daemon=True, name=COMPILE_THREAD)
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.1)
            if worker.is_alive() and self.interrupt():
                raise CompileInterrupted()
        if "error" in result:
            raise result["error"]
        return result["compiled"]

    @staticmethod
    def _signature(args) -> tuple:
        leaves, treedef = jax.tree.flatten(args)
        return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)

    def __call__(self, state, *batch):
        key = self._signature(batch)
        compiled = self._executables.get(key)
        if compiled is None:
            t0 = time.perf_counter()
            while len(self._executables) >= self.max_executables:
                self._executables.popitem(last=False)  # before compiling: its memory is free for it
            compiled = self._executables[key] = self._compile(state, batch)
            forget = getattr(self.jitted, "clear_cache", None)
            if forget is not None:
                forget()  # jax.jit's caches would otherwise keep every lowering and executable alive
            release_free_heap()
            self.compile_seconds += time.perf_counter() - t0
            self.compilations += 1
        else:
            self._executables.move_to_end(key)
        return compiled(state, *batch)
