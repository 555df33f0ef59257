"""Multi-process (multi-host) start-up: one ``jax.distributed.initialize`` before any JAX work.

Where the processes learn about each other, in order:

1. explicit: ``config.distributed.coordinator_address / num_processes / process_id``, each
   falling back to the environment (``JAXPREF_COORDINATOR``, ``JAXPREF_NUM_PROCESSES``,
   ``JAXPREF_PROCESS_ID``; ``launch/local.sh`` sets these);
2. auto-detected: on a Cloud TPU VM or inside a multi-task SLURM step, ``initialize()`` is
   called without arguments and JAX reads the topology from the TPU metadata / SLURM
   variables (disable with ``config.distributed.auto_detect = False``);
3. otherwise a single process: nothing to do.

After ``initialize``, ``jax.devices()`` lists the devices of all processes and
``jax.process_index()`` / ``jax.process_count()`` say who is who.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

from jaxpref.config import ConfigError

log = logging.getLogger("jaxpref")

ENV_COORDINATOR = "JAXPREF_COORDINATOR"
ENV_NUM_PROCESSES = "JAXPREF_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXPREF_PROCESS_ID"
_GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (v4, v5p, v5e, v6e), as JAX's own TPU detection lists them;
# other Google devices (the gVNIC network card of every GCE VM) share the vendor id.
_TPU_PCI_DEVICES = ("0x005e", "0x0062", "0x0063", "0x006f")


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """Explicit coordinates of this process in a multi-process job."""

    coordinator_address: str
    num_processes: int
    process_id: int


def _setting(dcfg: Mapping[str, Any], key: str, env: Mapping[str, str], env_key: str, unset: Any) -> Any:
    """``dcfg[key]`` unless missing or ``unset``, then ``env[env_key]``, then ``unset``."""
    value = dcfg.get(key, unset)
    return env.get(env_key, unset) if value is None or value == unset else value


def explicit_spec(dcfg: Mapping[str, Any] | None, env: Mapping[str, str]) -> ProcessSpec | None:
    """The explicit setting from config values (``""``/``0``/``-1`` = unset) or ``env``; None if absent.

    ``dcfg`` may hold ``coordinator_address`` (``"host:port"``), ``num_processes``,
    ``process_id``. Raises ``ConfigError`` naming ``config.distributed.<key>`` when the
    coordinator is set but the other two are missing or out of range.
    """
    dcfg = dcfg or {}
    address = str(_setting(dcfg, "coordinator_address", env, ENV_COORDINATOR, ""))
    if not address:
        return None
    num = int(_setting(dcfg, "num_processes", env, ENV_NUM_PROCESSES, 0))
    pid = int(_setting(dcfg, "process_id", env, ENV_PROCESS_ID, -1))
    if num < 1:
        raise ConfigError(f"config.distributed.num_processes: set it (or {ENV_NUM_PROCESSES}) with a coordinator")
    if not 0 <= pid < num:
        raise ConfigError(
            f"config.distributed.process_id: need 0 <= process_id < {num} (or {ENV_PROCESS_ID}), got {pid}"
        )
    return ProcessSpec(address, num, pid)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def has_tpu_chips(pci_root: str = "/sys/bus/pci/devices") -> bool:
    """Whether this machine has TPU chips on its PCI bus (a Cloud TPU VM)."""
    return any(
        _read(os.path.join(device, "vendor")) == _GOOGLE_PCI_VENDOR
        and _read(os.path.join(device, "device")) in _TPU_PCI_DEVICES
        for device in glob.glob(os.path.join(pci_root, "*"))
        if os.path.exists(os.path.join(device, "device"))
    )


def detected_cluster(env: Mapping[str, str], pci_root: str = "/sys/bus/pci/devices") -> str | None:
    """``'slurm'`` inside an srun step of several tasks, ``'tpu'`` on a Cloud TPU VM, else None.

    (The batch script of an sbatch job is one process even when the allocation has many
    tasks: only ``srun`` steps set ``SLURM_STEP_NUM_TASKS``.)
    """
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    if has_tpu_chips(pci_root):
        return "tpu"
    return None


def initialize(cfg: Any = None, env: Mapping[str, str] | None = None) -> None:
    """Joins the multi-process job this process belongs to; a no-op for a single process.

    ``cfg``: the job config (reads ``cfg.distributed`` if present) or None. Call it first in
    ``main``, before anything touches a device. Calling it again is a no-op.
    """
    if jax.distributed.is_initialized():
        return
    env = os.environ if env is None else env
    dcfg = cfg.get("distributed") if cfg is not None else None
    spec = explicit_spec(dcfg, env)
    if spec is not None:
        if spec.num_processes == 1:
            return
        log.info("jax.distributed: process %d of %d, coordinator %s", spec.process_id, spec.num_processes,
                 spec.coordinator_address)
        jax.distributed.initialize(spec.coordinator_address, spec.num_processes, spec.process_id)
        return
    auto = dcfg.get("auto_detect", True) if dcfg is not None else True
    cluster = detected_cluster(env) if auto else None
    if cluster is not None:
        log.info("jax.distributed: auto-detecting the %s topology", cluster)
        jax.distributed.initialize()
        return
    requested = int(_setting(dcfg or {}, "num_processes", env, ENV_NUM_PROCESSES, 0))
    if requested > 1:  # N mis-launched processes would each run alone, N writers on one workdir
        raise ConfigError(f"config.distributed.num_processes: {requested} processes need "
                          f"config.distributed.coordinator_address (or {ENV_COORDINATOR}); none is set and no "
                          "SLURM step or Cloud TPU was detected")


def is_main_process() -> bool:
    """True on process 0 (the one that writes summaries, plots and exports)."""
    return jax.process_index() == 0
