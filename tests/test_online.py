"""Online methods: rejection-sampling statistics, SPPO win rates, acquisition functions, and one
tiny round of every online job (RSO, SPPO, SELM, active DPO, reward model)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_main import load_config, toy

from jaxpref.main import run
from jaxpref.methods.active import (
    pair_certainty,
    parse_strategies,
    predictive_entropy,
    select_certainty,
    select_entropy,
    select_hybrid,
    select_random,
    training_steps,
)
from jaxpref.methods.rso import first_round_pairs, statistical_rejection_sampling, tournament_pairs
from jaxpref.methods.sppo import preference_matrix, win_rate_estimates

# --- RSO ----------------------------------------------------------------------------------

# Eight SFT candidates of four distinct responses: duplicates carry pi_sft's mass.
TYPES = np.array([0, 0, 0, 1, 1, 2, 3, 3])
TYPE_REWARD = np.array([0.0, 0.3, 0.6, 1.0])


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_rejection_sampling_follows_sft_times_exp_reward_over_beta(beta):
    rows = 6000
    rewards = jnp.tile(jnp.asarray(TYPE_REWARD[TYPES], jnp.float32), (rows, 1))
    idx = np.asarray(statistical_rejection_sampling(jax.random.PRNGKey(0), rewards, beta=beta, num_accept=1))
    counts = np.bincount(TYPES[idx[:, 0]], minlength=4)
    mass = np.bincount(TYPES, minlength=4) * np.exp(TYPE_REWARD / beta)  # pi_sft(y) exp(r(y)/beta)
    expected = rows * mass / mass.sum()
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    assert chi2 < 16.27, (chi2, counts, expected)  # 99.9% quantile of chi-square, 3 dof


def test_rejection_sampling_without_replacement_and_limits():
    rewards = jnp.asarray(np.random.default_rng(0).normal(size=(50, 8)), jnp.float32)
    idx = np.asarray(statistical_rejection_sampling(jax.random.PRNGKey(1), rewards, beta=0.5, num_accept=5))
    assert idx.shape == (50, 5)
    assert all(len(set(row)) == 5 for row in idx)
    # beta -> 0: best-of-N, then the next best, ...
    greedy = np.asarray(statistical_rejection_sampling(jax.random.PRNGKey(2), rewards, beta=1e-6, num_accept=3))
    np.testing.assert_array_equal(greedy, np.argsort(-np.asarray(rewards), axis=1)[:, :3])
    # beta -> infinity: uniform over candidates.
    flat = jnp.tile(jnp.arange(8.0), (8000, 1))
    uni = np.asarray(statistical_rejection_sampling(jax.random.PRNGKey(3), flat, beta=1e6, num_accept=1))
    counts = np.bincount(uni[:, 0], minlength=8)
    assert np.all(np.abs(counts - 1000) < 150), counts
    with pytest.raises(ValueError, match="num_accept"):
        statistical_rejection_sampling(jax.random.PRNGKey(0), rewards, beta=1.0, num_accept=9)


def test_pairing_schemes():
    rng = np.random.default_rng(0)
    pairs = first_round_pairs(8, rng)
    assert len(pairs) == 4 and sorted(i for p in pairs for i in p) == list(range(8))
    rewards = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    matches = tournament_pairs(rewards, rng)
    assert len(matches) == 4  # n - 1 matches
    assert all(rewards[w] >= rewards[l_] for w, l_ in matches)
    losers = {l_ for _, l_ in matches}
    assert set(range(5)) - losers == {1}  # the champion never loses


# --- SPPO ---------------------------------------------------------------------------------


class ScoreJudge:
    """P(y1 > y2) = sigmoid(s(y1) - s(y2)) with s = sum of tokens / 10."""

    def rewards(self, prompts, responses):
        return np.array([sum(r) / 10.0 for r in responses])

    def prob(self, prompts, y1, y2):
        return 1 / (1 + np.exp(-(self.rewards(prompts, y1) - self.rewards(prompts, y2))))


def test_sppo_preference_matrix_and_win_rates():
    responses = [[[1], [5], [9]], [[2], [2], [30]]]
    pref = preference_matrix(ScoreJudge(), [[0], [0]], responses)
    np.testing.assert_allclose(np.diagonal(pref, axis1=1, axis2=2), 0.5)
    np.testing.assert_allclose(pref + np.swapaxes(pref, 1, 2), 1.0)
    s = np.array([[0.1, 0.5, 0.9], [0.2, 0.2, 3.0]])
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = np.array([[np.mean([sig(s[b, i] - s[b, j]) for j in range(3)]) for i in range(3)] for b in range(2)])
    np.testing.assert_allclose(win_rate_estimates(pref), want, rtol=1e-12)


# --- Active DPO ---------------------------------------------------------------------------


def test_acquisition_functions():
    logps = np.array([[-1.0, -3.0], [-10.0, -20.0], [-4.0, -4.0]])
    np.testing.assert_allclose(predictive_entropy(logps), [2.0, 15.0, 4.0])
    lengths = np.array([[1, 3], [10, 10], [4, 2]])  # per-token: -(mean of logp / len)
    np.testing.assert_allclose(predictive_entropy(logps, lengths), [1.0, 1.5, 1.5])
    ref = np.zeros((3, 3))
    policy = np.array([[0.0, 1.0, 3.0], [0.0, 0.0, 0.0], [1.0, 1.0, 2.0]])
    cert, pairs = pair_certainty(policy, ref, beta=0.5)
    np.testing.assert_array_equal(pairs, [[0, 1], [0, 2], [1, 2]])
    np.testing.assert_allclose(cert[0], [0.5, 1.5, 1.0])
    valid = np.ones_like(cert, bool)
    entropy = np.array([5.0, 1.0, 4.0])
    # Pool = the 2 highest-entropy prompts (0 and 2); pick = the most certain pair among them.
    picks = select_hybrid(entropy, cert, valid, num=1, pool_factor=2)
    assert picks == [(0, 1)]
    assert len(select_random(valid, np.random.default_rng(0), num=2)) == 2
    # Certainty alone ranks every prompt: prompt 0's pair (0, 2) (1.5) beats prompt 2's best (0.5);
    # entropy alone takes the highest-entropy prompts in order, with a random valid pair.
    assert select_certainty(cert, valid, num=2) == [(0, 1), (2, 1)]
    valid[0] = [False, True, False]
    picks = select_entropy(entropy, valid, np.random.default_rng(0), num=2)
    assert [b for b, _ in picks] == [0, 2] and picks[0] == (0, 1)
    assert parse_strategies("random, certainty") == ("random", "certainty")
    with pytest.raises(ValueError, match="active.strategies"):
        parse_strategies("random,bald")


# --- one tiny round of every online job --------------------------------------------------


def tiny_online(name, cache_dir, **overrides):
    cfg = toy(load_config(name), cache_dir, **overrides)
    cfg.num_prompts, cfg.num_steps = 32, 4
    cfg.sampling.batch_size = 64
    cfg.eval.round_prompts = 16
    return cfg


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("sft_cache_online")


@pytest.mark.parametrize("name,overrides,key", [
    ("rso", {"rso.num_samples": 4, "rso.num_accept": 4}, "num_pairs"),
    ("sppo", {"sppo.iterations": 1}, "iterations"),
    ("selm", {"selm.rounds": 2}, "rounds"),
    ("active_dpo", {"active.acquisitions": 1, "active.labels_per_step": 16, "active.pool_size": 32}, "curves"),
])
def test_online_job_runs_one_tiny_round(tmp_path, cache_dir, name, overrides, key):
    summary = run(tiny_online(name, cache_dir, **overrides), str(tmp_path))
    assert key in summary and 0.0 <= summary["win_rate_vs_sft"] <= 1.0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["job"] == name
    if name == "active_dpo":
        assert set(summary["curves"]) == {"hybrid", "random"}
        assert (tmp_path / "active_learning_curve.png").exists()
    if name == "selm":
        assert summary["rounds"][1]["distinct_samples"] is not None


def test_selm_resumes_after_the_last_finished_round(tmp_path, cache_dir):
    cfg = tiny_online("selm", cache_dir, **{"selm.rounds": 2})
    run(cfg, str(tmp_path))
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "2")  # as if killed during round 2
    again = run(tiny_online("selm", cache_dir, **{"selm.rounds": 2}), str(tmp_path))
    assert [r["round"] for r in again["rounds"]] == [1, 2]


def test_reward_model_job_and_judge(tmp_path, cache_dir):
    cfg = toy(load_config("reward_model"), cache_dir)
    cfg.num_steps = 30
    summary = run(cfg, str(tmp_path / "rm"))
    assert 0.0 <= summary["oracle_agreement"] <= 1.0
    # The saved model is usable as a judge by an online job.
    rso = tiny_online("rso", cache_dir, **{"rso.num_samples": 4, "rso.num_accept": 2, "judge.kind": "reward_model",
                                           "judge.path": summary["reward_model_path"]})
    out = run(rso, str(tmp_path / "rso"))
    assert out["judge"] == "reward_model"


def test_active_training_steps_scale_with_labels():
    import ml_collections

    from jaxpref.config_base import get_base_config

    cfg = get_base_config()
    cfg.batch_size, cfg.num_steps = 32, 150
    cfg.active = ml_collections.ConfigDict(dict(epochs=0))
    assert training_steps(cfg, 64) == 150  # fixed step count
    cfg.active.epochs = 10
    assert [training_steps(cfg, n) for n in (64, 100, 512)] == [20, 32, 160]  # ceil(10 * n / 32)


def test_rounds_of_equal_length_reuse_one_compiled_step(tmp_path):
    """Trainer compiles the train step and the reference pass once per objective and round
    length; a round of another length gets its own optimizer schedule."""
    import ml_collections

    from jaxpref.metrics_log import MetricsLogger
    from jaxpref.models import init_model
    from jaxpref.objectives import LossHParams, get_objective
    from jaxpref.online import Trainer, build_round_data

    model, params = init_model(dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                    num_kv_heads=2, max_position_embeddings=64), seed=0)
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(2, 32, 4)) for _ in range(8)]
    data = build_round_data(prompts, {n: [list(rng.integers(2, 32, 3)) for _ in prompts]
                                      for n in ("chosen", "rejected")}, pad_id=0)
    cfg = ml_collections.ConfigDict(dict(batch_size=4, log_every=100, optimizer=dict(
        name="adamw", learning_rate=1e-3, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0)))
    trainer = Trainer(model, cfg, MetricsLogger(str(tmp_path)), LossHParams(beta=0.1))
    dpo = get_objective("dpo")
    p1, _ = trainer.train_round(params, params, data, dpo, steps=2, first_step=0, seed=0, desc="r1")
    p2, _ = trainer.train_round(p1, p1, data, dpo, steps=2, first_step=2, seed=1, desc="r2")
    assert len(trainer._steps) == 1 and len(trainer._reference_fns) == 1
    (_, step_fn), = trainer._steps.values()
    assert len(step_fn._executables) == 1  # one batch shape, compiled once for both rounds
    assert trainer._reference_fns[("chosen", "rejected")]._cache_size() == 1
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))  # it trained
    trainer.train_round(p2, p2, data, dpo, steps=3, first_step=4, seed=2, desc="r3")
    assert sorted(steps for _, steps in trainer._steps) == [2, 3]
