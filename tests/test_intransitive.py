"""The intransitive judge: styles, the preference cycle, complementarity, and make_judge."""

import types

import numpy as np
import pytest

from jaxpref.config import get_base_config
from jaxpref.judges import CountingJudge, HostJudge, OracleJudge, make_judge
from jaxpref.tasks.intransitive import DEFAULT_CYCLE_PROB, NO_STYLE, IntransitiveJudge, cycle_outcome, response_style
from jaxpref.tasks.synthetic import BOS, EOS, NUM_SPECIAL, SEP, EchoTask

TASK = EchoTask()  # 24 words: blocks A = ids 4..11, B = 12..19, C = 20..27
A, B, C = NUM_SPECIAL, NUM_SPECIAL + 8, NUM_SPECIAL + 16
PROMPT = [BOS, A, B, C, SEP]
# One response per style, each echoing one prompt word three times: equal echo rewards (1.0).
STYLED = {"a": [A, A, A, EOS], "b": [B, B, B, EOS], "c": [C, C, C, EOS]}


def _logit(p):
    return np.log(p) - np.log1p(-p)


def test_response_style_is_the_plurality_block():
    assert response_style([A, A + 7, B, EOS], 24) == 0
    assert response_style([B, C, C, EOS, A, A, A], 24) == 2  # words after EOS do not count
    assert response_style([A, B, EOS], 24) == NO_STYLE  # tie
    assert response_style([EOS], 24) == NO_STYLE
    np.testing.assert_array_equal(cycle_outcome(np.array([0, 1, 2, 0, 1, NO_STYLE]), np.array([1, 2, 0, 2, 1, 0])),
                                  [1.0, 1.0, 1.0, 0.0, 0.5, 0.5])


@pytest.mark.parametrize("p", [0.3, 0.8, 0.95])
def test_styles_beat_each_other_in_a_cycle(p):
    judge = IntransitiveJudge(TASK, cycle_prob=p)
    assert len(set(TASK.rewards([PROMPT] * 3, list(STYLED.values())))) == 1
    ab, bc, ca = (float(judge.prob([PROMPT], [STYLED[x]], [STYLED[y]])[0]) for x, y in ("ab", "bc", "ca"))
    np.testing.assert_allclose([ab, bc, ca], (1 + p) / 2)
    # Under any Bradley-Terry model the logits around a cycle sum to (r_a-r_b)+(r_b-r_c)+(r_c-r_a) = 0.
    assert _logit(ab) + _logit(bc) + _logit(ca) > 0.5


def test_probabilities_are_complementary_and_reduce_to_the_oracle_without_the_cycle():
    rng = np.random.default_rng(0)
    prompts = TASK.sample_prompts(rng, 200)
    y1 = [TASK.behaviour_response(rng, x) for x in prompts]
    y2 = [TASK.behaviour_response(rng, x) for x in prompts]
    judge = IntransitiveJudge(TASK, cycle_prob=0.7)
    forward, backward = judge.prob(prompts, y1, y2), judge.prob(prompts, y2, y1)
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-12)
    assert np.all((forward >= 0) & (forward <= 1))
    np.testing.assert_allclose(IntransitiveJudge(TASK, cycle_prob=0.0).prob(prompts, y1, y2),
                               OracleJudge(TASK).prob(prompts, y1, y2))
    np.testing.assert_allclose(judge.prob(prompts, y1, y1), 0.5)


def test_pairwise_only_and_argument_checks():
    with pytest.raises(NotImplementedError, match="pairwise-only"):
        IntransitiveJudge(TASK).rewards([PROMPT], [STYLED["a"]])
    with pytest.raises(ValueError, match="cycle_prob"):
        IntransitiveJudge(TASK, cycle_prob=1.5)


def test_make_judge_builds_it_from_the_config():
    cfg = get_base_config()
    cfg.judge.kind = "intransitive"
    judge = make_judge(cfg, types.SimpleNamespace(task=TASK), None, None)
    assert isinstance(judge, CountingJudge) and isinstance(judge.inner, HostJudge)
    assert isinstance(judge.inner.inner, IntransitiveJudge) and not judge.pointwise
    assert judge.cycle_prob == DEFAULT_CYCLE_PROB
    cfg.judge.cycle_prob = 0.25
    assert make_judge(cfg, types.SimpleNamespace(task=TASK), None, None).cycle_prob == 0.25
    with pytest.raises(ValueError, match="echo task"):
        make_judge(cfg, types.SimpleNamespace(task=None), None, None)
