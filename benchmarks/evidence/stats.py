"""Statistics of the claims: mean ± std over seeds and the paired verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN with one value)."""
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def fmt(values: Sequence[float] | None, digits: int = 3) -> str:
    """``mean ± std`` (just the value for a single seed; ``-`` for none)."""
    if values is None or len(values) == 0 or any(v is None for v in values):
        return "-"
    m, s = mean_std(values)
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def paired_verdict(a: Sequence[float], b: Sequence[float]) -> dict:
    """Is ``a`` above ``b``? Paired over seeds (same SFT policy, data and eval prompts).

    Returns ``{"delta", "se", "verdict"}``: *reproduced* when the mean difference is positive
    and a two-sided paired t-test rejects zero at 5%; *same direction, not significant*;
    *not reproduced* (difference <= 0); *reversed* (significantly negative). One seed gives
    only the sign.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    delta = float(d.mean())
    if d.size < 2:
        return {"delta": delta, "se": None,
                "verdict": ("same direction" if delta > 0 else "not reproduced") + " (1 seed, no test)"}
    from scipy import stats

    se = float(d.std(ddof=1) / math.sqrt(d.size))
    significant = se == 0.0 or abs(delta) > stats.t.ppf(0.975, d.size - 1) * se
    if delta > 0:
        verdict = "reproduced" if significant else "same direction, not significant"
    else:
        verdict = "reversed" if significant and delta < 0 else "not reproduced"
    return {"delta": delta, "se": se, "verdict": verdict}


