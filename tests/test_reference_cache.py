"""Precomputed reference log-probs cached on disk: keys, reuse by a second run, precompute_only."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, toy

import jaxpref.train.rounds as rounds
from jaxpref.data.batches import PairExample
from jaxpref.infer import reference_cache
from jaxpref.main import run
from jaxpref.runtime import sharding


def test_params_fingerprint_sees_every_bit_and_position_and_not_the_sharding():
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)},
              "b": jnp.asarray(rng.normal(size=(16,)), jnp.bfloat16)}
    base = reference_cache.params_fingerprint(params)
    assert reference_cache.params_fingerprint(jax.tree.map(jnp.copy, params)) == base
    bits = np.asarray(params["a"]["kernel"]).view(np.uint32).copy()
    bits[3, 5] ^= 1  # the lowest mantissa bit of one weight
    flipped = {**params, "a": {"kernel": jnp.asarray(bits.view(np.float32))}}
    assert reference_cache.params_fingerprint(flipped) != base
    swapped = np.asarray(params["a"]["kernel"]).copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
    assert reference_cache.params_fingerprint({**params, "a": {"kernel": jnp.asarray(swapped)}}) != base
    assert reference_cache.params_fingerprint({"c": params["a"], "b": params["b"]}) != base  # another name
    if jax.device_count() >= 4:
        mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 1})
        placed = jax.device_put(params, {"a": {"kernel": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
            None, "fsdp"))}, "b": jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))})
        assert reference_cache.params_fingerprint(placed) == base


def test_examples_digest_sees_every_token_and_where_it_is():
    a = [PairExample([1, 2], [3], [4, 5]), PairExample([6], [7], [8])]
    assert reference_cache.examples_digest(a) == reference_cache.examples_digest([PairExample(*e) for e in a])
    assert reference_cache.examples_digest(a) != reference_cache.examples_digest(a[::-1])
    moved = [PairExample([1], [2, 3], [4, 5]), a[1]]  # the same tokens, another prompt/response split
    assert reference_cache.examples_digest(a) != reference_cache.examples_digest(moved)


def test_a_second_run_reads_the_reference_cache_and_trains_the_same(tmp_path, sft_cache, monkeypatch):
    passes = []
    real = rounds.reference_logps_of
    monkeypatch.setattr(rounds, "reference_logps_of", lambda *a, **k: passes.append(1) or real(*a, **k))
    cache = str(tmp_path / "cache")

    only = run(toy(load_config("dpo"), sft_cache, ref_cache_dir=cache, precompute_only=True), str(tmp_path / "pre"))
    assert only["precompute_only"] and not only["cache_hit"] and passes == [1]
    assert not (tmp_path / "pre" / "checkpoints").exists() or not list((tmp_path / "pre" / "checkpoints").iterdir())
    entry = only["reference_cache"]
    with np.load(entry) as f:
        meta = json.loads(str(f["meta"]))
        assert set(f.files) == {"ref_chosen", "ref_rejected", "meta"} and meta["share_prompt"] is True

    first = run(toy(load_config("dpo"), sft_cache, ref_cache_dir=cache), str(tmp_path / "a"))
    assert first["reference_cache"] == {"path": entry, "hit": True} and passes == [1]  # no reference pass
    fresh = run(toy(load_config("dpo"), sft_cache, ref_cache=False), str(tmp_path / "b"))
    assert fresh["reference_cache"] is None and passes == [1, 1]
    curves = [[json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
               if json.loads(x).get("phase") == "train"] for d in ("a", "b")]
    assert curves[0] and curves[0] == pytest.approx(curves[1], rel=1e-5)
    assert first["win_rate_vs_sft"] == fresh["win_rate_vs_sft"]

    # Other data (another seed of the built-in task) or another scoring: another entry.
    other = run(toy(load_config("dpo"), sft_cache, ref_cache_dir=cache, share_prompt=False), str(tmp_path / "c"))
    assert other["reference_cache"]["hit"] is False and other["reference_cache"]["path"] != entry
    assert passes == [1, 1, 1]


def test_a_damaged_cache_entry_is_computed_again(tmp_path, sft_cache):
    cache = str(tmp_path / "cache")
    first = run(toy(load_config("dpo"), sft_cache, ref_cache_dir=cache, precompute_only=True), str(tmp_path / "a"))
    with open(first["reference_cache"], "wb") as f:
        f.write(b"not an npz")
    again = run(toy(load_config("dpo"), sft_cache, ref_cache_dir=cache, precompute_only=True), str(tmp_path / "b"))
    assert again["cache_hit"] is False and again["reference_cache"] == first["reference_cache"]
    with np.load(again["reference_cache"]) as f:
        assert np.isfinite(f["ref_chosen"]).all()


def test_precompute_only_without_a_precomputed_reference_is_one_clear_error(tmp_path, sft_cache):
    from jaxpref.config import ConfigError

    with pytest.raises(ConfigError, match="precompute_only"):
        run(toy(load_config("tr_dpo"), sft_cache, precompute_only=True), str(tmp_path / "a"))
