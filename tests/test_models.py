"""Tests of jaxpref.models: HF parity (vs PyTorch transformers), checkpoint I/O, KV cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref.models import (
    KVCache,
    ModelConfig,
    count_params,
    decode_model_and_params,
    forward,
    forward_cached,
    init_cache,
    init_model,
    load_pretrained,
    load_tokenizer,
    logical_axes,
    save_pretrained,
    unstack_layers,
)
from jaxpref.models.hf_io import _SafetensorsFolder, parse_size, read_safetensors_header
from jaxpref.models.llama import AUTO_UNROLL_MAX_LAYERS, rope_inverse_frequencies, scan_unroll_length

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
SEQ_LEN = 10
TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=8,
)
HF_MODELS = {
    "llama_gqa_tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    "qwen2_bias": (transformers.Qwen2Config, dict(tie_word_embeddings=False)),
    "mistral_window": (transformers.MistralConfig, dict(sliding_window=3)),
    "llama3_rope": (
        transformers.LlamaConfig,
        dict(rope_parameters=dict(LLAMA3_ROPE, rope_theta=500000.0), num_key_value_heads=4),
    ),
}


# jaxpref-only test models (each compiles its init once, shared by the tests using it).
JAX_MODELS = {
    "mistral_window": dict(model_type="mistral", sliding_window=3),
    "qwen2_bias": dict(model_type="qwen2"),
    "llama_tied_llama3": dict(tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE),
}


def _tiny_fields() -> dict:
    return dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=80,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )


def _torch_model(name: str, dtype=None):
    """A tiny random HF model whose params (norms and biases included) are far from init."""
    config_cls, overrides = HF_MODELS[name]
    config = config_cls(**{**TINY, **overrides}, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if "norm" in param_name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model.to(dtype) if dtype is not None else model


def _batch(padding: str) -> tuple[np.ndarray, np.ndarray]:
    """``[3, SEQ_LEN]`` ids and mask with 10, 7 and 4 real tokens, padded left or right."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, TINY["vocab_size"], (3, SEQ_LEN)).astype(np.int32)
    lengths = np.array([SEQ_LEN, 7, 4])
    mask = (np.arange(SEQ_LEN)[None] < lengths[:, None]).astype(np.int32)
    if padding == "left":
        mask = mask[:, ::-1].copy()
    return np.where(mask == 1, ids, 0).astype(np.int32), mask


def _torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def _max_diff_on_real_tokens(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask == 1].max())


@pytest.fixture(scope="module", params=sorted(HF_MODELS))
def hf_checkpoint(request, tmp_path_factory):
    """``(name, torch model, folder it was saved to)``."""
    model = _torch_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder


@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_transformers(hf_checkpoint, padding):
    _, torch_model, folder = hf_checkpoint
    model, params = load_pretrained(folder)
    ids, mask = _batch(padding)
    expected = _torch_logits(torch_model, ids, mask)
    assert np.abs(expected).max() > 1.0  # weights large enough for the comparison to bite
    logits = forward(model, params, ids, mask)
    assert logits.dtype == jnp.float32
    assert _max_diff_on_real_tokens(logits, expected, mask) <= TOL


def test_params_are_placed_one_by_one_as_they_are_converted(hf_checkpoint, monkeypatch):
    """``place`` gets each param as soon as it is built (no whole host copy of the params first),
    and the tree holds what it returned; load_pretrained's params are device arrays equal to it."""
    from jaxpref.models import hf_io
    from jaxpref.models.hf_io import _SafetensorsFolder, load_config, params_from_hf

    _, _, folder = hf_checkpoint
    files = _SafetensorsFolder(folder)
    events = []

    def get(name):
        events.append("read")
        return files.get(name)

    def place(array):
        events.append("place")
        return ("placed", array)

    placed = params_from_hf(load_config(folder), get, np.float32, place=place)
    leaves = jax.tree.leaves(placed, is_leaf=lambda x: isinstance(x, tuple))
    assert all(leaf[0] == "placed" for leaf in leaves) and events.count("place") == len(leaves)
    assert events[-1] == "place" and events.index("place") < len(events) - len(leaves)  # interleaved

    places = []

    def spy(*args, **kwargs):  # load_pretrained hands its placement to params_from_hf
        places.append(kwargs.get("place"))
        return params_from_hf(*args, **kwargs)

    monkeypatch.setattr(hf_io, "params_from_hf", spy)
    _, params = load_pretrained(folder)
    assert places == [jax.device_put]
    for (_, host), device in zip(leaves, jax.tree.leaves(params), strict=True):
        assert isinstance(device, jax.Array) and np.array_equal(np.asarray(device), host)


def test_loaded_config_matches_checkpoint(hf_checkpoint):
    name, torch_model, folder = hf_checkpoint
    model, _ = load_pretrained(folder)
    config = model.config
    assert config.num_layers == 2
    assert config.num_kv_heads == torch_model.config.num_key_value_heads
    assert config.tie_word_embeddings == torch_model.config.tie_word_embeddings
    assert config.attention_bias == (name == "qwen2_bias")
    assert config.sliding_window == (3 if name == "mistral_window" else None)
    if name == "llama3_rope":
        assert config.rope_theta == 500000.0
        assert config.rope_scaling["factor"] == 8.0


def test_rope_frequencies_match_transformers(hf_checkpoint):
    _, torch_model, folder = hf_checkpoint
    model, _ = load_pretrained(folder)
    expected = torch_model.model.rotary_emb.inv_freq.numpy()
    np.testing.assert_allclose(rope_inverse_frequencies(model.config), expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["llama_tied_llama3", "qwen2_bias"])
def test_save_pretrained_loads_in_transformers(tmp_path, name):
    config = ModelConfig(**_tiny_fields(), **JAX_MODELS[name])
    model, params = init_model(config, seed=1)
    params = jax.tree.map(lambda x: x * 5.0, params)  # larger logits, a stricter comparison
    save_pretrained(model, params, tmp_path)
    torch_model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = _batch("right")
    expected = _torch_logits(torch_model.eval(), ids, mask)
    assert _max_diff_on_real_tokens(forward(model, params, ids, mask), expected, mask) <= TOL
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation.get("eos_token_id") == config.eos_token_id


def test_sharded_checkpoints_round_trip(tmp_path):
    torch_model = _torch_model("qwen2_bias")
    torch_model.save_pretrained(tmp_path / "torch", max_shard_size="40KB")
    assert (tmp_path / "torch" / "model.safetensors.index.json").exists()
    model, params = load_pretrained(tmp_path / "torch")
    ids, mask = _batch("left")
    expected = _torch_logits(torch_model, ids, mask)
    assert _max_diff_on_real_tokens(forward(model, params, ids, mask), expected, mask) <= TOL

    save_pretrained(model, params, tmp_path / "ours", max_shard_size="40KB")
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "ours" / "model.safetensors").exists()
    _, reloaded = load_pretrained(tmp_path / "ours")
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)
    reloaded_torch = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    torch_logits = _torch_logits(reloaded_torch.eval(), ids, mask)
    assert _max_diff_on_real_tokens(torch_logits, expected, mask) <= TOL


def test_safetensors_reader_equals_the_safetensors_library(tmp_path):
    """The plain-read loader gives the arrays ``safetensors`` gives (float32, float16, bfloat16, a
    0-d and an empty tensor), and names the file and tensor of a truncated file or odd dtype."""
    from ml_dtypes import bfloat16
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3, 5)).astype(np.float32), "b": rng.normal(size=(7,)).astype(np.float16),
               "c": rng.normal(size=(2, 2, 3)).astype(bfloat16), "d": np.array(2.5, np.float32),
               "e": np.zeros((0, 4), np.float32)}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    folder = _SafetensorsFolder(tmp_path)
    expected = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(folder.names()) == sorted(expected)
    for name, value in expected.items():
        got = folder.get(name)
        assert got.dtype == value.dtype and got.shape == value.shape and folder.dtype(name) == value.dtype
        assert got.tobytes() == value.tobytes(), name

    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=r"cut/model.safetensors: tensor .* byte range"):
        _SafetensorsFolder(tmp_path / "cut")
    # A tensor of a dtype jaxpref does not read (an integer buffer) is listed; reading it raises.
    (tmp_path / "ints").mkdir()
    save_file({"i": np.arange(4, dtype=np.int64), "w": np.ones(3, np.float32)},
              str(tmp_path / "ints" / "model.safetensors"))
    ints = _SafetensorsFolder(tmp_path / "ints")
    assert sorted(ints.names()) == ["i", "w"] and ints.get("w").tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'i' has dtype 'I64'"):
        ints.get("i")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a safetensors file"):
        read_safetensors_header(tmp_path / "junk.safetensors")
    for bad in (b"[1, 2]", b'{"x": {"dtype": "F32", "shape": [2]}}', b'{"x": {"dtype": "F32", "shape": [-2], '
                                                                      b'"data_offsets": [0, 0]}}'):
        (tmp_path / "bad.safetensors").write_bytes(len(bad).to_bytes(8, "little") + bad)
        with pytest.raises(ValueError, match="bad.safetensors"):
            read_safetensors_header(tmp_path / "bad.safetensors")


def test_loading_a_checkpoint_does_not_keep_the_file_in_memory(tmp_path):
    """Tensors are read, not memory-mapped: reading every tensor of a 96 MB file (and keeping
    them) raises the process's peak resident memory by about the tensors, not by tensors + file
    (a mapped file's read pages count as resident until it is closed)."""
    from safetensors.numpy import save_file

    save_file({f"w{i}": np.full((4 * 2**20,), i, np.float32) for i in range(6)},
              str(tmp_path / "model.safetensors"))
    script = (
        "from pathlib import Path\n"
        "from jaxpref.models.hf_io import _SafetensorsFolder\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024\n"
        f"folder = _SafetensorsFolder(Path({str(tmp_path)!r}))\n"
        "before = hwm()\n"
        "kept = [folder.get(n) for n in folder.names()]\n"
        "assert all(float(k[0]) == float(n[1:]) for k, n in zip(kept, folder.names()))\n"
        "print(hwm() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert 90 <= growth_mb < 96 + 40, growth_mb  # the 96 MB kept; a memory map would add 96 more


def test_bf16_checkpoint_stays_bf16(tmp_path):
    _torch_model("llama_gqa_tied", dtype=torch.bfloat16).save_pretrained(tmp_path)
    model, params = load_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    _, params_f32 = load_pretrained(tmp_path, param_dtype=jnp.float32)
    assert {x.dtype for x in jax.tree.leaves(params_f32)} == {jnp.dtype(jnp.float32)}
    ids, mask = _batch("right")
    assert forward(model, params, ids, mask).dtype == jnp.float32


def test_bf16_compute_is_close_to_float32():
    model32, params = init_model(ModelConfig(**_tiny_fields(), **JAX_MODELS["mistral_window"]))
    model16 = model32.clone(dtype=jnp.bfloat16)
    params = jax.tree.map(lambda x: x * 2.0, params)
    ids, mask = _batch("left")
    logits32 = np.asarray(forward(model32, params, ids, mask))[mask == 1]
    logits16 = forward(model16, params, ids, mask)
    assert logits16.dtype == jnp.float32
    error = np.asarray(logits16)[mask == 1] - logits32
    assert np.linalg.norm(error) <= 0.02 * np.linalg.norm(logits32)


def test_bf16_cached_decode_is_close_to_float32():
    """Decoding with a bfloat16 model and cache (``jaxpref generate --dtype bfloat16``, sampling
    under ``model.dtype=bfloat16``) runs on CPU and stays close to the float32 decode."""
    model32, params = init_model(ModelConfig(**_tiny_fields(), **JAX_MODELS["llama_tied_llama3"]))
    params = jax.tree.map(lambda x: x * 2.0, params)
    ids, _ = _batch("right")
    mask = np.ones_like(ids)
    outs = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = model32.clone(dtype=dtype)
        cache = init_cache(model.config, batch_size=ids.shape[0], max_length=SEQ_LEN, dtype=dtype)
        logits, cache = forward_cached(model, params, ids[:, :4], mask[:, :4], cache, 0)
        pieces = [logits]
        for t in range(4, SEQ_LEN):
            logits, cache = forward_cached(model, params, ids[:, t : t + 1], mask[:, t : t + 1], cache, t)
            pieces.append(logits)
        outs[dtype] = np.concatenate([np.asarray(p, np.float32) for p in pieces], axis=1)
    error = outs[jnp.bfloat16] - outs[jnp.float32]
    assert np.isfinite(outs[jnp.bfloat16]).all()
    assert np.linalg.norm(error) <= 0.02 * np.linalg.norm(outs[jnp.float32])


@pytest.mark.parametrize("layout", ["scanned", "unrolled", "decode"])
@pytest.mark.parametrize("name", sorted(JAX_MODELS))
def test_cached_decode_matches_full_forward(name, layout):
    """Prefill of left-padded prompts of different lengths, then one token at a time.

    The reference is the scanned model's full forward. ``unrolled`` decodes with
    ``scan_layers=False`` on ``unstack_layers`` params; ``decode`` with the layout of
    ``decode_model_and_params`` (unrolled, q/k/v and gate/up fused), which
    ``sampling.generate`` uses.
    """
    model, params = init_model(ModelConfig(**_tiny_fields(), **JAX_MODELS[name]))
    params = jax.tree.map(lambda x: x * 5.0, params)
    ids, mask = _batch("left")
    prompt_len = 6
    prompt_mask = mask[:, :prompt_len].copy()
    prompt_mask[2, -1] = 1  # real prompt lengths 6, 3 and 1, left-padded
    full_mask = np.concatenate([prompt_mask, np.ones_like(mask[:, prompt_len:])], axis=1)
    expected = forward(model, params, ids, full_mask)
    if layout == "scanned":
        model = model.clone(scan_unroll=1)  # a rolled loop over the stacked cache (2 layers auto-unroll)
    elif layout == "unrolled":
        params = unstack_layers(params, model.config.num_layers)
        model = model.clone(scan_layers=False)
        assert "layers" not in params and params["layers_1"]["attn"]["q"]["kernel"].ndim == 3
    elif layout == "decode":
        model, params = decode_model_and_params(model, params)
        cfg = model.config
        qkv = params["layers_1"]["attn"]["qkv"]["kernel"]
        assert qkv.shape == (cfg.hidden_size, cfg.num_heads + 2 * cfg.num_kv_heads, cfg.head_dim)
        assert params["layers_0"]["mlp"]["gate_up"]["kernel"].shape == (cfg.hidden_size, 2 * cfg.intermediate_size)

    traced_shapes = []

    @jax.jit
    def step(ids_bt, mask_bt, cache, cache_index):
        traced_shapes.append(ids_bt.shape)
        return forward_cached(model, params, ids_bt, mask_bt, cache, cache_index)

    cache = init_cache(model.config, batch_size=3, max_length=SEQ_LEN + 2)
    logits, cache = step(ids[:, :prompt_len], prompt_mask, cache, 0)
    pieces = [logits]
    for t in range(prompt_len, SEQ_LEN):
        logits, cache = step(ids[:, t : t + 1], full_mask[:, t : t + 1], cache, t)
        pieces.append(logits)
    assert traced_shapes == [(3, prompt_len), (3, 1)]  # cache_index is traced: no retrace
    assert isinstance(cache, KVCache)
    cfg = model.config
    assert len(cache.k) == cfg.num_layers and cache.k[0].shape == (3, cfg.num_kv_heads, SEQ_LEN + 2, cfg.head_dim)
    np.testing.assert_array_equal(cache.mask[:, :SEQ_LEN], full_mask)
    assert not cache.mask[:, SEQ_LEN:].any()
    decoded = np.concatenate(pieces, axis=1)
    assert _max_diff_on_real_tokens(decoded, expected, full_mask) <= TOL
    # output_index: a prefill that runs the LM head only at chosen positions (sampling: the last).
    picked = np.array([[prompt_len - 1], [2], [prompt_len - 1]], np.int32)
    fresh = init_cache(model.config, batch_size=3, max_length=SEQ_LEN + 2)
    only, _ = forward_cached(model, params, ids[:, :prompt_len], prompt_mask, fresh, 0, jnp.asarray(picked))
    assert only.shape == (3, 1, cfg.vocab_size)
    np.testing.assert_allclose(only[:, 0], np.take_along_axis(np.asarray(pieces[0]), picked[..., None], 1)[:, 0],
                               atol=TOL, rtol=0)


@pytest.mark.parametrize("scan_unroll,remat", [(0, True), (1, True), (-1, True), (1, "dots")])
def test_remat_gives_same_gradients(scan_unroll, remat):
    config = ModelConfig(**_tiny_fields())
    model, params = init_model(config)
    model = model.clone(scan_unroll=scan_unroll)
    model_remat = model.clone(remat=remat)
    ids, mask = _batch("right")

    def loss(m, p):
        return jnp.sum(forward(m, p, ids, mask) ** 2 * mask[..., None])

    both = jax.jit(lambda p: (jax.grad(loss, 1)(model, p), jax.grad(loss, 1)(model_remat, p)))
    grads, grads_remat = both(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, grads_remat)


def test_scan_unroll_keeps_logits_and_gradients():
    """A rolled scan (1), a partial unroll that does not divide the depth (2 of 3 layers), all
    layers (-1) and auto (0, all here) run the same params to the same logits and gradients."""
    model, params = init_model(ModelConfig(**{**_tiny_fields(), "num_layers": 3}))
    ids, mask = _batch("right")

    def loss(m, p):
        return jnp.sum(forward(m, p, ids, mask) ** 2 * mask[..., None])

    for unroll, expected in ((1, "unroll=1"), (2, "unroll=2"), (-1, "unroll=3"), (0, "unroll=3")):
        jaxpr = str(jax.make_jaxpr(lambda p, u=unroll: forward(model.clone(scan_unroll=u), p, ids, mask))(params))
        assert re.findall(r"unroll=\w+", jaxpr) == [expected]  # the value reaches the layers' scan
    results = {u: jax.jit(jax.value_and_grad(lambda p, u=u: loss(model.clone(scan_unroll=u), p)))(params)
               for u in (1, 2, -1, 0)}
    rolled_loss, rolled_grads = results[1]
    for unroll in (2, -1, 0):
        value, grads = results[unroll]
        np.testing.assert_allclose(value, rolled_loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, rolled_grads)


def test_scan_unroll_length_rules():
    assert [scan_unroll_length(0, n) for n in (2, AUTO_UNROLL_MAX_LAYERS, AUTO_UNROLL_MAX_LAYERS + 1)] == [
        2, AUTO_UNROLL_MAX_LAYERS, 1]
    assert scan_unroll_length(-1, 30) == 30 and scan_unroll_length(4, 30) == 4 and scan_unroll_length(40, 30) == 30
    assert scan_unroll_length(0, 2, remat=True) == 1 and scan_unroll_length(-1, 2, remat=True) == 2
    with pytest.raises(ValueError, match="scan_unroll"):
        scan_unroll_length(-2, 4)


@pytest.mark.parametrize("name", sorted(JAX_MODELS))
def test_logical_axes_cover_every_leaf(name):
    allowed = {"layers", "vocab", "embed", "q_heads", "kv_heads", "head_dim", "mlp", None}
    _, params = init_model(ModelConfig(**_tiny_fields(), **JAX_MODELS[name]))
    axes = logical_axes(params)
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
    for names, leaf in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(params), strict=True):
        assert len(names) == leaf.ndim and set(names) <= allowed
    layer_axes = jax.tree.leaves(axes["layers"], is_leaf=is_axes)
    assert all(names[0] == "layers" for names in layer_axes)
    assert axes["embed"]["embedding"] == ("vocab", "embed")


def test_count_params_matches_transformers():
    torch_model = _torch_model("qwen2_bias")
    config = ModelConfig.from_hf_dict(torch_model.config.to_dict())
    params = jax.eval_shape(lambda: init_model(config)[1])
    assert count_params(params) == sum(p.numel() for p in torch_model.parameters())


def test_init_model_accepts_dict_and_config_dict():
    ml_collections = pytest.importorskip("ml_collections")
    model_a, params_a = init_model(_tiny_fields())
    model_b, params_b = init_model(ml_collections.ConfigDict(_tiny_fields()))
    assert model_a.config == model_b.config and hash(model_a.config) == hash(model_b.config)
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    with pytest.raises(TypeError):
        init_model(dict(_tiny_fields(), num_layerz=3))


@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_config_round_trips_through_transformers(tmp_path, name):
    config_cls, overrides = HF_MODELS[name]
    config = ModelConfig.from_hf_dict(config_cls(**{**TINY, **overrides}).to_dict())
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(hf_config) is config_cls
    assert ModelConfig.from_hf_dict(hf_config.to_dict()) == config


def test_config_accepts_pre_v5_rope_fields():
    old = dict(
        transformers.LlamaConfig(**TINY).to_dict(), rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE, type="llama3")
    )
    del old["rope_parameters"]
    config = ModelConfig.from_hf_dict(old)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == LLAMA3_ROPE
    qwen_window = dict(
        transformers.Qwen2Config(**TINY).to_dict(),
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=0,
        layer_types=None,
    )
    assert ModelConfig.from_hf_dict(qwen_window).sliding_window == 5


def test_unsupported_architectures_are_named():
    with pytest.raises(ValueError, match="gpt2"):
        ModelConfig.from_hf_dict(dict(model_type="gpt2", vocab_size=10))
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_hf_dict(
            transformers.LlamaConfig(**TINY, rope_parameters=dict(rope_type="yarn", factor=2.0)).to_dict()
        )


def test_load_errors_name_the_problem(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_pretrained(missing)
    model, params = init_model(ModelConfig(**_tiny_fields()))
    save_pretrained(model, params, tmp_path / "ok")

    bad_shape = dict(params, embed={"embedding": params["embed"]["embedding"][:-1]})
    save_pretrained(model, bad_shape, tmp_path / "bad_shape")
    with pytest.raises(ValueError, match="model.embed_tokens.weight"):
        load_pretrained(tmp_path / "bad_shape")

    untied = tmp_path / "ok" / "config.json"
    hf_config = json.loads(untied.read_text())
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "config.json").write_text(json.dumps(dict(hf_config, num_hidden_layers=3)))
    (tmp_path / "ok" / "model.safetensors").rename(tmp_path / "missing" / "model.safetensors")
    with pytest.raises(ValueError, match="model.layers.2"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path / "ok")


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("40KB") == 40_000
    assert parse_size("2GiB") == 2 * 2**30
    with pytest.raises(ValueError):
        parse_size("lots")


def test_load_tokenizer_applies_chat_template(tmp_path):
    pytest.importorskip("jinja2")
    tokenizers = pytest.importorskip("tokenizers")
    words = ["<pad>", "<s>", "</s>", "<unk>", "user:", "assistant:", "hello", "there"]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)

    loaded = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "hello there"}]
    text = loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s>user: hello there assistant: "
    assert loaded(text, add_special_tokens=False)["input_ids"] == [1, 4, 6, 7, 5]
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_tokenizer(tmp_path / "nothing_here")


@pytest.mark.parametrize("padding", ["right", "left"])
def test_blocked_causal_attention_equals_the_dense_one(monkeypatch, padding):
    """Sequences longer than ``ATTENTION_BLOCK`` run their queries a block at a time against the
    keys up to the block's end: the same logits and gradients as the dense attention, with padding
    and with the packed-pairs mask (segments, restarted positions) of the train step."""
    from jaxpref.data.batches import PairExample, collate_pairs
    from jaxpref.models import llama
    from jaxpref.train.step import batch_groups, grouped_logps

    model, params = init_model(ModelConfig(**{**_tiny_fields(), "max_position_embeddings": 128}), seed=1)
    params = jax.tree.map(lambda x: x * 3.0, params)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, TINY["vocab_size"], (3, 40)).astype(np.int32)
    lengths = np.array([40, 29, 11])
    mask = (np.arange(40)[None] < lengths[:, None]).astype(np.int32)
    if padding == "left":
        mask = mask[:, ::-1].copy()
    tokens = lambda lo, hi: rng.integers(1, 30, int(rng.integers(lo, hi))).tolist()  # noqa: E731
    pairs = [PairExample(tokens(3, 12), tokens(2, 9), tokens(2, 9)) for _ in range(4)]
    groups, _ = batch_groups(collate_pairs(pairs, pad_id=0, buckets=[24]), share_prompt=True)

    def run():
        def loss(p):
            logits = llama.forward.__wrapped__(model, p, jnp.asarray(ids), jnp.asarray(mask))
            logps = grouped_logps(model, p, groups, ("chosen", "rejected"))
            return jnp.sum(logits**2 * mask[..., None]) * 1e-3 + jnp.sum(logps["chosen"] - 0.5 * logps["rejected"])
        return jax.value_and_grad(loss)(params)

    monkeypatch.setattr(llama, "ATTENTION_BLOCK", 10**6)
    want, want_grads = run()
    monkeypatch.setattr(llama, "ATTENTION_BLOCK", 8)  # 40 tokens: 5 blocks; packed rows: several
    got, got_grads = run()
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # float32 sums in another order: differences scale with each array's largest entry (~15 here)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())),
                 got_grads, want_grads)
