r"""Win rates from judged pairs, with AlpacaEval 2.0's columns and length-controlled win rate.

Pure functions over numbers: a preference per pair (the probability that the candidate's
output beats the baseline's on one instruction, in [0, 1]; 0.5 is a tie), the two outputs'
lengths (characters, as AlpacaEval counts them) and an instruction id per pair.  The
judging itself (both orders, caching, retries) lives in :mod:`harness.evaluation.judges`, which calls
:func:`pairwise_stats`; so does ``harness eval`` through it, e.g.

    harness eval runs/dpo-0001 eval.judge=gold

Columns (names and meanings of AlpacaEval 2.0's leaderboard, tatsu-lab/alpaca_eval):

``win_rate``
    100 x mean preference: a win counts 1, a tie 0.5, a soft preference its probability.
``standard_error``
    100 x standard error of that mean (sample standard deviation with ddof=1 over sqrt(n)).
``n_wins`` / ``n_wins_base`` / ``n_draws`` / ``n_total``
    pairs with preference above / below / at 0.5 (within 1e-9, so that float round-off of
    an averaged both-order judgement still reads as a tie), and all pairs.
``discrete_win_rate``
    100 x (n_wins + n_draws / 2) / n_total: each pair rounded to win / tie / loss first.
``avg_length``
    mean length of the candidate's outputs.
``length_controlled_winrate``
    the length-controlled win rate of Dubois, Galambosi, Liang & Hashimoto,
    "Length-Controlled AlpacaEval: A Simple Way to Debias Automatic Evaluators"
    (arXiv:2404.04475, COLM 2024), see below.
``lc_standard_error``
    standard error of the length-controlled win rate by bootstrap over instructions, see below.

Length control (our implementation of the paper's method).  A logistic GLM predicts the
judge's preference for the candidate from

.. math::
    \operatorname{logit} q_i = \theta + \phi\,\tanh\!\Big(\frac{\ell^c_i - \ell^b_i}{\operatorname{sd}(\ell^c - \ell^b)}\Big)
                               + \psi\,\gamma_{x_i}

where :math:`\theta` is the candidate's own intercept (its ability against the baseline),
the tanh term is the length difference divided by its standard deviation over the pairs
(not centred: zero must mean "equal lengths"), and :math:`\gamma_x` is the difficulty of
instruction :math:`x`.  The fit minimises the soft-label log loss plus an L2 penalty
:math:`\tfrac{\lambda}{2}(\phi^2 + \psi^2)`; the intercept is not penalised, so the mean
fitted preference equals the raw win rate exactly (the intercept's score equation) and, when
all lengths are equal, the length-controlled win rate *is* the raw win rate.  The
length-controlled win rate is :math:`100\cdot\frac1n\sum_i \sigma(\theta + \psi\gamma_{x_i})`,
the prediction with the length difference set to zero.  Like the paper's, it keeps the
properties of a win rate: a model against itself scores 50, swapping candidate and
baseline gives 100 minus the score, and it stays in [0, 100].

Where we differ from the reference implementation, and why:

- penalty: AlpacaEval uses an L1 penalty whose strength is chosen by 5-fold grouped
  cross-validation and also anchors the length weight on judgements of the baseline
  prompted to be verbose / concise (data we do not have for an arbitrary baseline).  We use
  an L2 penalty on the length and difficulty weights, its strength chosen by the same kind of
  5-fold cross-validation over instructions (held-out soft log loss, grid 1e-4 .. 1e4) when
  there are at least 10 instructions, else lambda = 1 (a unit-variance Gaussian prior).
- instruction difficulty :math:`\gamma_x` is only identifiable from several models judged
  on the same instructions (one judgement per instruction cannot separate difficulty from
  noise).  AlpacaEval estimates it once from its leaderboard models; here it is estimated by
  :func:`instruction_difficulty` from an optional pool of other models' judgements against
  the same baseline, and omitted (:math:`\psi\gamma_x = 0`) without one.
- ``lc_standard_error``: AlpacaEval reports the standard error of the per-instruction
  predicted preferences, which measures how predictions vary across instructions (it is 0
  without a difficulty term) rather than the uncertainty of the estimate.  We report the
  bootstrap standard error: instructions resampled with replacement (``n_bootstrap``
  times, fixed ``seed``), the whole fit redone on each resample with the penalty chosen on
  the full data, the standard deviation (ddof=1) of the resampled LC win rates.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
from scipy.optimize import minimize

#: a flat sequence of numbers: a list or a 1-d array (both go through ``np.asarray``)
Floats: TypeAlias = Sequence[float] | np.ndarray

COLUMNS = (
    "win_rate",
    "standard_error",
    "n_wins",
    "n_wins_base",
    "n_draws",
    "n_total",
    "discrete_win_rate",
    "avg_length",
    "length_controlled_winrate",
    "lc_standard_error",
)

#: |p - 0.5| at or below this is a draw (float round-off of averaged both-order judgements)
DRAW_TOLERANCE = 1e-9
#: penalty grid searched by cross-validation: 10 values, log-spaced 1e-4 .. 1e4 (like
#: AlpacaEval's LogisticRegressionCV default grid of inverse strengths)
L2_GRID = tuple(float(v) for v in np.logspace(-4, 4, 10))
#: penalty used when there are too few instructions to cross-validate
DEFAULT_L2 = 1.0
MIN_INSTRUCTIONS_FOR_CV = 10
N_FOLDS = 5
N_BOOTSTRAP = 200
#: the unpenalised intercept is boxed so a candidate that wins (or loses) every pair gives
#: a finite fit; sigma(30) differs from 1 by 1e-13
INTERCEPT_BOUND = 30.0


# --------------------------------------------------------------------------- validation


def _as_array(name: str, values: Floats, n: int | None = None) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} items but preferences has {n}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        i = int(bad[0])
        hint = " (drop failed pairs before computing win rates)" if name == "preferences" else ""
        raise ValueError(f"{name}[{i}] = {float(arr[i])!r} is not a finite number{hint}")
    return arr


def _check_preferences(prefs: Floats) -> np.ndarray:
    y = _as_array("preferences", prefs)
    if len(y) == 0:
        raise ValueError("preferences is empty: no judged pairs to compute a win rate from")
    bad = np.flatnonzero((y < 0.0) | (y > 1.0))
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"preferences[{i}] = {float(y[i])!r} is outside [0, 1] (P(candidate beats baseline))")
    return y


def _check_lengths(name: str, values: Floats, n: int) -> np.ndarray:
    arr = _as_array(name, values, n)
    bad = np.flatnonzero(arr < 0)
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {float(arr[i])!r} is negative")
    return arr


def _group_codes(instruction_ids: Sequence[Hashable] | None, n: int) -> tuple[np.ndarray, list[Hashable]]:
    """Integer code per pair and the distinct ids in first-seen order."""
    if instruction_ids is None:
        return np.arange(n), list(range(n))
    if len(instruction_ids) != n:
        raise ValueError(f"instruction_ids has {len(instruction_ids)} items but preferences has {n}")
    index: dict[Hashable, int] = {}
    codes = np.empty(n, dtype=int)
    for i, key in enumerate(instruction_ids):
        try:
            codes[i] = index.setdefault(key, len(index))
        except TypeError as e:
            raise ValueError(f"instruction_ids[{i}] = {key!r} is not hashable") from e
    return codes, list(index)


# --------------------------------------------------------------------------- the GLM


def length_feature(candidate_lengths: np.ndarray, baseline_lengths: np.ndarray) -> tuple[np.ndarray, float]:
    """tanh of the length difference over its standard deviation (ddof=1), and that deviation.

    All-equal differences (or a single pair) have no scale: the feature is then 0, which is
    also its value at equal lengths, so the fit reduces to the intercept.
    """
    delta = candidate_lengths - baseline_lengths
    scale = float(np.std(delta, ddof=1)) if len(delta) > 1 else 0.0
    if not np.isfinite(scale) or scale <= 0.0:
        return np.zeros_like(delta), 0.0
    return np.tanh(delta / scale), scale


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _fit_glm(y: np.ndarray, x: np.ndarray, l2: float) -> np.ndarray:
    """Penalised logistic regression with soft labels: returns [intercept, weights...].

    ``x`` is (n, k) of penalised features; the intercept is free (within INTERCEPT_BOUND).
    Convex, so L-BFGS-B from zero reaches the optimum; tolerances are tight because the
    intercept's gradient sum(p - y) is what makes the equal-length LC win rate exact.
    """
    n, k = x.shape

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        z = params[0] + x @ params[1:]
        loss = float(np.sum(_softplus(z) - y * z)) + 0.5 * l2 * float(params[1:] @ params[1:])
        r = _sigmoid(z) - y
        grad = np.empty(k + 1)
        grad[0] = r.sum()
        grad[1:] = x.T @ r + l2 * params[1:]
        return loss, grad

    bounds = [(-INTERCEPT_BOUND, INTERCEPT_BOUND)] + [(None, None)] * k
    res = minimize(
        objective, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds,
        options={"gtol": 1e-11, "ftol": 1e-15, "maxiter": 2000},
    )
    return np.asarray(res.x)


def _design(length_x: np.ndarray, difficulty_x: np.ndarray | None) -> np.ndarray:
    cols = [length_x] if difficulty_x is None else [length_x, difficulty_x]
    return np.column_stack(cols)


def _soft_log_loss(y: np.ndarray, z: np.ndarray) -> float:
    return float(np.sum(_softplus(z) - y * z))


def _choose_l2(y: np.ndarray, x: np.ndarray, groups: np.ndarray, n_groups: int, seed: int) -> float:
    """Penalty with the least held-out log loss over N_FOLDS folds of whole instructions."""
    if n_groups < MIN_INSTRUCTIONS_FOR_CV:
        return DEFAULT_L2
    rng = np.random.default_rng(seed)
    fold_of_group = np.empty(n_groups, dtype=int)
    fold_of_group[rng.permutation(n_groups)] = np.arange(n_groups) % N_FOLDS
    fold = fold_of_group[groups]
    best, best_loss = DEFAULT_L2, math.inf
    # strongest penalty first: on a flat curve keep the simpler model
    for l2 in sorted(L2_GRID, reverse=True):
        total = 0.0
        for f in range(N_FOLDS):
            train, test = fold != f, fold == f
            params = _fit_glm(y[train], x[train], l2)
            total += _soft_log_loss(y[test], params[0] + x[test] @ params[1:])
        if total < best_loss - 1e-12:
            best, best_loss = l2, total
    return best


@dataclass
class LengthControlledFit:
    """The fitted GLM: coefficients, the penalty used and the length-controlled win rate."""

    intercept: float
    length_weight: float
    difficulty_weight: float
    l2: float
    #: standard deviation of candidate minus baseline length (0 when all equal)
    length_scale: float
    #: per-pair predicted preference at zero length difference
    controlled_preferences: np.ndarray = field(repr=False)

    @property
    def winrate(self) -> float:
        return float(np.mean(self.controlled_preferences) * 100.0)


def fit_length_controlled(
    preferences: Floats,
    candidate_lengths: Floats,
    baseline_lengths: Floats,
    instruction_ids: Sequence[Hashable] | None = None,
    *,
    difficulty: Mapping[Hashable, float] | None = None,
    l2: float | Literal["cv"] = "cv",
    seed: int = 0,
) -> LengthControlledFit:
    """Fit the length-control GLM (module docstring) to one candidate-vs-baseline evaluation.

    ``difficulty`` maps instruction id -> difficulty (e.g. from :func:`instruction_difficulty`);
    ids it lacks get the mean difficulty, 0.  ``l2="cv"`` picks the penalty by cross-validation.
    """
    y = _check_preferences(preferences)
    n = len(y)
    cand = _check_lengths("candidate_lengths", candidate_lengths, n)
    base = _check_lengths("baseline_lengths", baseline_lengths, n)
    groups, ids = _group_codes(instruction_ids, n)
    if difficulty is not None and instruction_ids is None:
        raise ValueError("difficulty needs instruction_ids to know which instruction each pair is")
    return _fit_from_arrays(y, cand, base, groups, ids, difficulty, l2, seed)


def _fit_from_arrays(
    y: np.ndarray,
    cand: np.ndarray,
    base: np.ndarray,
    groups: np.ndarray,
    ids: list[Hashable],
    difficulty: Mapping[Hashable, float] | None,
    l2: float | Literal["cv"],
    seed: int,
) -> LengthControlledFit:
    length_x, scale = length_feature(cand, base)
    diff_x = None
    if difficulty is not None:
        per_group = np.array([float(difficulty.get(key, 0.0)) for key in ids])
        diff_x = per_group[groups]
    x = _design(length_x, diff_x)
    if l2 == "cv":
        lam = _choose_l2(y, x, groups, len(ids), seed)
    elif isinstance(l2, (int, float)) and l2 > 0:
        lam = float(l2)
    else:
        raise ValueError(f"l2 must be a positive number or 'cv', got {l2!r}")
    params = _fit_glm(y, x, lam)
    z0 = params[0] + (0.0 if diff_x is None else params[2] * diff_x)
    controlled = _sigmoid(np.broadcast_to(np.asarray(z0, dtype=float), y.shape).copy())
    return LengthControlledFit(
        intercept=float(params[0]),
        length_weight=float(params[1]),
        difficulty_weight=float(params[2]) if diff_x is not None else 0.0,
        l2=lam,
        length_scale=scale,
        controlled_preferences=controlled,
    )


# --------------------------------------------------------------------------- difficulty


@dataclass(frozen=True)
class PoolJudgement:
    """One judged pair of another model against the same baseline, for instruction difficulty."""

    model: str
    instruction_id: Hashable
    preference: float
    candidate_length: float
    baseline_length: float


def instruction_difficulty(pool: Sequence[PoolJudgement], l2: float = DEFAULT_L2) -> dict[Hashable, float]:
    r"""Per-instruction difficulty :math:`\gamma_x` from several models judged against one baseline.

    Jointly fits :math:`\operatorname{logit} q = \theta_m + \phi_m\tanh(\Delta\ell / \operatorname{sd}_m) - \gamma_x`
    (each model its own ability and length weight, lengths standardised per model) with an L2
    penalty ``l2`` on :math:`\phi` and :math:`\gamma`; returns :math:`\gamma` centred to mean 0.
    Higher means the baseline wins that instruction more often than the models' abilities explain.
    """
    if not pool:
        raise ValueError("difficulty pool is empty")
    models: dict[str, int] = {}
    items: dict[Hashable, int] = {}
    m_idx = np.empty(len(pool), dtype=int)
    x_idx = np.empty(len(pool), dtype=int)
    y = np.empty(len(pool))
    cand = np.empty(len(pool))
    base = np.empty(len(pool))
    for i, rec in enumerate(pool):
        if not isinstance(rec, PoolJudgement):
            raise ValueError(f"pool[{i}] is a {type(rec).__name__}, expected PoolJudgement")
        m_idx[i] = models.setdefault(rec.model, len(models))
        x_idx[i] = items.setdefault(rec.instruction_id, len(items))
        y[i], cand[i], base[i] = rec.preference, rec.candidate_length, rec.baseline_length
        if not (0.0 <= y[i] <= 1.0):
            raise ValueError(f"pool[{i}] (model {rec.model!r}): preference {rec.preference!r} is outside [0, 1]")
        if not (math.isfinite(cand[i]) and math.isfinite(base[i]) and cand[i] >= 0 and base[i] >= 0):
            raise ValueError(f"pool[{i}] (model {rec.model!r}): lengths must be finite and non-negative")
    n_m, n_x = len(models), len(items)
    feat = np.zeros(len(pool))
    for m in range(n_m):
        rows = m_idx == m
        feat[rows], _ = length_feature(cand[rows], base[rows])

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        theta, phi, gamma = params[:n_m], params[n_m : 2 * n_m], params[2 * n_m :]
        z = theta[m_idx] + phi[m_idx] * feat - gamma[x_idx]
        loss = float(np.sum(_softplus(z) - y * z)) + 0.5 * l2 * float(phi @ phi + gamma @ gamma)
        r = _sigmoid(z) - y
        grad = np.concatenate([
            np.bincount(m_idx, weights=r, minlength=n_m),
            np.bincount(m_idx, weights=r * feat, minlength=n_m) + l2 * phi,
            -np.bincount(x_idx, weights=r, minlength=n_x) + l2 * gamma,
        ])
        return loss, grad

    bounds = [(-INTERCEPT_BOUND, INTERCEPT_BOUND)] * n_m + [(None, None)] * (n_m + n_x)
    res = minimize(
        objective, np.zeros(2 * n_m + n_x), jac=True, method="L-BFGS-B", bounds=bounds,
        options={"gtol": 1e-9, "ftol": 1e-14, "maxiter": 5000},
    )
    gamma = np.asarray(res.x[2 * n_m :])
    gamma = gamma - gamma.mean()
    return {key: float(gamma[j]) for key, j in items.items()}


# --------------------------------------------------------------------------- the columns


def _bootstrap_lc_se(
    y: np.ndarray,
    cand: np.ndarray,
    base: np.ndarray,
    groups: np.ndarray,
    ids: list[Hashable],
    difficulty: Mapping[Hashable, float] | None,
    l2: float,
    n_bootstrap: int,
    seed: int,
) -> float:
    n_groups = len(ids)
    if n_groups < 2 or n_bootstrap < 2:
        return math.nan
    rows_of = [np.flatnonzero(groups == g) for g in range(n_groups)]
    rng = np.random.default_rng(seed)
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        picked = rng.integers(0, n_groups, size=n_groups)
        rows = np.concatenate([rows_of[g] for g in picked])
        # each drawn copy of an instruction is its own group so difficulty lookups still work
        new_groups = np.concatenate([np.full(len(rows_of[g]), j) for j, g in enumerate(picked)])
        new_ids = [ids[g] for g in picked]
        fit = _fit_from_arrays(y[rows], cand[rows], base[rows], new_groups, new_ids, difficulty, l2, seed)
        values[b] = fit.winrate
    return float(np.std(values, ddof=1))


def pairwise_stats(
    preferences: Floats,
    candidate_lengths: Floats,
    baseline_lengths: Floats,
    instruction_ids: Sequence[Hashable] | None = None,
    *,
    difficulty: Mapping[Hashable, float] | None = None,
    difficulty_pool: Sequence[PoolJudgement] | None = None,
    l2: float | Literal["cv"] = "cv",
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, float | int]:
    """AlpacaEval 2.0's columns (module docstring) for one candidate against one baseline.

    ``preferences[i]`` is P(candidate beats baseline) on pair i in [0, 1] (0.5 = tie); failed
    pairs must be dropped beforehand.  ``instruction_ids`` groups pairs by instruction for the
    bootstrap and the difficulty term (default: every pair its own instruction).  Give either
    ``difficulty`` (id -> difficulty) or ``difficulty_pool`` (other models' judgements against
    the same baseline) to include instruction difficulty.
    """
    y = _check_preferences(preferences)
    n = len(y)
    cand = _check_lengths("candidate_lengths", candidate_lengths, n)
    base = _check_lengths("baseline_lengths", baseline_lengths, n)
    groups, ids = _group_codes(instruction_ids, n)
    if difficulty is not None and difficulty_pool is not None:
        raise ValueError("give difficulty or difficulty_pool, not both")
    if (difficulty is not None or difficulty_pool is not None) and instruction_ids is None:
        raise ValueError("instruction difficulty needs instruction_ids to know which instruction each pair is")
    if difficulty_pool is not None:
        difficulty = instruction_difficulty(difficulty_pool)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")

    wins = y > 0.5 + DRAW_TOLERANCE
    losses = y < 0.5 - DRAW_TOLERANCE
    n_wins, n_wins_base = int(wins.sum()), int(losses.sum())
    n_draws = n - n_wins - n_wins_base
    se = float(np.std(y, ddof=1) / math.sqrt(n) * 100.0) if n > 1 else math.nan

    fit = _fit_from_arrays(y, cand, base, groups, ids, difficulty, l2, seed)
    lc_se = _bootstrap_lc_se(y, cand, base, groups, ids, difficulty, fit.l2, n_bootstrap, seed)
    return {
        "win_rate": float(np.mean(y) * 100.0),
        "standard_error": se,
        "n_wins": n_wins,
        "n_wins_base": n_wins_base,
        "n_draws": n_draws,
        "n_total": n,
        "discrete_win_rate": (n_wins + 0.5 * n_draws) / n * 100.0,
        "avg_length": float(np.mean(cand)),
        "length_controlled_winrate": fit.winrate,
        "lc_standard_error": lc_se,
    }
