"""The jit sampler: greedy == step-by-step argmax of full forwards, EOS, per-row PRNG, filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref.infer.sampling import completions_to_lists, generate, left_pad, process_logits
from jaxpref.models import forward, init_model

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
