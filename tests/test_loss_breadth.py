"""The loss breadth of [12]: every TRL loss type, reference-free losses and combinations train in
the one train step; the pieces TRL has no code for (BCO's baseline, SPPO single, the KTO metrics)
against formulas written out here; config validation of losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpref import losses
from jaxpref.config import ConfigError, get_base_config, validate_config
from jaxpref.data.batches import collate_pairs, collate_unpaired, pairs_to_unpaired
from jaxpref.objectives import (
    INITIAL_LOSS_STATE,
    OBJECTIVES,
    LossInputs,
    default_hparams,
    get_objective,
    parse_weights,
)
from jaxpref.train.state import create_train_state
from jaxpref.train.step import batch_groups, grouped_logps, make_train_step


def _step(model, tx, loss, weights=None, grad_accum_steps=1, **hp):
    objective = get_objective(loss, weights)
    return make_train_step(model, objective, default_hparams(objective, **hp), tx, grad_accum_steps=grad_accum_steps)


def _perturbed(params, scale=0.05, seed=1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


NEW_PAIR_LOSSES = [
    ("sigmoid", None, {}), ("sigmoid_norm", None, {"beta": 1.0}), ("exo_pair", None, {"label_smoothing": 1e-3}),
    ("nca_pair", None, {}), ("robust", None, {"label_smoothing": 0.1}), ("bco_pair", None, {}),
    ("aot", None, {}), ("aot_unpaired", None, {}), ("apo_zero", None, {}), ("apo_down", None, {}),
    ("discopop", None, {}), ("cpo", None, {}), ("simpo", None, {"beta": 2.0, "cpo_alpha": 0.0}),
    ("alphapo", None, {"beta": 2.0, "cpo_alpha": 0.0}), ("orpo", None, {}),
    ("dpo", None, {"f_divergence_type": "js_divergence"}), ("dpo", None, {"ld_alpha": 0.5}),
    ("dpo", None, {"use_weighting": True}), ("sigmoid,sft", "1,1", {}), ("sigmoid,bco_pair,sft", "0.8,0.2,1.0", {}),
]


IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in hp.items())}" for name, _, hp in NEW_PAIR_LOSSES]


@pytest.mark.parametrize("loss,weights,hp", NEW_PAIR_LOSSES, ids=IDS)
def test_every_new_pair_loss_lowers_its_loss_in_the_train_step(tiny, pairs, loss, weights, hp):
    model, params = tiny
    groups, extras = batch_groups(collate_pairs(pairs[:16], pad_id=0, buckets=[24]))
    tx = optax.adam(3e-3)
    objective = get_objective(loss, weights)
    step = jax.jit(_step(model, tx, loss, weights, **hp))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=objective.needs_reference)
    history = []
    for _ in range(12):
        state, m = step(state, groups, extras)
        history.append(jax.device_get(m))
    assert all(np.isfinite(h["loss"]) and h["skipped"] == 0 for h in history)
    if objective.components:
        assert {f"loss_{p}" for p, _ in objective.components} <= set(history[0])
    if loss == "bco_pair" or "bco_pair" in loss:
        # The baseline moves, so the loss of a fixed batch may not fall; its classification does.
        assert history[-1]["reward_margin"] > history[0]["reward_margin"]
    else:
        assert history[-1]["loss"] < history[0]["loss"]


def test_combined_loss_is_the_weighted_sum_of_its_rows():
    rng = np.random.default_rng(3)
    b = 6
    pol = {"chosen": jnp.asarray(rng.normal(-20, 4, b), jnp.float32), "rejected": jnp.asarray(rng.normal(-22, 4, b))}
    ref = {"chosen": jnp.asarray(rng.normal(-20, 4, b), jnp.float32), "rejected": jnp.asarray(rng.normal(-21, 4, b))}
    lengths = {"chosen": jnp.asarray(rng.integers(3, 9, b), jnp.float32),
               "rejected": jnp.asarray(rng.integers(3, 9, b), jnp.float32)}
    x = LossInputs(pol, ref, lengths, {}, {k: jnp.float32(v) for k, v in INITIAL_LOSS_STATE.items()})
    combined = get_objective("sigmoid, hinge ,sft", "0.8,0.2,1.0")
    out = combined(x, **default_hparams(combined, beta=0.3))
    dpo = losses.dpo_loss(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"], beta=0.3)
    hinge = losses.hinge_loss(pol["chosen"], pol["rejected"], ref["chosen"], ref["rejected"], beta=0.3)
    nll = -np.sum(pol["chosen"]) / np.sum(lengths["chosen"])  # TRL's sft: chosen-token mean NLL
    np.testing.assert_allclose(out.losses, 0.8 * dpo[0] + 0.2 * hinge[0] + nll, rtol=1e-6)
    np.testing.assert_allclose(out.chosen_rewards, 0.3 * (pol["chosen"] - ref["chosen"]), rtol=1e-6)
    assert get_objective("sigmoid") is OBJECTIVES["dpo"]
    assert parse_weights("", 3) == (1.0, 1.0, 1.0)
    for bad, match in (("1,2", "2 weights for 3"), ("a,b,c", "numbers"), ("1,-1,1", ">= 0")):
        with pytest.raises(ValueError, match=match):
            parse_weights(bad, 3)
    with pytest.raises(ValueError, match="mixes paired and unpaired"):
        get_objective("sigmoid,kto")
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        get_objective("sigmoid,nope")


def test_bco_baseline_is_the_running_mean_of_batch_rewards(tiny, pairs):
    """TRL <= 0.11 / the BCO paper: delta = running mean of the batches' mean reward, updated before use."""
    model, params = tiny
    ref_params = _perturbed(params)
    tx = optax.sgd(1e-2)
    step = jax.jit(_step(model, tx, "bco_pair", beta=0.5))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True, ref_params=ref_params)
    mean, count, batch_means = 0.0, 1e-24, []
    for i in range(3):
        groups, extras = batch_groups(collate_pairs(pairs[16 * i:16 * (i + 1)], pad_id=0, buckets=[24]))
        pol = grouped_logps(model, state.params, groups, ("chosen", "rejected"))
        ref = grouped_logps(model, ref_params, groups, ("chosen", "rejected"))
        rewards = 0.5 * np.concatenate([pol["chosen"] - ref["chosen"], pol["rejected"] - ref["rejected"]])
        batch_means.append(rewards.mean())
        # RunningMoments fed one value per step: mean += (x - mean) * 1 / (count + 1)
        mean, count = mean + (batch_means[-1] - mean) / (count + 1), count + 1
        h_w, h_l = np.asarray(pol["chosen"] - ref["chosen"]), np.asarray(pol["rejected"] - ref["rejected"])
        want_loss = np.mean(np.logaddexp(0, -(0.5 * h_w - mean)) + np.logaddexp(0, 0.5 * h_l - mean))
        state, m = step(state, groups, extras)
        np.testing.assert_allclose(float(m["bco_baseline"]), mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(m["loss"]), want_loss, rtol=1e-5)
    np.testing.assert_allclose(float(state.loss_state["bco_running_mean"]), np.mean(batch_means), rtol=1e-5)
    np.testing.assert_allclose(float(state.loss_state["bco_count"]), 3.0, rtol=1e-6)


def test_bco_baseline_advances_per_micro_batch_under_gradient_accumulation(tiny, pairs):
    model, params = tiny
    tx = optax.sgd(1e-2)
    groups, extras = batch_groups(collate_pairs(pairs[:16], pad_id=0, buckets=[24]))
    step = jax.jit(_step(model, tx, "bco_pair", grad_accum_steps=2))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True,
                               ref_params=_perturbed(params))
    state, m = step(state, groups, extras)
    assert np.isfinite(float(m["loss"])) and float(state.loss_state["bco_count"]) == pytest.approx(2.0)


def test_kto_metrics_are_trl_s(tiny, pairs):
    """chosen / rejected rewards averaged over the desirable / undesirable rows only; ``kl`` is the
    clamped reference point the loss uses; ``kl_estimate`` leaves the mismatched KL rows out."""
    model, params = tiny
    ref_params = _perturbed(params)
    batch = collate_unpaired(pairs_to_unpaired(pairs[:8]), pad_id=0, buckets=[24])
    groups, extras = batch_groups(batch)
    tx = optax.sgd(0.0)
    step = jax.jit(_step(model, tx, "kto", beta=0.5))
    state = create_train_state(params, tx, rng=jax.random.PRNGKey(0), with_reference=True, ref_params=ref_params)
    pol = grouped_logps(model, params, groups, ("completion", "kl"))
    ref = grouped_logps(model, ref_params, groups, ("completion", "kl"))
    _, m = step(state, groups, extras)
    d = np.asarray(extras["desirable"], bool)
    assert d.any() and (~d).any()
    r = 0.5 * np.asarray(pol["completion"] - ref["completion"])
    np.testing.assert_allclose(float(m["chosen_reward"]), r[d].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["rejected_reward"]), r[~d].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["reward_margin"]), r[d].mean() - r[~d].mean(), rtol=1e-5, atol=1e-7)
    z0 = max(float(np.mean(pol["kl"] - ref["kl"])), 0.0)
    np.testing.assert_allclose(float(m["kl"]), z0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m["kl_estimate"]), np.mean(pol["completion"] - ref["completion"]), rtol=1e-5)


def test_kto_losses_do_not_underflow_for_large_margins():
    """``1 - sigmoid(x)`` is exactly 0 in float32 beyond x ~ 16.6; ``sigmoid(-x)`` keeps the tail."""
    h = jnp.asarray([30.0, -30.0], jnp.float32)
    got, _ = losses.kto_loss(h, jnp.zeros(2), jnp.asarray([True, False]), beta=1.0, kl=0.0)
    want = 1.0 / (1.0 + np.exp(30.0))
    np.testing.assert_allclose(got, [want, want], rtol=1e-5)
    labels = jnp.asarray([True, False])
    grad = jax.grad(lambda p: losses.kto_loss(p, jnp.zeros(2), labels, beta=1.0, kl=0.0)[0].sum())(h)
    assert np.all(np.asarray(grad) != 0.0)
    pair, _, _ = losses.kto_pair_loss(h[:1], h[1:], jnp.zeros(1), jnp.zeros(1), beta=1.0)
    assert float(pair[0]) > 0.0


def test_sppo_single_matches_the_official_formula():
    rng = np.random.default_rng(5)
    pc, pr, rc, rr = (rng.normal(-10, 2, 5) for _ in range(4))
    p = rng.random(5)
    eta = 1 / 0.01
    want = ((pc - rc - eta * (p - 0.5)) ** 2 + (pr - rr + eta * (p - 0.5)) ** 2) / 2
    got, cr, _ = losses.sppo_single_loss(pc, pr, rc, rr, p, beta=0.01)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(cr, 0.01 * (pc - rc), rtol=1e-5)
    assert OBJECTIVES["sppo_single"].extras == ("pair_probs",)


def test_sequence_logps_gradient_ignores_non_finite_padding_logits():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (2, 6, 5)).astype(np.float32)
    ids = rng.integers(0, 5, (2, 6)).astype(np.int32)
    comp = np.array([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]], np.int32)
    bad = logits.copy()
    bad[0, 3:] = np.nan  # positions 3.. predict uncounted tokens of row 0
    bad[1, 4:, 0] = np.inf
    f = lambda lg: jnp.sum(losses.sequence_logps(lg, ids, comp))  # noqa: E731
    g_good, g_bad = jax.grad(f)(jnp.asarray(logits)), jax.grad(f)(jnp.asarray(bad))
    assert np.all(np.isfinite(np.asarray(g_bad)))
    np.testing.assert_allclose(g_bad, g_good, rtol=1e-6)
    np.testing.assert_allclose(f(jnp.asarray(bad)), f(jnp.asarray(logits)), rtol=1e-6)


def _cfg(**kw):
    c = get_base_config()
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize("kw,key", [
    (dict(loss="sigmoid,sft", loss_weights="1"), "config.loss_weights"),
    (dict(loss="sigmoid,nope"), "config.loss"),
    (dict(loss="exo_pair"), "config.label_smoothing"),
    (dict(loss="nca_pair", f_divergence_type="js_divergence"), "config.f_divergence_type"),
    (dict(loss="kto", batch_size=1), "config.batch_size"),
    (dict(loss="simpo", label_smoothing=0.6), "config.label_smoothing"),
    (dict(loss="dpo", simpo_gamma=1.0), "config.simpo_gamma"),
])
def test_config_refuses_what_the_loss_cannot_use(kw, key):
    cfg = _cfg(**kw)
    with pytest.raises(ConfigError, match=f"^{key}"):
        validate_config(cfg, (cfg.loss,))


def test_config_accepts_a_combination_and_its_hparams():
    cfg = _cfg(loss="sigmoid,bco_pair,sft", loss_weights="0.8,0.2,1.0", beta=0.2)
    validate_config(cfg, (cfg.loss,))
