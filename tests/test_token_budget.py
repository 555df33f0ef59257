"""A token budget per batch (``data.max_tokens_per_batch``): how an epoch is cut into batches,
filler slots that change nothing (loss, gradients, logged metrics), resumable multi-process
batches, and the end-to-end job with its one-line errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpref.config import ConfigError
from jaxpref.data.batches import PairExample, collate_pairs
from jaxpref.data.stream import FILLER, BatchStream, budget_tokens, token_budget_batches
from jaxpref.main import run
from jaxpref.objectives import default_hparams, get_objective
from jaxpref.train.state import create_train_state
from jaxpref.train.step import batch_groups, make_train_step
from tests.helpers import load_config
from tests.test_own_data import hf_ckpt, own_cfg, pair_rows, write_rows  # noqa: F401  (fixture)


def _examples(rng, n, vocab=20):
    def toks(lo, hi):
        return [int(t) for t in rng.integers(3, vocab, rng.integers(lo, hi))]

    return [PairExample(toks(1, 12), toks(1, 9), toks(1, 9)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_budget_runs_are_maximal_consecutive_and_cover_the_order(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 30, 57)
    order = rng.permutation(57)
    budget, cap = int(rng.integers(30, 90)), int(rng.integers(2, 9))
    runs = token_budget_batches(tokens, order, budget, cap)
    np.testing.assert_array_equal(np.concatenate(runs), order)  # every example once, in order
    for k, r in enumerate(runs):
        assert 1 <= len(r) <= cap and tokens[r].sum() <= budget
        if k + 1 < len(runs):  # the next example would not have fitted
            nxt = runs[k + 1][0]
            assert len(r) == cap or tokens[r].sum() + tokens[nxt] > budget


def test_budget_stream_is_a_pure_function_of_the_step_and_splits_over_processes():
    rng = np.random.default_rng(0)
    ex = _examples(rng, 40)
    budget, cap = 60, 6
    kw = dict(batch_size=cap, pad_id=0, buckets=(32,), seed=3, max_tokens=budget, padding_free=True)
    one = BatchStream(ex, **kw)
    two = [BatchStream(ex, **kw, process_index=i, process_count=2) for i in range(2)]
    per_epoch = one.steps_per_epoch
    seen = []
    for step in range(2 * per_epoch + 3):  # into the third epoch
        g = one.global_indices(step)
        real = g[g != FILLER]
        assert len(g) == cap and sum(budget_tokens(ex[i]) for i in real) <= budget
        parts = [s.local_indices(step) for s in two]
        g2 = two[0].global_indices(step)
        np.testing.assert_array_equal(np.concatenate(parts), g2)  # the processes' slices assemble it
        np.testing.assert_array_equal(np.sort(g2[g2 != FILLER]), np.sort(real))  # the same pairs as on one
        np.testing.assert_array_equal(np.concatenate([s.local_weights(step) for s in two]), (g2 != FILLER))
        assert abs(sum(p[p != FILLER].size for p in parts[:1]) - real.size / 2) <= 0.5  # dealt evenly
        assert two[0].packed_sizes(step) == two[1].packed_sizes(step)
        batch = two[1].batch_at(step)
        assert batch.chosen_ids.shape[0] == cap // 2
        seen.append(real)
    epoch0 = np.concatenate(seen[:per_epoch])
    assert sorted(epoch0.tolist()) == list(range(len(ex)))  # epoch 0: each example exactly once, none dropped
    fresh = BatchStream(ex, **kw)  # a resumed run starts at any step and sees the same batches
    np.testing.assert_array_equal(fresh.global_indices(2 * per_epoch + 1), one.global_indices(2 * per_epoch + 1))
    with pytest.raises(ValueError, match="example 0 has 12 tokens"):
        BatchStream([PairExample([3] * 6, [4] * 3, [5] * 3)] * 8, **{**kw, "max_tokens": 11})


@pytest.mark.parametrize("share_prompt", [False, True])
def test_filler_slots_change_neither_loss_gradients_nor_metrics(tiny, pairs, share_prompt):
    """A batch of 5 pairs + 3 filler slots (weight 0) steps exactly like the batch of the 5 pairs."""
    model, params = tiny
    objective = get_objective("dpo")
    step = jax.jit(make_train_step(model, objective, default_hparams(objective, beta=0.1), optax.sgd(1.0)))
    real = list(pairs[:5])
    filler = [PairExample([0], [0], [0])] * 3

    def run_step(examples, weight):
        groups, extras = batch_groups(collate_pairs(examples, pad_id=0, buckets=[24]), share_prompt=share_prompt,
                                      padding_free=share_prompt)
        if weight is not None:
            extras = {**extras, "pair_weight": jnp.asarray(weight, jnp.float32)}
        state = create_train_state(params, optax.sgd(1.0), rng=jax.random.PRNGKey(0), with_reference=True)
        return step(state, groups, extras)

    want_state, want = run_step(real, None)
    got_state, got = run_step(real + filler, [1.0] * 5 + [0.0] * 3)
    for k in ("loss", "grad_norm", "chosen_reward", "rejected_reward", "reward_accuracy", "reward_margin",
              "chosen_logps", "rejected_logps", "kl_estimate", "tokens"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # sgd(1): the step moved the params by minus the gradient, so equal params = equal gradients
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_state.params,
                 want_state.params)


def test_budget_job_end_to_end_and_its_errors(tmp_path, hf_ckpt):  # noqa: F811
    source = write_rows(tmp_path / "train.jsonl", pair_rows(80))
    cfg = own_cfg("dpo", hf_ckpt, source, num_epochs=1.0, ref_cache=False, **{"data.max_tokens_per_batch": 40,
                                                                               "data.eval_fraction": 0.0})
    summary = run(cfg, str(tmp_path / "run"))
    assert 80 // 8 < summary["steps"] <= 80  # an epoch: fewer than batch_size 8 pairs of ~10 tokens fit 40
    with pytest.raises(ConfigError, match=r"config\.data\.max_tokens_per_batch: example \d+ has \d+ tokens"):
        run(own_cfg("dpo", hf_ckpt, source, **{"data.max_tokens_per_batch": 5}), str(tmp_path / "tight"))
    with pytest.raises(ConfigError, match=r"config\.data\.max_tokens_per_batch: .*'kto'"):
        run(own_cfg("kto", hf_ckpt, source, **{"data.max_tokens_per_batch": 40}), str(tmp_path / "kto"))
    online = load_config("selm")
    online.data.max_tokens_per_batch = 40
    with pytest.raises(ConfigError, match=r"config\.data\.max_tokens_per_batch: the selm job trains on sampled"):
        run(online, str(tmp_path / "selm"))
