"""An intransitive variant of the built-in echo task: a pairwise-only judge with a style cycle.

A response's *style* is the third of the content vocabulary (``num_words`` words split into
three equal blocks A, B, C) from which a strict plurality of its words come; a response with
no words, or a tie for the plurality, has no style. The judge mixes two verdicts:

    P(y1 > y2 | x) = p * C(s1, s2) + (1 - p) * sigmoid((r1 - r2) / bt_temperature)

where ``C(s1, s2)`` is 1 if style s1 beats s2 in the cycle A > B > C > A, 0 if it loses, and
1/2 when the styles are equal or undefined; ``r`` is the echo oracle's reward and the second
term is the task's Bradley-Terry preference. ``P(y1 > y2) + P(y2 > y1) = 1`` for every pair.

No Bradley-Terry reward represents it: three responses of styles A, B, C with equal echo
rewards give ``P(a > b) = P(b > c) = P(c > a) = (1 + p) / 2 > 1/2``, a preference cycle,
whereas ``sigmoid(r_a - r_b) > 1/2`` etc. would need ``r_a > r_b > r_c > r_a``. The judge is
therefore *pairwise only*: it has no pointwise ``rewards`` (methods that rank responses by a
score, such as RSO and SELM, cannot use it; SPPO and its iterative-DPO variant, which use
``prob`` only, can).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxpref.tasks.synthetic import NUM_SPECIAL, EchoTask, response_words

TokenLists = Sequence[Sequence[int]]
NO_STYLE = -1
DEFAULT_CYCLE_PROB = 0.5


def response_style(response: Sequence[int], num_words: int) -> int:
    """The style (0, 1 or 2) of a response, or ``NO_STYLE`` (empty response or a tie).

    Word ``w`` (token id ``NUM_SPECIAL + i``) belongs to block ``3 * i // num_words``.
    """
    words = response_words(response)
    if not words:
        return NO_STYLE
    counts = np.bincount([3 * (w - NUM_SPECIAL) // num_words for w in words], minlength=3)
    top = counts.max()
    return int(np.argmax(counts)) if np.sum(counts == top) == 1 else NO_STYLE


def cycle_outcome(styles_1: np.ndarray, styles_2: np.ndarray) -> np.ndarray:
    """``C(s1, s2)``: 1 where s1 beats s2 in A > B > C > A, 0 where it loses, 1/2 otherwise."""
    s1, s2 = np.asarray(styles_1), np.asarray(styles_2)
    defined = (s1 != NO_STYLE) & (s2 != NO_STYLE) & (s1 != s2)
    wins = (s2 - s1) % 3 == 1  # 0 beats 1, 1 beats 2, 2 beats 0
    return np.where(defined, wins.astype(np.float64), 0.5)


class IntransitiveJudge:
    """Pairwise judge ``p * cycle + (1 - p) * Bradley-Terry(echo reward)`` (module docstring).

    Args:
      task: the echo task whose reward gives the transitive part.
      cycle_prob: ``p`` in [0, 1], the weight of the style cycle.
    """

    pointwise = False

    def __init__(self, task: EchoTask, *, cycle_prob: float = DEFAULT_CYCLE_PROB):
        if not 0.0 <= cycle_prob <= 1.0:
            raise ValueError(f"cycle_prob must be in [0, 1], got {cycle_prob}")
        self.task, self.cycle_prob = task, float(cycle_prob)

    def styles(self, responses: TokenLists) -> np.ndarray:
        """``[N]`` int styles of responses."""
        return np.array([response_style(y, self.task.num_words) for y in responses], np.int64)

    def prob(self, prompts: TokenLists, responses_1: TokenLists, responses_2: TokenLists) -> np.ndarray:
        """``[N]`` float64 ``P(y1 > y2 | x)``."""
        r1, r2 = self.task.rewards(prompts, responses_1), self.task.rewards(prompts, responses_2)
        bt = self.task.preference_probs(r1, r2)
        cyc = cycle_outcome(self.styles(responses_1), self.styles(responses_2))
        return self.cycle_prob * cyc + (1.0 - self.cycle_prob) * bt

    def rewards(self, prompts: TokenLists, responses: TokenLists) -> np.ndarray:
        """Not available: the judge's preferences have no pointwise reward."""
        raise NotImplementedError(
            "the intransitive judge is pairwise-only (no Bradley-Terry reward represents it); "
            "use a method that needs only judge.prob, such as SPPO"
        )
