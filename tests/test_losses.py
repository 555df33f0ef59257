"""Losses against independent float64 numpy formulas, finite differences, jit and bf16."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxpref import losses

B = 7


def _logsig(x):
    """log sigmoid in float64 numpy, written independently of jax.nn."""
    return -np.logaddexp(0.0, -x)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture
def logps():
    rng = np.random.default_rng(0)
    # Realistic magnitudes: summed log-probs of ~20-token responses.
    pc, pr, rc, rr = (rng.normal(-30.0, 5.0, B) for _ in range(4))
    return pc, pr, rc, rr


# --- sequence_logps -----------------------------------------------------------------------


def _numpy_sequence_logps(logits, ids, comp, average):
    """Loop-based float64 reference: sum log softmax(logits[t])[ids[t+1]] where comp[t+1]."""
    out = []
    for b in range(ids.shape[0]):
        total, n = 0.0, 0
        for t in range(ids.shape[1] - 1):
            if comp[b, t + 1]:
                row = logits[b, t].astype(np.float64)
                m = row.max()
                lse = m + np.log(np.exp(row - m).sum())
                total += row[ids[b, t + 1]] - lse
                n += 1
        out.append(total / max(n, 1) if average else total)
    return np.array(out)


def _random_sequences(seed, b=4, t=9, v=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (b, t, v)).astype(np.float32)
    ids = rng.integers(0, v, (b, t)).astype(np.int32)
    prompt_len = rng.integers(1, 4, b)
    total_len = rng.integers(prompt_len + 1, t + 1)
    pos = np.arange(t)[None]
    comp = ((pos >= prompt_len[:, None]) & (pos < total_len[:, None])).astype(np.int32)
    return logits, ids, comp, total_len


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logps_matches_loop_reference(average):
    logits, ids, comp, _ = _random_sequences(1)
    got = losses.sequence_logps(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(comp), average=average)
    chex.assert_shape(got, (4,))
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, _numpy_sequence_logps(logits, ids, comp, average), rtol=1e-5, atol=1e-5)


def test_sequence_logps_padding_never_changes_result():
    logits, ids, comp, total_len = _random_sequences(2)
    base = losses.sequence_logps(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(comp))
    # Garbage (even non-finite) logits and random ids in padded positions change nothing.
    pad = np.arange(ids.shape[1])[None] >= total_len[:, None]
    logits2 = logits.copy()
    logits2[pad] = np.nan
    logits2[np.roll(pad, -1, axis=1) & pad] = np.inf
    ids2 = np.where(pad, 5, ids).astype(np.int32)
    again = losses.sequence_logps(jnp.asarray(logits2), jnp.asarray(ids2), jnp.asarray(comp))
    np.testing.assert_array_equal(base, again)
    # Extra right padding (longer T) changes nothing either.
    extra = 5
    logits3 = np.concatenate([logits, np.random.default_rng(3).normal(size=(4, extra, 11)).astype(np.float32)], 1)
    ids3 = np.concatenate([ids, np.zeros((4, extra), np.int32)], 1)
    comp3 = np.concatenate([comp, np.zeros((4, extra), np.int32)], 1)
    np.testing.assert_allclose(losses.sequence_logps(logits3, ids3, comp3), base, rtol=1e-6)


def test_sequence_logps_masked_equals_sliced():
    logits, ids, comp, total_len = _random_sequences(4)
    full = losses.sequence_logps(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(comp))
    for b in range(4):
        n = int(total_len[b])
        one = losses.sequence_logps(logits[b : b + 1, :n], ids[b : b + 1, :n], comp[b : b + 1, :n])
        np.testing.assert_allclose(one[0], full[b], rtol=1e-6)


def test_sequence_logps_bf16_is_computed_in_float32():
    logits, ids, comp, _ = _random_sequences(5)
    bf = jnp.asarray(logits).astype(jnp.bfloat16)
    got = losses.sequence_logps(bf, ids, comp)
    assert got.dtype == jnp.float32
    # Reference on the bf16-rounded values in float64: only the input rounding differs.
    want = _numpy_sequence_logps(np.asarray(bf.astype(jnp.float32)), ids, comp, False)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sequence_logps_gradient_finite_differences():
    logits, ids, comp, _ = _random_sequences(6, b=2, t=5, v=4)
    f = lambda lg: losses.sequence_logps(lg, ids, comp, average=True)  # noqa: E731
    check_grads(f, (jnp.asarray(logits, jnp.float32),), order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)


# --- pair losses: independent numpy formulas ----------------------------------------------


def np_dpo(pc, pr, rc, rr, beta, e=0.0):
    z = (pc - rc) - (pr - rr)
    return -(1 - e) * _logsig(beta * z) - e * _logsig(-beta * z)


def np_ipo(pc, pr, rc, rr, beta, lc=None, lr=None):
    hw, hl = pc - rc, pr - rr
    if lc is not None:
        hw, hl = hw / lc, hl / lr
    return (hw - hl - 1 / (2 * beta)) ** 2


def np_hinge(pc, pr, rc, rr, beta):
    return np.maximum(0.0, 1 - beta * ((pc - rc) - (pr - rr)))


def np_kto_pair(pc, pr, rc, rr, beta):
    hw, hl = pc - rc, pr - rr
    zw, zl = max(hw.mean(), 0.0), max(hl.mean(), 0.0)
    halves = np.concatenate([1 - _sig(beta * (hw - zl)), 1 - _sig(beta * (zw - hl))])
    return halves, halves.mean()


def np_sppo(pc, pr, rc, rr, p_w, p_l, beta):
    eta = 1 / beta
    return ((pc - rc - eta * (p_w - 0.5)) ** 2 + (pr - rr - eta * (p_l - 0.5)) ** 2) / 2


def np_sppo_hard(pc, pr, rc, rr, beta):
    return (pc - rc - 1 / (2 * beta)) ** 2 + (pr - rr + 1 / (2 * beta)) ** 2


def np_selm(pc, pr, rc, rr, ps, rs, beta, alpha):
    return -_logsig(beta * ((pc - rc) - (pr - rr))) + alpha * beta * (ps - rs)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dpo_matches_numpy(logps, beta, smoothing):
    pc, pr, rc, rr = logps
    got, cr, rj = losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=smoothing)
    chex.assert_shape([got, cr, rj], (B,))
    np.testing.assert_allclose(got, np_dpo(pc, pr, rc, rr, beta, smoothing), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cr, beta * (pc - rc), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rj, beta * (pr - rr), rtol=1e-5, atol=1e-5)


def test_dpo_hand_checked_value():
    # z = (-1 - -2) - (-3 - -3) = 1; beta = 1: -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    loss, _, _ = losses.dpo_loss(jnp.array([-1.0]), jnp.array([-3.0]), jnp.array([-2.0]), jnp.array([-3.0]), beta=1.0)
    np.testing.assert_allclose(loss, [0.31326169], rtol=1e-6)


@pytest.mark.parametrize("averaged", [False, True])
def test_ipo_matches_numpy(logps, averaged):
    pc, pr, rc, rr = logps
    lc = np.arange(1, B + 1, dtype=np.float64) + 3
    lr = np.arange(B, 0, -1, dtype=np.float64) + 1
    kw = dict(chosen_lengths=lc, rejected_lengths=lr) if averaged else {}
    got, cr, _ = losses.ipo_loss(pc, pr, rc, rr, beta=0.1, **kw)
    want = np_ipo(pc, pr, rc, rr, 0.1, *((lc, lr) if averaged else ()))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Logged rewards are beta times the summed log-ratio, averaged loss or not (as TRL 1.16 logs them).
    np.testing.assert_allclose(cr, 0.1 * (pc - rc), rtol=1e-5)


def test_ipo_rejects_one_sided_lengths(logps):
    with pytest.raises(ValueError, match="both"):
        losses.ipo_loss(*logps, beta=0.1, chosen_lengths=np.ones(B))


def test_hinge_matches_numpy(logps):
    pc, pr, rc, rr = logps
    # Include margins on both sides of the hinge.
    rr = rr + np.linspace(-20, 20, B)
    got, _, _ = losses.hinge_loss(pc, pr, rc, rr, beta=0.1)
    want = np_hinge(pc, pr, rc, rr, 0.1)
    assert (want == 0).any() and (want > 0).any()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_slic_matches_numpy(logps):
    pc, pr, _, _ = logps
    got, sc, _ = losses.slic_loss(pc, pr, delta=1.0, sft_weight=0.1)
    want = np.maximum(0.0, 1.0 - pc + pr) - 0.1 * pc
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(sc, pc, rtol=1e-6)


def test_kto_matches_numpy():
    rng = np.random.default_rng(3)
    p, r = rng.normal(-20, 3, B), rng.normal(-20, 3, B)
    desirable = rng.random(B) > 0.5
    desirable[:2] = [True, False]
    kl = 0.7
    got, rewards = losses.kto_loss(p, r, desirable, beta=0.2, kl=kl, desirable_weight=1.5, undesirable_weight=0.5)
    h = p - r
    want = np.where(desirable, 1.5 * (1 - _sig(0.2 * (h - kl))), 0.5 * (1 - _sig(0.2 * (kl - h))))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(rewards, 0.2 * h, rtol=1e-5)
    # A negative KL estimate is clipped to 0.
    got_neg, _ = losses.kto_loss(p, r, desirable, beta=0.2, kl=-3.0)
    want_neg = np.where(desirable, 1 - _sig(0.2 * h), 1 - _sig(-0.2 * h))
    np.testing.assert_allclose(got_neg, want_neg, rtol=1e-5)


def test_kto_kl_estimate_is_clipped_mean_without_gradient():
    p, r = jnp.array([-1.0, -2.0, -3.0]), jnp.array([-1.5, -2.5, -2.0])
    np.testing.assert_allclose(losses.kto_kl_estimate(p, r), max(0.0, np.mean([0.5, 0.5, -1.0])))
    np.testing.assert_allclose(losses.kto_kl_estimate(p + 1.0, r), np.mean([1.5, 1.5, 0.0]), rtol=1e-6)
    g = jax.grad(lambda x: losses.kto_kl_estimate(x, r))(p + 1.0)
    np.testing.assert_array_equal(g, 0.0)


def test_kto_pair_mean_equals_trl_style_halves(logps):
    pc, pr, rc, rr = logps
    got, _, _ = losses.kto_pair_loss(pc, pr, rc, rr, beta=0.1)
    halves, mean = np_kto_pair(pc, pr, rc, rr, 0.1)
    np.testing.assert_allclose(got, (halves[:B] + halves[B:]) / 2, rtol=1e-5)
    np.testing.assert_allclose(np.mean(got), mean, rtol=1e-5)


def test_sppo_matches_numpy(logps):
    pc, pr, rc, rr = logps
    rng = np.random.default_rng(4)
    p_w, p_l = rng.random(B), rng.random(B)
    got, _, _ = losses.sppo_loss(pc, pr, rc, rr, p_w, p_l, beta=0.001)
    want = np_sppo(pc, pr, rc, rr, p_w, p_l, 0.001)
    assert want.max() > 1e4  # eta = 1000: large values, still accurate in float32
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sppo_hard_matches_numpy(logps):
    got, _, _ = losses.sppo_hard_loss(*logps, beta=0.1)
    np.testing.assert_allclose(got, np_sppo_hard(*logps, 0.1), rtol=1e-5)


def test_sppo_with_hard_probabilities_is_half_of_sppo_hard(logps):
    # P_w = 1, P_l = 0 turns the official loss into sppo_hard / 2.
    soft, _, _ = losses.sppo_loss(*logps, np.ones(B), np.zeros(B), beta=0.1)
    hard, _, _ = losses.sppo_hard_loss(*logps, beta=0.1)
    np.testing.assert_allclose(soft, hard / 2, rtol=1e-5)


def test_selm_matches_numpy(logps):
    pc, pr, rc, rr = logps
    rng = np.random.default_rng(5)
    ps, rs = rng.normal(-25, 3, B), rng.normal(-25, 3, B)
    got, _, _ = losses.selm_loss(pc, pr, rc, rr, ps, rs, beta=0.1, alpha=0.01)
    np.testing.assert_allclose(got, np_selm(pc, pr, rc, rr, ps, rs, 0.1, 0.01), rtol=1e-5)
    # alpha = 0 is exactly DPO.
    selm0, _, _ = losses.selm_loss(pc, pr, rc, rr, ps, rs, beta=0.1, alpha=0.0)
    dpo, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.1)
    np.testing.assert_allclose(selm0, dpo, rtol=1e-6)


def test_bradley_terry_matches_numpy():
    sw, sl = np.array([1.0, -2.0, 0.3]), np.array([0.0, 1.0, 0.3])
    np.testing.assert_allclose(losses.bradley_terry_loss(sw, sl), -_logsig(sw - sl), rtol=1e-6)


# --- gradients, jit, dtypes ---------------------------------------------------------------

PAIR_LOSSES = {
    "dpo": lambda a, b, c, d: losses.dpo_loss(a, b, c, d, beta=0.1, label_smoothing=0.1),
    "ipo": lambda a, b, c, d: losses.ipo_loss(
        a, b, c, d, beta=0.1, chosen_lengths=jnp.full(B, 4.0), rejected_lengths=jnp.full(B, 6.0)
    ),
    "hinge": lambda a, b, c, d: losses.hinge_loss(a, b, c, d, beta=0.1),
    "kto_pair": lambda a, b, c, d: losses.kto_pair_loss(a, b, c, d, beta=0.1),
    "sppo": lambda a, b, c, d: losses.sppo_loss(a, b, c, d, jnp.linspace(0, 1, B), jnp.linspace(1, 0, B), beta=0.1),
    "sppo_hard": lambda a, b, c, d: losses.sppo_hard_loss(a, b, c, d, beta=0.1),
    "selm": lambda a, b, c, d: losses.selm_loss(a, b, c, d, a * 0.5, c * 0.5, beta=0.1, alpha=0.3),
    "slic": lambda a, b, c, d: losses.slic_loss(a, b, delta=2.0, sft_weight=0.05),
}


@pytest.mark.parametrize("name", sorted(set(PAIR_LOSSES) - {"kto_pair"}))
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(7)
    # Small magnitudes and a margin away from hinge kinks so finite differences are valid.
    args = tuple(jnp.asarray(rng.normal(0, 1, B), jnp.float32) for _ in range(4))
    f = lambda *a: jnp.mean(PAIR_LOSSES[name](*a)[0])  # noqa: E731
    # Losses compute in float32, so a central difference with eps=1e-2 is accurate to ~1e-4.
    check_grads(f, args, order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)


def test_kto_pair_gradient_treats_reference_points_as_constants():
    rng = np.random.default_rng(9)
    args = tuple(jnp.asarray(rng.normal(0, 1, B), jnp.float32) for _ in range(4))
    hw, hl = args[0] - args[2], args[1] - args[3]
    zw, zl = max(float(hw.mean()), 0.0), max(float(hl.mean()), 0.0)

    def frozen(pc, pr, rc, rr):  # the same loss with z_w, z_l fixed at this point
        a = 1 - jax.nn.sigmoid(0.1 * ((pc - rc) - zl))
        b = 1 - jax.nn.sigmoid(0.1 * (zw - (pr - rr)))
        return jnp.mean((a + b) / 2)

    got = jax.grad(lambda *a: jnp.mean(losses.kto_pair_loss(*a, beta=0.1)[0]), argnums=(0, 1, 2, 3))(*args)
    check_grads(frozen, args, order=1, modes=["rev"], eps=1e-2, atol=1e-3, rtol=1e-2)
    want = jax.grad(frozen, argnums=(0, 1, 2, 3))(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_kto_gradient_finite_differences():
    rng = np.random.default_rng(8)
    p, r = jnp.asarray(rng.normal(0, 1, B)), jnp.asarray(rng.normal(0, 1, B))
    desirable = jnp.asarray(rng.random(B) > 0.5)
    f = lambda p, r: jnp.mean(losses.kto_loss(p, r, desirable, beta=0.5, kl=0.2)[0])  # noqa: E731
    check_grads(f, (p, r), order=1, modes=["rev"], eps=1e-2, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("name", sorted(PAIR_LOSSES))
def test_jit_equals_eager_and_bf16_inputs(name, logps):
    args = tuple(jnp.asarray(x, jnp.float32) for x in logps)
    eager = PAIR_LOSSES[name](*args)
    jitted = jax.jit(PAIR_LOSSES[name])(*args)
    for e, j in zip(eager, jitted):
        np.testing.assert_allclose(e, j, rtol=1e-6, atol=1e-6)
    bf = tuple(a.astype(jnp.bfloat16) for a in args)
    out = PAIR_LOSSES[name](*bf)
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    # Same result as float32 on the bf16-rounded inputs: the loss math itself runs in float32.
    ref = PAIR_LOSSES[name](*(a.astype(jnp.float32) for a in bf))
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, rtol=1e-6, atol=1e-6)


def test_rewards_carry_no_gradient(logps):
    pc, pr, rc, rr = (jnp.asarray(x, jnp.float32) for x in logps)
    g = jax.grad(lambda a: jnp.sum(losses.dpo_loss(a, pr, rc, rr, beta=0.1)[1]))(pc)
    np.testing.assert_array_equal(g, 0.0)


def test_import_losses_does_not_import_flax_or_datasets():
    code = (
        "import sys, jaxpref.losses; "
        "assert 'flax' not in sys.modules, 'flax'; assert 'datasets' not in sys.modules, 'datasets'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
