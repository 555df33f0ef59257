"""The jit sampler: greedy == step-by-step argmax of full forwards, EOS, per-row PRNG, filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref.infer.sampling import (
    _inverse_cdf,
    completions_to_lists,
    draw_tokens,
    generate,
    left_pad,
    process_logits,
    sample_responses,
)
from jaxpref.models import decode_model_and_params, forward, fuse_projections, init_model, unstack_layers

CFG = dict(vocab_size=19, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
           tie_word_embeddings=False, model_type="llama", max_position_embeddings=64, rope_theta=10000.0,
           rms_norm_eps=1e-6)
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tiny():
    model, params = init_model(CFG, seed=3)
    # Larger weights than the default init so that greedy choices are well separated.
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim >= 2 else x, params)
    return model, params


PROMPTS = [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11, 4]]


def test_greedy_equals_argmax_of_full_forward_step_by_step(tiny):
    model, params = tiny
    ids, mask = left_pad(PROMPTS, pad_id=PAD)
    n = 7
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0),
                   max_new_tokens=n, eos_id=-1, pad_id=PAD, temperature=0.0)
    tokens = np.asarray(out.tokens)
    for b, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for t in range(n):
            logits = forward(model, params, jnp.asarray([seq]))
            want = int(jnp.argmax(logits[0, -1]))
            assert tokens[b, t] == want, (b, t)
            # model_logps is the full forward's log-softmax at the chosen token.
            lp = jax.nn.log_softmax(logits[0, -1])[want]
            np.testing.assert_allclose(out.model_logps[b, t], lp, rtol=1e-4, atol=1e-4)
            seq.append(want)
    np.testing.assert_array_equal(out.completion_mask, 1)


def test_eos_stops_row_and_masks_the_rest(tiny):
    model, params = tiny
    ids, mask = left_pad(PROMPTS, pad_id=PAD)
    greedy = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0),
                      max_new_tokens=6, eos_id=-1, pad_id=PAD, temperature=0.0)
    # Declare the token greedy decoding emits at step 2 of row 0 to be EOS: row 0 must stop there.
    eos = int(greedy.tokens[0, 2])
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(0),
                   max_new_tokens=6, eos_id=eos, pad_id=PAD, temperature=0.0)
    toks, m = np.asarray(out.tokens), np.asarray(out.completion_mask)
    first = int(np.argmax(toks[0] == eos))
    assert first <= 2
    assert m[0, : first + 1].all() and not m[0, first + 1 :].any()
    assert (toks[0, first + 1 :] == PAD).all()
    assert (np.asarray(out.logps)[m == 0] == 0).all()
    lists = completions_to_lists(out)
    assert lists[0][-1] == eos and len(lists[0]) == first + 1


def test_rows_have_independent_prng_streams(tiny):
    model, params = tiny
    ids, mask = left_pad(PROMPTS, pad_id=PAD)
    key = jax.random.PRNGKey(42)
    full = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), key, max_new_tokens=8, eos_id=EOS,
                    pad_id=PAD, temperature=1.0)
    # The same rows with a different batch neighbour: row 0's and row 2's samples are unchanged.
    prompts2 = [PROMPTS[0], [1, 12, 13, 14], PROMPTS[2]]
    ids2, mask2 = left_pad(prompts2, pad_id=PAD)
    other = generate(model, params, jnp.asarray(ids2), jnp.asarray(mask2), key, max_new_tokens=8, eos_id=EOS,
                     pad_id=PAD, temperature=1.0)
    np.testing.assert_array_equal(full.tokens[0], other.tokens[0])
    np.testing.assert_array_equal(full.tokens[2], other.tokens[2])
    # Sampled log-probs at temperature 1 without filters are the model's log-probs.
    np.testing.assert_allclose(full.logps, full.model_logps, rtol=1e-5, atol=1e-5)


def test_sampling_distribution_matches_model_at_first_step(tiny):
    model, params = tiny
    prompt = [[1, 5, 6]] * 2000
    ids, mask = left_pad(prompt, pad_id=PAD)
    out = generate(model, params, jnp.asarray(ids), jnp.asarray(mask), jax.random.PRNGKey(7), max_new_tokens=1,
                   eos_id=EOS, pad_id=PAD, temperature=2.0)
    probs = np.asarray(jax.nn.softmax(forward(model, params, jnp.asarray([[1, 5, 6]]))[0, -1] / 2.0))
    counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CFG["vocab_size"])
    expected = probs * len(prompt)
    keep = expected > 5
    chi2 = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    # 99.9% quantile of chi-square with <= 18 dof is ~42.3.
    assert chi2 < 42.3, chi2


def test_draw_tokens_follows_the_distribution_and_never_draws_zero_mass():
    """The two-level inverse-CDF draw over 300 tokens (not a multiple of its 128-token blocks), 30%
    of them filtered to -inf: a chi-square test of 400k draws against the probabilities, and no
    filtered token ever drawn."""
    vocab, n = 300, 400_000
    rng = np.random.default_rng(0)
    logits = rng.normal(size=vocab) * 2
    logits[rng.random(vocab) < 0.3] = -np.inf
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    tokens = np.asarray(jax.jit(draw_tokens)(keys, jnp.broadcast_to(logp, (n, vocab))))
    counts = np.bincount(tokens, minlength=vocab)
    probs = np.exp(np.asarray(logp, np.float64))
    assert counts[probs == 0].sum() == 0
    expected = probs * n
    keep = expected > 5
    chi2 = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    # 99.9% quantile of chi-square (Wilson-Hilferty): dof * (1 - 2/(9 dof) + 3.09 sqrt(2/(9 dof)))^3.
    limit = dof * (1 - 2 / (9 * dof) + 3.09 * np.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, (chi2, limit)


def test_inverse_cdf_picks_the_first_index_past_u_and_skips_zero_mass():
    """``_inverse_cdf`` against the rule written out: the first index whose cumulative mass exceeds
    ``u * total``; zero-mass entries at either end are not picked for u = 0 or u just below 1."""
    mass = np.array([0.0, 0.2, 0.0, 0.3, 0.5, 0.0], np.float32)
    u = np.array([0.0, 0.19, 0.2, 0.4999, 0.75, np.nextafter(np.float32(1), np.float32(0))], np.float32)
    got = np.asarray(_inverse_cdf(jnp.asarray(np.tile(mass, (len(u), 1))), jnp.asarray(u)))
    cum = np.cumsum(mass)
    want = [min(int(np.argmax(cum > x * cum[-1])) if (cum > x * cum[-1]).any() else 4, 4) for x in u]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, [1, 1, 3, 3, 4, 4])


def test_process_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    k2 = process_logits(logits, temperature=1.0, top_k=2, top_p=1.0)
    assert np.isfinite(np.asarray(k2)).sum() == 2
    p = process_logits(logits, temperature=1.0, top_k=0, top_p=0.6)  # 0.5 < 0.6 <= 0.7: keep 2
    np.testing.assert_array_equal(np.isfinite(np.asarray(p))[0], [True, True, False, False, False])
    p1 = process_logits(logits, temperature=1.0, top_k=0, top_p=0.3)  # the top token alone
    np.testing.assert_array_equal(np.isfinite(np.asarray(p1))[0], [True, False, False, False, False])
    t = process_logits(logits, temperature=0.5, top_k=0, top_p=1.0)
    np.testing.assert_allclose(t, logits / 0.5, rtol=1e-6)


def test_left_pad_layout():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="prompt 0"):
        left_pad([[1, 2, 3]], pad_id=0, length=2)


def _reference_decode_layout(model, params):
    """The decode layout as one jitted composition of ``unstack_layers`` and ``fuse_projections``."""
    layers = model.config.num_layers
    return (model.clone(scan_layers=False, fused_projections=True),
            jax.jit(lambda p: fuse_projections(unstack_layers(p, layers)))(params))


@pytest.mark.parametrize("bias", [False, True])
def test_decode_layout_is_built_bit_for_bit(bias):
    """``decode_model_and_params`` (a layer at a time, outside jit or traced under one) gives the
    model and the params of ``fuse_projections(unstack_layers(...))`` under ``jit`` (Qwen2-style
    q/k/v biases included)."""
    model, params = init_model({**CFG, "model_type": "qwen2" if bias else "llama", "attention_bias": bias}, seed=5)
    want_model, want = _reference_decode_layout(model, params)
    got_model, got = decode_model_and_params(model, params)
    traced = jax.jit(lambda p: decode_model_and_params(model, p)[1])(params)
    assert got_model == want_model
    assert jax.tree.structure(got) == jax.tree.structure(want) == jax.tree.structure(traced)
    assert ("bias" in got["layers_1"]["attn"]["qkv"]) == bias
    for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(traced)):
        assert a.dtype == b.dtype == c.dtype
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)
    with pytest.raises(ValueError, match="scanned, unfused"):
        decode_model_and_params(got_model, got)


def test_sample_responses_equals_generate_batch_by_batch(tiny):
    """``sample_responses`` builds the decode layout once for all its batches; its samples and
    log-probs are those of ``generate`` on each batch, given the layout built independently
    (``_reference_decode_layout``)."""
    model, params = tiny
    prompts = PROMPTS * 3  # 9 prompts in batches of 4: the last one padded
    rng = jax.random.PRNGKey(7)
    responses, logps = sample_responses(model, params, prompts, rng, eos_id=EOS, pad_id=PAD, max_new_tokens=5,
                                        batch_size=4, temperature=1.0, desc="test")
    decode_model, decode_params = _reference_decode_layout(model, params)
    ids, mask = left_pad(prompts + prompts[:3], pad_id=PAD)
    want_lists, want_logps = [], []
    for start in (0, 4, 8):
        out = generate(decode_model, decode_params, jnp.asarray(ids[start:start + 4]),
                       jnp.asarray(mask[start:start + 4]), jax.random.fold_in(rng, start), max_new_tokens=5,
                       eos_id=EOS, pad_id=PAD, temperature=1.0)
        want_lists += completions_to_lists(out)
        want_logps.append(np.asarray(jnp.sum(out.model_logps, axis=-1)))
    assert responses == want_lists[: len(prompts)]
    np.testing.assert_allclose(logps, np.concatenate(want_logps)[: len(prompts)], rtol=1e-5, atol=1e-5)
