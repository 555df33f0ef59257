"""Meshes, logical-axis rules, sharded train state and the sharded DPO step.

The rule and shape logic runs here on abstract meshes (no devices). The sharded runs need 8
fake CPU devices, which must exist before JAX starts, so ``sharding_driver.py meshes`` runs
them, and their single-device references, in a subprocess.
"""

import functools
import json
import logging
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
import sharding_driver as driver
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec

from jaxpref.config import ConfigError
from jaxpref.models import CausalLM, as_model_config, init_params
from jaxpref.runtime import sharding
from jaxpref.train.state import create_train_state, train_state_shardings

HERE = os.path.dirname(os.path.abspath(__file__))


def abstract_mesh(data: int, fsdp: int, tensor: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@functools.cache
def tiny_abstract_params():
    model = CausalLM(as_model_config(driver.MODEL))
    return jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))


# --- Mesh shapes and rules (no devices) -------------------------------------------------------


def test_mesh_shape_fills_one_axis():
    assert sharding.mesh_shape(dict(data=-1, fsdp=4, tensor=2), 16) == (2, 4, 2)
    assert sharding.mesh_shape(dict(data=1, fsdp=8, tensor=1), 8) == (1, 8, 1)


@pytest.mark.parametrize(
    "axes, match",
    [
        (dict(data=2, fsdp=2, tensor=1), r"config\.mesh\.data/fsdp/tensor: data=2 \* fsdp=2 \* tensor=1 = 4 does not "
                                         r"match jax.device_count\(\) = 8"),
        (dict(data=-1, fsdp=3, tensor=1), r"config\.mesh\.data: -1 cannot fill 8 devices"),
        (dict(data=-1, fsdp=-1, tensor=1), r"config\.mesh\.fsdp: only one mesh axis may be -1"),
        (dict(data=1, fsdp=0, tensor=8), r"config\.mesh\.fsdp: must be a positive size or -1"),
    ],
)
def test_mesh_shape_errors_name_the_key(axes, match):
    with pytest.raises(ConfigError, match=match):
        sharding.mesh_shape(axes, 8)


def test_make_mesh_has_auto_axes():
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == dict(data=jax.device_count(), fsdp=1, tensor=1)
    assert mesh.axis_types == (AxisType.Auto,) * 3


def test_resolve_rules_presets_and_config_lists():
    assert sharding.resolve_rules("fsdp_tensor") == sharding.RULE_PRESETS["fsdp_tensor"]
    cfg = ml_collections.ConfigDict({"rules": [["embed", "fsdp"], ["mlp", None]]})
    assert sharding.resolve_rules(cfg.rules) == [("embed", "fsdp"), ("mlp", None)]
    with pytest.raises(ConfigError, match=r"config\.mesh\.rules: unknown preset 'zero3'"):
        sharding.resolve_rules("zero3")
    with pytest.raises(ConfigError, match=r"'mlp' maps to unknown mesh axis 'model'"):
        sharding.resolve_rules([("mlp", "model")])
    with pytest.raises(ConfigError, match=r"'mlp' is listed twice"):
        sharding.resolve_rules([("mlp", "tensor"), ("mlp", None)])


def test_logical_to_spec_maps_names_through_the_rules():
    rules = sharding.RULE_PRESETS["fsdp_tensor"]
    spec = sharding.logical_to_spec(("layers", "embed", "q_heads", "head_dim"), (2, 64, 8, 16), abstract_mesh(1, 4, 2),
                                    rules)
    assert spec == PartitionSpec(None, "fsdp", "tensor", None)


def test_logical_to_spec_replicates_indivisible_dims_and_logs(caplog):
    rules = sharding.RULE_PRESETS["fsdp_tensor"]
    with caplog.at_level(logging.DEBUG, logger="jaxpref"):
        spec = sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 2, 8), abstract_mesh(1, 2, 4), rules,
                                        where="k")
    assert spec == PartitionSpec("fsdp", None, None)
    assert "dim 'kv_heads' (size 2) replicated, not divisible by mesh axis 'tensor' (size 4)" in caplog.text


def test_logical_to_spec_never_uses_a_mesh_axis_twice():
    spec = sharding.logical_to_spec(("embed", "mlp"), (32, 64), abstract_mesh(1, 2, 1),
                                    [("embed", "fsdp"), ("mlp", "fsdp")])
    assert spec == PartitionSpec("fsdp", None)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (1, 2, 4), (2, 2, 2)])
def test_param_shardings_give_even_shards_for_every_param(mesh_shape):
    params = tiny_abstract_params()
    shardings = sharding.param_shardings(params, abstract_mesh(*mesh_shape), sharding.resolve_rules("fsdp_tensor"))
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
        shard = s.shard_shape(p.shape)  # raises if a sharded dim does not divide
        assert all(d % n == 0 for d, n in zip(p.shape, shard))
    kv_heads_axis = "tensor" if driver.MODEL["num_kv_heads"] % mesh_shape[2] == 0 else None
    assert shardings["layers"]["attn"]["k"]["kernel"].spec == PartitionSpec(None, "fsdp", kv_heads_axis, None)


def test_train_state_shardings_optimizer_state_follows_params():
    params = tiny_abstract_params()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    mesh = abstract_mesh(1, 4, 2)
    rules = sharding.resolve_rules("fsdp_tensor")
    for with_reference in (True, False):
        abstract = jax.eval_shape(
            lambda p, ref=with_reference: create_train_state(p, tx, rng=jax.random.PRNGKey(0), with_reference=ref),
            params,
        )
        shardings = train_state_shardings(abstract, tx, mesh, rules)
        want = sharding.param_shardings(params, mesh, rules)
        adam = shardings.opt_state[1][0]
        assert adam.mu == want and adam.nu == want
        assert adam.count == NamedSharding(mesh, PartitionSpec())
        assert shardings.step.spec == shardings.rng.spec == PartitionSpec()
        assert shardings.ref_params == (want if with_reference else None)


# --- Sharded runs on 8 fake devices (subprocess) ----------------------------------------------


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict:
    """The results of ``sharding_driver.py meshes`` (sharded runs and single-device references)."""
    out = tmp_path_factory.mktemp("meshes")
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count=8 {driver.FAST_COMPILE_FLAGS}"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_driver.py"), "meshes", f"--out={out}"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(out / "meshes.json") as f:
        return json.load(f)


@pytest.mark.parametrize("mesh", ["8,1,1", "2,4,1", "1,4,2"])
def test_dpo_losses_on_mesh_match_single_device(meshes, mesh):
    np.testing.assert_allclose(meshes["losses"][mesh], meshes["losses"]["single"], atol=1e-5, rtol=0)
    assert meshes["compiles"][mesh] == 1  # no recompilation after the first step


def test_params_after_sharded_steps_match_single_device(meshes):
    reference = meshes["reference_params"]
    assert meshes["params"].keys() == reference.keys()
    for key, want in reference.items():
        np.testing.assert_allclose(meshes["params"][key], want, atol=driver.PARAM_ATOL, rtol=0, err_msg=key)


def test_state_layout_follows_fsdp_tensor_rules(meshes):
    specs = meshes["state_specs"]  # on mesh (1, 4, 2)
    q = "['layers']['attn']['q']['kernel']"
    assert specs[f".params{q}"] == [None, "fsdp", "tensor", None]
    assert specs[f".ref_params{q}"] == specs[f".params{q}"]
    assert specs[f".opt_state[0].mu{q}"] == specs[f".opt_state[0].nu{q}"] == specs[f".params{q}"]
    assert specs[".params['embed']['embedding']"] == ["tensor", "fsdp"]
    assert specs[".params['lm_head']['kernel']"] == ["fsdp", "tensor"]
    assert specs[".step"] == specs[".rng"] == specs[".opt_state[0].count"] == []


def test_checkpoint_saved_on_one_mesh_restores_on_another(meshes):
    ckpt = meshes["checkpoint"]
    assert ckpt["saved_mesh"] == [1, 4, 2]
    assert ckpt["values_equal"] and ckpt["shardings_match"]


def test_sampler_runs_unchanged_on_sharded_params_and_prompts(meshes):
    samples = meshes["samples"]
    np.testing.assert_array_equal(samples["tokens"], samples["single_tokens"])
    np.testing.assert_allclose(samples["model_logps"], samples["single_model_logps"], atol=1e-5)
    assert samples["tokens_spec"][0] in ("fsdp", ["data", "fsdp"])  # outputs stay split over the batch


def test_mesh_fill_and_batch_divisibility_error(meshes):
    assert meshes["filled_mesh"] == dict(data=2, fsdp=2, tensor=2)
    assert meshes["batch_error"] == "config.batch_size: the global batch 6 is not divisible by data * fsdp = 4"
