"""Multi-process JAX over localhost (``launch/local.sh``), the launch scripts, and ``jaxpref.distributed``.

Two processes with 2 fake CPU devices each form a (data 1, fsdp 2, tensor 2) mesh over 4
devices and run the tiny DPO job of ``sharding_driver.py``; the losses, the final params and
the orbax checkpoint they write must match a plain single-device run in this process.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import sharding_driver as driver

from jaxpref.config import ConfigError
from jaxpref.runtime import distributed, sharding
from jaxpref.runtime.checkpointing import Checkpointer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCH = os.path.join(ROOT, "launch")


def launch_env(**extra: str) -> dict[str, str]:
    """The environment for launch scripts: this interpreter, the tests folder importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXPREF_")}
    env.update(PYTHON=sys.executable, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([HERE, env.get("PYTHONPATH", "")]), **extra)
    return env


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """``(output folder, results of process 0, single-device reference)``."""
    out = tmp_path_factory.mktemp("two_processes")
    env = launch_env(XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {driver.FAST_COMPILE_FLAGS}")
    proc = subprocess.Popen(
        [os.path.join(LAUNCH, "local.sh"), "--module", "sharding_driver", "2", "multihost", f"--out={out}",
         "--mesh=1,2,2"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    reference = driver.single_device_run(driver.FAST_COMPILE_OPTIONS)  # while the two processes run
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    assert "[0] " in log and "[1] " in log  # both processes' lines, prefixed
    with open(out / "multihost.json") as f:
        return out, json.load(f), reference


def test_two_processes_match_one_process(two_processes):
    out, results, reference = two_processes
    assert results["process_count"] == 2 and results["device_count"] == 4
    assert results["mesh"] == dict(data=1, fsdp=2, tensor=2)
    np.testing.assert_allclose(results["losses"], reference["losses"], atol=1e-5, rtol=0)
    params = np.load(out / "params.npz")  # gathered from both processes by sharding.to_host
    for key, want in reference["params"].items():
        np.testing.assert_allclose(params[key], want, atol=driver.PARAM_ATOL, rtol=0, err_msg=key)


def test_batch_replicated_across_processes_is_refused(two_processes):
    message = two_processes[1]["replicated_batch_error"]
    assert message.startswith("config.mesh: process 0 owns batch rows (0, 16)")
    assert "multiple of the process count (2)" in message


def test_checkpoint_from_two_processes_restores_on_one_device(two_processes):
    out, _, _ = two_processes
    _, params, tx, _ = driver.tiny_job()
    abstract = driver.abstract_state(params, tx)
    one_device = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    ckpt = Checkpointer(str(out / "checkpoints"))
    state, meta = ckpt.restore(sharding.with_shardings(abstract, one_device))
    ckpt.close()
    assert meta == {"processes": 2} and int(state.step) == driver.STEPS
    saved = np.load(out / "params.npz")
    for key, value in driver.flat_numpy(state.params).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


# --- Launch scripts ---------------------------------------------------------------------------


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=launch_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_local_sh_dry_run_prints_one_command_per_process():
    proc = run_script(os.path.join(LAUNCH, "local.sh"), "--dry-run", "--port", "12345", "3", "--config=configs/dpo.py")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        f"JAXPREF_COORDINATOR=127.0.0.1:12345 JAXPREF_NUM_PROCESSES=3 JAXPREF_PROCESS_ID={i} {sys.executable} "
        "-m jaxpref.main --config=configs/dpo.py"
        for i in range(3)
    ]


def test_local_sh_fails_when_a_process_fails():
    proc = run_script(os.path.join(LAUNCH, "local.sh"), "--module", "no_such_module_for_jaxpref", "2")
    assert proc.returncode != 0
    assert "No module named no_such_module_for_jaxpref" in proc.stdout


@pytest.mark.parametrize("script", ["local.sh", "tpu_vm.sh", "slurm.sbatch"])
def test_launch_scripts_have_help(script):
    proc = run_script("bash", os.path.join(LAUNCH, script), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "--dry-run" in proc.stdout


def test_tpu_vm_dry_run_creates_runs_on_all_workers_and_deletes():
    proc = run_script(os.path.join(LAUNCH, "tpu_vm.sh"), "--dry-run", "--name", "jp-test", "--zone", "us-central2-b",
                      "--accelerator", "v4-16", "--", "--config=configs/dpo.py", "--workdir=/mnt/shared/runs/dpo")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create jp-test --zone=us-central2-b "
                               "--accelerator-type=v4-16 --version=tpu-ubuntu2204-base")
    run = next(line for line in lines if "python -m jaxpref.main" in line)
    assert "--worker=all" in run and "--config=configs/dpo.py" in run
    assert lines[-1].startswith("gcloud compute tpus tpu-vm delete jp-test --zone=us-central2-b --quiet")


@pytest.mark.parametrize("per_node", [False, True])
def test_slurm_dry_run_prints_srun_of_main(per_node):
    env = dict(SLURM_NTASKS_PER_NODE="1", SLURM_NTASKS="4") if per_node else {}
    proc = run_script("bash", os.path.join(LAUNCH, "slurm.sbatch"), "--dry-run", "--config=configs/dpo.py", **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("srun --label")
    assert f"{sys.executable} -m jaxpref.main --config=configs/dpo.py" in proc.stdout
    assert ("JAXPREF_NUM_PROCESSES=4" in proc.stdout) == per_node  # per GPU: jax auto-detects SLURM


# --- jaxpref.distributed ----------------------------------------------------------------------


def test_explicit_spec_from_config_then_environment():
    env = {"JAXPREF_COORDINATOR": "127.0.0.1:9999", "JAXPREF_NUM_PROCESSES": "4", "JAXPREF_PROCESS_ID": "3"}
    assert distributed.explicit_spec(None, env) == distributed.ProcessSpec("127.0.0.1:9999", 4, 3)
    cfg = {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": -1}
    want = distributed.ProcessSpec("127.0.0.1:1234", 2, 1)
    assert distributed.explicit_spec(cfg, {"JAXPREF_PROCESS_ID": "1"}) == want
    assert distributed.explicit_spec({"coordinator_address": ""}, {}) is None


@pytest.mark.parametrize(
    "env, match",
    [
        ({"JAXPREF_COORDINATOR": "127.0.0.1:1"}, r"config\.distributed\.num_processes"),
        ({"JAXPREF_COORDINATOR": "127.0.0.1:1", "JAXPREF_NUM_PROCESSES": "2", "JAXPREF_PROCESS_ID": "2"},
         r"config\.distributed\.process_id: need 0 <= process_id < 2"),
    ],
)
def test_explicit_spec_errors_name_the_key(env, match):
    with pytest.raises(ConfigError, match=match):
        distributed.explicit_spec(None, env)


def fake_pci(root, devices: dict[str, tuple[str, str]]) -> str:
    """A ``/sys/bus/pci/devices``-like folder: ``{slot: (vendor, device)}``."""
    for slot, (vendor, device) in devices.items():
        (root / slot).mkdir()
        (root / slot / "vendor").write_text(vendor + "\n")
        (root / slot / "device").write_text(device + "\n")
    return str(root)


def test_detected_cluster_reads_slurm_steps_and_tpu_chips(tmp_path):
    no_tpu = fake_pci(tmp_path, {"0000:00:04.0": ("0x1ae0", "0x0042"), "0000:00:05.0": ("0x10de", "0x2330")})
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "16"}, no_tpu) == "slurm"
    # The batch script itself, or a one-task step, is a single process.
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, no_tpu) is None
    assert distributed.detected_cluster({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "1"}, no_tpu) is None
    assert distributed.detected_cluster({}, no_tpu) is None  # a GCE GPU VM: gVNIC is Google's too
    fake_pci(tmp_path, {"0000:00:06.0": ("0x1ae0", "0x0063")})
    assert distributed.detected_cluster({}, no_tpu) == "tpu"  # a v5e chip


def test_initialize_is_a_no_op_for_one_process():
    distributed.initialize(None, env={})
    distributed.initialize(None, env={"JAXPREF_COORDINATOR": "127.0.0.1:1", "JAXPREF_NUM_PROCESSES": "1",
                                      "JAXPREF_PROCESS_ID": "0"})
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1 and distributed.is_main_process()
