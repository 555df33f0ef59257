"""jaxpref's losses against numbers TRL's own code produced (``tests/golden/trl_losses.json``).

The file holds fixed logits and, per case, what TRL 1.16 computed from them: the batch loss, its
gradient with respect to the policy logits, the logged reward metrics and (where a pair's loss
does not depend on the rest of the batch) each pair's loss. ``tests/golden/make_trl_golden.py``
regenerates it where torch and trl are installed; this test needs neither. jaxpref's side runs
the train step's own pieces: ``logps_from_logits`` (masking, LD-DPO weights, WPO), the objective
table (``get_objective``, combined losses) and ``batch_loss``.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpref.objectives import INITIAL_LOSS_STATE, PAIR, Sequences, default_hparams, get_objective
from jaxpref.train.step import batch_loss, logps_from_logits, scoring_of

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "trl_losses.json")
with open(GOLDEN) as f:
    DATA = json.load(f)
INPUTS = {k: np.asarray(v) for k, v in DATA["inputs"].items()}
B = DATA["sizes"]["B"]
RTOL = 1e-4


def _groups(rows):
    """chosen / rejected ``Sequences`` of the pairs ``rows``; for KTO, completion and kl."""
    ids, attn, comp = (jnp.asarray(INPUTS[k], jnp.int32) for k in ("ids", "attention_mask", "completion_mask"))
    c, r = np.asarray(rows), np.asarray(rows) + B
    return {"chosen": Sequences(ids[c], attn[c], comp[c]), "rejected": Sequences(ids[r], attn[r], comp[r]),
            "completion": Sequences(ids[:B], attn[:B], comp[:B]),
            "kl": Sequences(*(jnp.asarray(INPUTS[k], jnp.int32)
                              for k in ("kl_ids", "kl_attention_mask", "kl_completion_mask")))}


def _policy_logits(case, rows):
    if case["kind"] == "kto":
        return jnp.asarray(INPUTS["policy_logits"][:B])
    return jnp.asarray(INPUTS["policy_logits"][np.concatenate([rows, np.asarray(rows) + B])])


def jaxpref_loss(case, rows):
    """``(loss, LossOutput, grad wrt the policy logits)`` from jaxpref's train-step pieces."""
    objective = get_objective(case["loss"], case["loss_weights"] or None)
    assert set(case["hparams"]) <= set(objective.hparams), (case["hparams"], objective.hparams)
    hp = default_hparams(objective, **case["hparams"])
    scoring = scoring_of(hp, objective)
    groups = _groups(rows)
    loss_state = {k: jnp.float32(v) for k, v in INITIAL_LOSS_STATE.items()}
    if case["kind"] == "kto":
        kl_policy = jnp.asarray(INPUTS["kl_policy_logits"])
        extras = {"desirable": jnp.asarray(INPUTS["desirable"])}

        def scores(logits):
            out = logps_from_logits(logits, groups, ("completion",))
            out.update(logps_from_logits(kl_policy, groups, ("kl",)))
            return out

        ref = {**logps_from_logits(jnp.asarray(INPUTS["ref_logits"][:B]), groups, ("completion",)),
               **logps_from_logits(jnp.asarray(INPUTS["kl_ref_logits"]), groups, ("kl",))}
        ref = {n: ref[n] for n in objective.groups}
    else:
        extras = {}
        groups = {n: groups[n] for n in PAIR}
        ref_logits = jnp.asarray(INPUTS["ref_logits"][np.concatenate([rows, np.asarray(rows) + B])])
        ref = logps_from_logits(ref_logits, groups, PAIR, scoring._replace(wpo=False, full_chosen=False)) \
            if objective.needs_reference else {}

        def scores(logits):
            return logps_from_logits(logits, groups, PAIR, scoring)

    def f(logits):
        policy = scores(logits)
        return batch_loss(objective, hp, policy, ref, {n: groups[n] for n in objective.groups}, extras, loss_state)

    (loss, (out, _)), grad = jax.value_and_grad(f, has_aux=True)(_policy_logits(case, rows))
    return loss, out, grad


def _masked_mean(x, valid):
    x = np.asarray(x)
    return x.mean() if valid is None else x[np.asarray(valid)].mean()


CASES = sorted(DATA["cases"])
# bco_pair: TRL 1.16 has no reward baseline (delta = 0); jaxpref's objective carries the running
# baseline of TRL <= 0.11 and the paper, so its row is compared through the loss function itself.
ROW_CASES = [c for c in CASES if c != "bco_pair"]


@pytest.mark.parametrize("name", ROW_CASES)
def test_loss_and_gradient_match_trl(name):
    case = DATA["cases"][name]
    loss, _, grad = jaxpref_loss(case, list(range(B)))
    np.testing.assert_allclose(float(loss), case["value"], rtol=RTOL, atol=1e-7)
    want = np.asarray(case["grad_policy_logits"])
    scale = np.abs(want).max()
    assert scale > 0
    np.testing.assert_allclose(np.asarray(grad), want, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize("name", ROW_CASES)
def test_logged_rewards_match_trl(name):
    case = DATA["cases"][name]
    _, out, _ = jaxpref_loss(case, list(range(B)))
    m = case["metrics"]
    chosen = _masked_mean(out.chosen_rewards, out.chosen_valid)
    rejected = _masked_mean(out.rejected_rewards, out.rejected_valid)
    np.testing.assert_allclose(chosen, m["rewards/chosen"], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(rejected, m["rewards/rejected"], rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(chosen - rejected if "rewards/accuracies" not in m else
                               np.mean(np.asarray(out.chosen_rewards) - np.asarray(out.rejected_rewards)),
                               m["rewards/margins"], rtol=RTOL, atol=1e-6)
    if "rewards/accuracies" in m:
        acc = np.mean(np.asarray(out.chosen_rewards) > np.asarray(out.rejected_rewards))
        assert acc == pytest.approx(m["rewards/accuracies"])
    if "kl" in m and case["loss"] == "kto":  # the reference point TRL logs as "kl"
        np.testing.assert_allclose(float(out.metrics["kl"]), m["kl"], rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("name", [c for c in ROW_CASES if DATA["cases"][c]["per_example"]])
def test_per_pair_losses_match_trl(name):
    case = DATA["cases"][name]
    _, out, _ = jaxpref_loss(case, list(range(B)))
    np.testing.assert_allclose(np.asarray(out.losses), case["per_example"], rtol=RTOL, atol=1e-7)


def test_bco_pair_without_baseline_matches_trl_1_16():
    """TRL 1.16's ``bco_pair`` is ``losses.bco_pair_loss`` with ``delta = 0``."""
    from jaxpref import losses

    case = DATA["cases"]["bco_pair"]
    groups = {n: _groups(range(B))[n] for n in PAIR}
    ref = logps_from_logits(jnp.asarray(INPUTS["ref_logits"]), groups, PAIR)

    def f(logits):
        p = logps_from_logits(logits, groups, PAIR)
        return jnp.mean(losses.bco_pair_loss(p["chosen"], p["rejected"], ref["chosen"], ref["rejected"],
                                             beta=0.1, delta=0.0)[0])

    loss, grad = jax.value_and_grad(f)(jnp.asarray(INPUTS["policy_logits"]))
    np.testing.assert_allclose(float(loss), case["value"], rtol=RTOL)
    want = np.asarray(case["grad_policy_logits"])
    np.testing.assert_allclose(np.asarray(grad), want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_golden_file_covers_every_trl_dpo_loss_type():
    trl_types = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}
    assert trl_types <= set(CASES)
    assert {"kto", "apo_zero_unpaired", "cpo_sigmoid", "cpo_hinge", "cpo_ipo", "simpo", "alphapo", "orpo"} <= set(CASES)
    assert DATA["trl_version"].startswith("1.16")
