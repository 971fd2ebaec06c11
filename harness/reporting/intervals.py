"""Means, 95% intervals and how a number with its interval is printed: one convention for the
report, ``harness leaderboard``, ``harness sweep status`` and ``harness eval``.

    python -c "from harness.reporting.intervals import mean_ci; print(mean_ci([1.0, 2.0, 3.0]))"

Every ``±`` the harness prints is the half-width of a 95% confidence interval (``CI_LABEL``):
over seeds (Student t on the per-seed values) where a configuration has several, else over
the evaluation's prompts (``Z95`` times the standard error the evaluation recorded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

#: what every printed ``±`` means
CI_LABEL = "± 95% CI"
#: the normal quantile of a two-sided 95% interval: per-prompt standard errors rest on tens to
#: thousands of prompts, where Student's t and the normal differ by under 4%
Z95 = 1.959963984540054
#: shown for a missing value
NONE = "—"


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student t quantile for a mean over ``n`` values (``n - 1`` degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def mean_ci(values: Iterable[Any], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the ``level`` CI, n) over the finite values; half-width NaN below 2 values."""
    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan, n
    return mean, t_quantile(n, level) * float(arr.std(ddof=1)) / math.sqrt(n), n


def isnan(v: Any) -> bool:
    """Missing: None, NaN or an empty string."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits, thousands separated, ``NONE`` when missing."""
    if isnan(v):
        return NONE
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1e-3:
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


def pm(mean: Any, half: Any, mark: str = "") -> str:
    """``mean ± half`` with both rounded to the interval's second significant digit; the bare
    mean when there is no interval."""
    if isnan(mean):
        return NONE
    if isnan(half) or not math.isfinite(float(half)):
        return fmt(mean)
    half = float(half)
    if half == 0:
        return f"{fmt(mean)} ± 0{mark}"
    digits = max(0, 1 - math.floor(math.log10(abs(half))))
    return f"{float(mean):.{digits}f} ± {half:.{digits}f}{mark}"
