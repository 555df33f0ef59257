"""Tiny online jobs (SELM, SPPO, RSO, active DPO) on device meshes, for ``test_online_mesh.py``.

The fake CPU devices must exist before JAX starts, so each device count runs in its own
process:

    python tests/online_mesh_driver.py --out=DIR --sft-cache=C --meshes=1,1,1
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/online_mesh_driver.py \\
        --out=DIR --sft-cache=C --meshes=8,1,1 --meshes=2,2,2 --meshes=1,4,2

Every job is ``jaxpref.main.run`` of ``configs/<method>.py`` at toy sizes with ``log_every=1``
(``selm_lora``: SELM training LoRA adapters, adapters replicated, base sharded).
``DIR/<mesh>.json`` holds, per method, every logged training loss (``metrics.jsonl``) and the
final policy's greedy responses to fixed held-out prompts (and their log-probs), decoded on the same mesh.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from helpers import tiny_online  # noqa: E402

METHODS = {
    "selm": {"selm.rounds": 2},
    "sppo": {"sppo.iterations": 2},
    "rso": {"rso.num_samples": 4, "rso.num_accept": 4},
    "active_dpo": {"active.acquisitions": 2, "active.labels_per_step": 16, "active.pool_size": 16,
                   "active.num_samples": 4, "active.strategies": "hybrid", "active.epochs": 0},
    "selm_lora": {"selm.rounds": 2, "lora.rank": 4, "lora.alpha": 8.0, "optimizer.learning_rate": 3e-3},
}
CONFIGS = {"selm_lora": "selm"}  # job name -> configs/<name>.py when they differ


def job_config(method: str, sft_cache: str, mesh: tuple[int, int, int]):
    """A toy config of ``method`` on ``mesh``: every batch 16 (divisible by data * fsdp up to 8)."""
    cfg = tiny_online(CONFIGS.get(method, method), sft_cache, **METHODS[method])
    cfg.num_prompts, cfg.num_steps, cfg.batch_size, cfg.log_every = 16, 3, 16, 1
    cfg.sampling.batch_size = cfg.eval.batch_size = 16
    cfg.eval.num_prompts = cfg.eval.round_prompts = 16
    cfg.data.num_pairs = 64
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh
    return cfg


def greedy_responses(cfg, export_dir: str, mesh) -> tuple[list[list[int]], list[float]]:
    """The exported policy's greedy responses to 16 held-out prompts, decoded on ``mesh``, and
    their log-probs under it."""
    from jaxpref.infer.sampling import sample_responses
    from jaxpref.models import load_pretrained
    from jaxpref.policy import echo_task
    from jaxpref.runtime import sharding
    from jaxpref.tasks.synthetic import EOS, PAD

    task = echo_task(cfg)
    model, params = load_pretrained(export_dir)
    params = jax.device_put(params, sharding.param_shardings(params, mesh, sharding.resolve_rules(cfg.mesh.rules)))
    responses, logps = sample_responses(model, params, task.eval_prompts(123, 16), jax.random.PRNGKey(0),
                                        eos_id=EOS, pad_id=PAD, max_new_tokens=cfg.sampling.max_new_tokens,
                                        batch_size=16, temperature=0.0, mesh=mesh, prompt_len=task.max_prompt_tokens)
    return responses, [float(x) for x in logps]


def run_method(method: str, sft_cache: str, mesh_shape: tuple[int, int, int], out: str) -> dict:
    from jaxpref.main import run
    from jaxpref.runtime import sharding
    from jaxpref.runtime.metrics_log import read_metrics

    name = f"{method}-{'x'.join(map(str, mesh_shape))}"
    cfg = job_config(method, sft_cache, mesh_shape)
    cfg.export_dir = os.path.join(out, name, "export")
    workdir = os.path.join(out, name, "run")
    summary = run(cfg, workdir)
    mesh = sharding.make_mesh(cfg.mesh)
    greedy, greedy_logps = greedy_responses(cfg, cfg.export_dir, mesh)
    return {"losses": [r["loss"] for r in read_metrics(workdir) if r.get("phase") == "train"],
            "steps": [r["step"] for r in read_metrics(workdir) if r.get("phase") == "train"],
            "greedy": greedy, "greedy_logps": greedy_logps, "mesh": summary["mesh"], "devices": summary["devices"]}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sft-cache", required=True)
    parser.add_argument("--meshes", action="append", required=True, help="data,fsdp,tensor")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for mesh in args.meshes:
        shape = tuple(int(x) for x in mesh.split(","))
        results = {m: run_method(m, args.sft_cache, shape, args.out) for m in args.methods.split(",")}
        with open(os.path.join(args.out, f"{mesh.replace(',', 'x')}.json"), "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
