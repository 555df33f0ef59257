"""The online methods on device meshes and across processes match one device.

SELM, SPPO, RSO and active DPO (``configs/<method>.py`` at toy sizes, ``online_mesh_driver.py``)
run on meshes (8, 1, 1), (2, 2, 2) and (1, 4, 2) of 8 fake CPU devices: sampling, the judge,
the reference pass and training all on the mesh. Every logged training loss matches the
one-device run to 1e-4 and the final policies' greedy responses are identical (their log-probs to 1e-4). Then
``launch/local.sh 2 --config=configs/selm.py`` (two processes, each sampling and judging its
share of every round) matches one process the same way.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, toy_cli_flags

from jaxpref.runtime.metrics_log import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "online_mesh_driver.py")
MESHES = ("8,1,1", "2,2,2", "1,4,2")


def driver_env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXPREF_")}
    flags = os.environ.get("XLA_FLAGS", "")
    if devices > 1:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}"
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip()}


@pytest.fixture(scope="module")
def toy_sft(sft_cache):
    """The session's toy SFT policy, trained here on one device if not cached yet (so that the jobs
    below, on any mesh, all start from the same one)."""
    from helpers import load_config, toy

    from jaxpref.policy import resolve_policy
    from jaxpref.runtime import sharding

    cfg = toy(load_config("selm"), sft_cache)
    resolve_policy(cfg, sharding.make_mesh(cfg.mesh), sharding.resolve_rules(cfg.mesh.rules))
    return sft_cache


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory, toy_sft):
    """``{mesh: {method: {"losses", "greedy", ...}}}`` for one device and the three meshes (the two
    driver processes run side by side)."""
    out = tmp_path_factory.mktemp("online_meshes")
    base = [sys.executable, DRIVER, f"--out={out}", f"--sft-cache={toy_sft}"]
    procs = [subprocess.Popen(base + ["--meshes=1,1,1"], env=driver_env(1), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True),
             subprocess.Popen(base + [f"--meshes={m}" for m in MESHES], env=driver_env(8), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)]
    for proc in procs:
        _, err = proc.communicate(timeout=1500)
        assert proc.returncode == 0, err[-4000:]
    return {m: json.loads((out / f"{m.replace(',', 'x')}.json").read_text()) for m in ("1,1,1",) + MESHES}


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("method", ["selm", "sppo", "rso", "active_dpo", "selm_lora"])
def test_online_method_on_mesh_matches_one_device(mesh_runs, mesh, method):
    one, sharded = mesh_runs["1,1,1"][method], mesh_runs[mesh][method]
    assert sharded["mesh"] == dict(zip(("data", "fsdp", "tensor"), map(int, mesh.split(","))))
    assert sharded["devices"] == 8 and one["devices"] == 1
    assert sharded["steps"] == one["steps"] and len(one["steps"]) >= 3
    np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=0, atol=1e-4)
    assert sharded["greedy"] == one["greedy"]
    # the final policies themselves, also where a toy policy answers with EOS alone
    np.testing.assert_allclose(sharded["greedy_logps"], one["greedy_logps"], rtol=0, atol=1e-4)


def test_some_greedy_responses_are_longer_than_eos(mesh_runs):
    """The greedy comparison above is not only of one-token answers."""
    assert any(len(r) > 1 for run in mesh_runs["1,1,1"].values() for r in run["greedy"])


SELM_FLAGS = ["--config.selm.rounds=2", "--config.num_prompts=16", "--config.num_steps=3", "--config.batch_size=16",
              "--config.sampling.batch_size=16", "--config.eval.batch_size=16", "--config.eval.num_prompts=16",
              "--config.eval.round_prompts=16", "--config.data.num_pairs=64", "--config.log_every=1",
              "--config.checkpoint_every=3"]


def selm_job(workdir, sft_cache, export) -> list[str]:
    return ["--config=configs/selm.py", f"--workdir={workdir}", *toy_cli_flags(sft_cache), *SELM_FLAGS,
            f"--config.export_dir={export}"]


def test_selm_on_two_processes_matches_one_process(tmp_path, toy_sft):
    sft_cache = toy_sft
    env = {**driver_env(1), "PYTHON": sys.executable}
    one = subprocess.run([sys.executable, "-m", "jaxpref.main", *selm_job(tmp_path / "one", sft_cache,
                                                                          tmp_path / "one_export")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([os.path.join(ROOT, "launch", "local.sh"), "2",
                          *selm_job(tmp_path / "two", sft_cache, tmp_path / "two_export")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two")]
    assert (summaries[0]["processes"], summaries[1]["processes"]) == (1, 2)
    assert summaries[1]["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    losses = [[r["loss"] for r in read_metrics(str(tmp_path / d)) if r.get("phase") == "train"] for d in ("one", "two")]
    assert len(losses[0]) == 6
    np.testing.assert_allclose(losses[1], losses[0], rtol=0, atol=1e-4)
    # The same policy at the end: identical held-out samples (the summary's examples) and round records.
    for a, b in zip(summaries[0]["rounds"], summaries[1]["rounds"]):
        assert a["distinct_samples"] == b["distinct_samples"]
        assert a["win_rate_vs_sft"] == b["win_rate_vs_sft"]
    assert [e["policy"] for e in summaries[0]["examples"]] == [e["policy"] for e in summaries[1]["examples"]]
