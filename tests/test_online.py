"""Online methods: rejection-sampling statistics, SPPO win rates, acquisition functions, and one
tiny round of every online job (RSO, SPPO, SELM, active DPO, reward model)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import load_config, tiny_online, toy

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
from jaxpref.models import load_pretrained
from jaxpref.runtime.checkpointing import Checkpointer

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


@pytest.mark.parametrize("name,overrides,key", [
    ("rso", {"rso.num_samples": 4, "rso.num_accept": 4}, "num_pairs"),
    ("sppo", {"sppo.iterations": 1}, "iterations"),
    ("selm", {"selm.rounds": 2}, "rounds"),
    ("selm", {"selm.rounds": 2, "eval.round_prompts": 0}, "rounds"),  # no quick evaluation per round
    ("active_dpo", {"active.acquisitions": 1, "active.labels_per_step": 16, "active.pool_size": 32}, "curves"),
])
def test_online_job_runs_one_tiny_round(tmp_path, sft_cache, name, overrides, key):
    summary = run(tiny_online(name, sft_cache, **overrides), str(tmp_path))
    assert key in summary and 0.0 <= summary["win_rate_vs_sft"] <= 1.0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["job"] == name
    if name == "active_dpo":
        assert set(summary["curves"]) == {"hybrid", "random"}
        assert (tmp_path / "active_learning_curve.png").exists()
    if name == "selm":
        assert summary["rounds"][1]["distinct_samples"] is not None
        quick = overrides.get("eval.round_prompts", 1) > 0
        assert all(("win_rate_vs_sft" in r) == quick for r in summary["rounds"])


def test_selm_resumes_mid_round_and_after_a_finished_round_to_identical_params(tmp_path, sft_cache):
    """Round 1 ends at step 4, round 2 (sampled from round 1's policy) at step 8; checkpoints every 3
    steps. Losing round 2's checkpoints resumes after round 1 and samples round 2 again; losing
    only the last one resumes round 2 at step 6 on its saved data. Both end where an
    uninterrupted run ends."""
    import shutil

    def job(export):
        return tiny_online("selm", sft_cache, **{"selm.rounds": 2, "keep_checkpoints": 10, "export_dir": str(export)})

    run(job(tmp_path / "straight"), str(tmp_path / "a"))
    want = jax.tree.leaves(load_pretrained(str(tmp_path / "straight"))[1])
    workdir = tmp_path / "b"
    run(job(tmp_path / "unused"), str(workdir))
    assert sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()) == [3, 4, 6, 8]
    # The end of a sampled round (round 2) keeps its params alone: the next round would start a fresh
    # optimizer state. Mid-round checkpoints keep it to continue from, and so does the end of round 1
    # (the built-in task's fixed pairs: a longer num_steps extends it).
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    assert {s: ckpt.read_meta(s)["saved"]["optimizer"] for s in (3, 4, 6, 8)} == {3: True, 4: True, 6: True,
                                                                                  8: False}
    sizes = {s: sum(f.stat().st_size for f in (workdir / "checkpoints" / str(s)).rglob("*") if f.is_file())
             for s in (6, 8)}
    assert sizes[8] < 0.5 * sizes[6], sizes  # AdamW's two moments are twice the params
    ckpt.close()
    for lost, resumed_at in (([6, 8], 4), ([8], 6)):
        for step in lost:
            shutil.rmtree(workdir / "checkpoints" / str(step))
        export = tmp_path / f"resumed_{resumed_at}"
        summary = run(job(export), str(workdir))
        assert [r["round"] for r in summary["rounds"]] == [1, 2]
        assert summary["rounds"][1]["final_loss"] is not None
        for a, b in zip(want, jax.tree.leaves(load_pretrained(str(export))[1])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    # The finished job again: it restores the params-only checkpoint 8 and trains nothing.
    saved_at = (workdir / "checkpoints" / "8").stat().st_mtime_ns
    run(job(tmp_path / "again"), str(workdir))
    assert (workdir / "checkpoints" / "8").stat().st_mtime_ns == saved_at  # not trained and saved again
    for a, b in zip(want, jax.tree.leaves(load_pretrained(str(tmp_path / "again"))[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,overrides", [("selm", {"selm.rounds": 2}), ("sppo", {"sppo.iterations": 2})])
def test_sampled_rounds_take_their_reference_log_probs_from_the_sampler(monkeypatch, tmp_path, sft_cache, name,
                                                                     overrides):
    """A round whose reference is its start policy trains on responses that policy sampled, so the
    sampler's log-probs are the reference's: no reference pass for those rounds, and the same
    numbers (to float32 summation order) as the pass computes."""
    from jaxpref.train import rounds

    def record(into):
        original = rounds.Trainer._with_reference_logps

        def wrapped(self, data, names, *args, **kwargs):
            out = original(self, data, names, *args, **kwargs)
            into.append({n: np.asarray(out.extras[f"ref_{n}"]) for n in names})
            return out
        return wrapped

    passes = []
    real_pass = rounds.reference_logps_of
    monkeypatch.setattr(rounds, "reference_logps_of", lambda *a, **k: passes.append(1) or real_pass(*a, **k))
    from_sampler: list = []
    monkeypatch.setattr(rounds.Trainer, "_with_reference_logps", record(from_sampler))
    overrides = {**overrides, "ref_cache": False}  # SELM's offline round: a pass, not a cache hit
    run(tiny_online(name, sft_cache, **overrides), str(tmp_path / "sampler"))
    sampled_rounds = 2 if name == "sppo" else 1  # SELM's first round trains on the offline pairs
    assert len(from_sampler) == 2 and len(passes) == 2 - sampled_rounds

    from_pass: list = []
    monkeypatch.setattr(rounds.Trainer, "_with_reference_logps", record(from_pass))
    monkeypatch.setattr(rounds.Trainer, "_sampler_is_reference", lambda *args: False)
    run(tiny_online(name, sft_cache, **overrides), str(tmp_path / "pass"))
    # the first sampled round (later ones sample from policies trained on slightly different numbers)
    got, want = from_sampler[2 - sampled_rounds], from_pass[2 - sampled_rounds]
    assert got.keys() == want.keys() and {"chosen", "rejected"} <= set(got)  # SELM: and its greedy "sample"
    for n in got:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-4)


def test_sampler_log_probs_are_not_the_reference_where_they_could_differ():
    """The guard of the test above: not in bf16 compute (another decode path, other rounding), not
    when a first LoRA round starts from loaded adapters but sampled from the plain base, not with
    an empty prompt (the sampler scores the first response token, the train step never scores a
    sequence's first token), and not for length-weighted scoring or a reference at the job's start."""
    import types

    from jaxpref.data.batches import PairExample
    from jaxpref.data.training_set import TrainingSet
    from jaxpref.objectives import get_objective
    from jaxpref.train import rounds
    from jaxpref.train.step import PLAIN

    def rnd(prompt=(1, 2), **kw):
        data = TrainingSet([PairExample(list(prompt), [3, 4], [5])])
        logps = {"ref_chosen": np.zeros(1, np.float32), "ref_rejected": np.zeros(1, np.float32)}
        return rounds.Round("r", data, "dpo", 1, 0, reference=rounds.Reference(kw.pop("start", "round_start")),
                            sampler_logps=logps, **kw)

    plan = {"objective": get_objective("dpo"), "scoring": PLAIN}
    base = {"layers": {"q": {"kernel": np.zeros((2, 2))}}}
    with_adapters = {"layers": {"q": {"kernel": np.zeros((2, 2)), "kernel_lora_a": np.zeros((2, 1)),
                                      "kernel_lora_b": np.zeros((1, 2))}}}

    def ok(r, *, dtype=jnp.float32, lora=None, fresh=True, start=base, scoring=PLAIN):
        trainer = types.SimpleNamespace(lora=lora, fresh_adapters=fresh, model=types.SimpleNamespace(dtype=dtype))
        return rounds.Trainer._sampler_is_reference(trainer, r, {**plan, "scoring": scoring}, start)

    assert ok(rnd())
    assert not ok(rnd(), dtype=jnp.bfloat16)
    assert not ok(rnd(prompt=()))
    assert not ok(rnd(start="sft")) and not ok(rnd(init="sft"))
    assert not ok(rnd(), scoring=PLAIN._replace(ld_alpha=0.5))
    assert ok(rnd(), lora="spec", fresh=True)  # fresh adapters change nothing: the base sampled the start
    assert not ok(rnd(), lora="spec", fresh=False)  # loaded adapters, sampled without them
    assert ok(rnd(), lora="spec", fresh=False, start=with_adapters)  # later rounds sample with them


def compiles_per_round(monkeypatch, cfg, workdir) -> tuple[list[int], dict]:
    """Runs ``cfg`` and counts XLA compilations from each round's ``make_round`` call to the next
    one (sampling, judging, reference pass, training, quick evaluation); the last entry counts what
    follows the last round (the final evaluation)."""
    import dataclasses

    from jax import monitoring

    from jaxpref import main

    counts: list[int] = []

    def listener(name, _duration, **_):
        if name == "/jax/core/compile/backend_compile_duration" and counts:
            counts[-1] += 1

    method = main.get_method(cfg.job)

    def make_round(ctx, index):
        counts.append(0)
        return method.make_round(ctx, index)

    monkeypatch.setattr(main, "get_method", lambda _: dataclasses.replace(method, make_round=make_round))
    monitoring.register_event_duration_secs_listener(listener)
    try:
        summary = main.run(cfg, str(workdir))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    return counts, summary


@pytest.mark.parametrize("name,overrides,same_as_previous", [
    ("selm", {"selm.rounds": 3}, 2),  # round 1 is DPO on offline pairs, rounds 2-3 SELM on samples
    ("sppo", {"sppo.iterations": 2}, 1),
])
def test_a_repeated_round_compiles_nothing(monkeypatch, tmp_path, sft_cache, name, overrides, same_as_previous):
    cfg = tiny_online(name, sft_cache, **overrides)
    cfg.eval.round_prompts = cfg.eval.num_prompts  # the final evaluation has the quick evaluations' shapes
    counts, summary = compiles_per_round(monkeypatch, cfg, tmp_path)
    assert len(counts) == same_as_previous + 2  # every round, then the final evaluation
    assert counts[0] > 0  # the first round compiles its step, sampler, scoring and evaluation
    assert counts[same_as_previous:] == [0, 0], counts  # the same shapes again: nothing new


def test_reward_model_job_and_judge(tmp_path, sft_cache):
    cfg = toy(load_config("reward_model"), sft_cache)
    cfg.num_steps = 30
    summary = run(cfg, str(tmp_path / "rm"))
    assert 0.0 <= summary["oracle_agreement"] <= 1.0
    # The saved model is usable as a judge by an online job.
    rso = tiny_online("rso", sft_cache, **{"rso.num_samples": 4, "rso.num_accept": 2, "judge.kind": "reward_model",
                                           "judge.path": summary["reward_model_path"]})
    out = run(rso, str(tmp_path / "rso"))
    assert out["judge"] == "reward_model"


def test_active_training_steps_scale_with_labels():
    import ml_collections

    from jaxpref.config import get_base_config

    cfg = get_base_config()
    cfg.batch_size, cfg.num_steps = 32, 150
    cfg.active = ml_collections.ConfigDict(dict(epochs=0))
    assert training_steps(cfg, 64) == 150  # fixed step count
    cfg.active.epochs = 10
    assert [training_steps(cfg, n) for n in (64, 100, 512)] == [20, 32, 160]  # ceil(10 * n / 32)
