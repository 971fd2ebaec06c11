"""AlpacaEval 2.0 columns and the length-controlled win rate (harness.evaluation.winrate).

    .venv/bin/pytest tests/test_winrate.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.evaluation.winrate import (
    COLUMNS,
    PoolJudgement,
    fit_length_controlled,
    instruction_difficulty,
    pairwise_stats,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _simulate(seed: int, n: int, ability: float, length_effect: float, extra_length: float):
    """Judgements of a candidate whose outputs are ``extra_length`` chars longer on average,
    by a judge whose log-odds are ability + length_effect * tanh(standardised length gap)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(50, 150, n).astype(float)
    cand = np.clip(base + rng.normal(extra_length, 60, n), 1, None)
    delta = cand - base
    p = _sigmoid(ability + length_effect * np.tanh(delta / np.std(delta, ddof=1)))
    prefs = (rng.random(n) < p).astype(float)
    return prefs, cand, base


def test_columns_ties_and_standard_error_by_hand() -> None:
    prefs = [1.0, 0.0, 1.0, 0.5, 1.0]
    s = pairwise_stats(prefs, [10, 20, 30, 40, 50], [10, 20, 30, 40, 50], n_bootstrap=0)
    assert tuple(s) == COLUMNS
    assert s["win_rate"] == pytest.approx(70.0)  # (3 wins + half a tie) / 5
    # sample variance: (3 * 0.3^2 + 0.7^2 + 0.2^2) / 4 = 0.2; standard error sqrt(0.2 / 5) = 0.2
    assert s["standard_error"] == pytest.approx(20.0)
    assert (s["n_wins"], s["n_wins_base"], s["n_draws"], s["n_total"]) == (3, 1, 1, 5)
    assert s["avg_length"] == 30.0
    assert math.isnan(s["lc_standard_error"])  # no bootstrap asked

    soft = pairwise_stats([0.7, 0.2, 0.5, 0.9], [1, 1, 1, 1], [1, 1, 1, 1], n_bootstrap=0)
    assert soft["win_rate"] == pytest.approx(57.5)
    assert soft["discrete_win_rate"] == pytest.approx(62.5)  # win, loss, tie, win
    # an averaged both-order judgement a hair off 0.5 is still a tie
    assert pairwise_stats([0.5 + 1e-15, 1.0], [1, 1], [1, 1], n_bootstrap=0)["n_draws"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lc_equals_raw_win_rate_when_lengths_are_equal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    lengths = rng.integers(20, 200, n)
    prefs = np.concatenate([rng.random(n // 2), rng.choice([0.0, 0.5, 1.0], n - n // 2)])
    s = pairwise_stats(prefs, lengths, lengths, n_bootstrap=50, seed=seed)
    assert s["length_controlled_winrate"] == pytest.approx(s["win_rate"], abs=1e-6)
    # the bootstrap over instructions then estimates the same uncertainty as the closed form
    assert 0.7 < s["lc_standard_error"] / s["standard_error"] < 1.3
    # and a candidate that wins every pair stays at 100
    allwin = pairwise_stats(np.ones(n), lengths, lengths, n_bootstrap=0)
    assert allwin["length_controlled_winrate"] == pytest.approx(100.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_candidate_that_wins_only_by_being_longer_moves_toward_50(seed: int) -> None:
    prefs, cand, base = _simulate(seed, n=400, ability=0.0, length_effect=4.0, extra_length=50)
    s = pairwise_stats(prefs, cand, base, n_bootstrap=50, seed=seed)
    assert s["win_rate"] > 68
    assert abs(s["length_controlled_winrate"] - 50) < 0.5 * abs(s["win_rate"] - 50)
    fit = fit_length_controlled(prefs, cand, base)
    assert fit.length_weight > 1.0  # the GLM found the length effect it removes


def test_a_better_candidate_keeps_its_advantage_without_the_length_bonus() -> None:
    prefs, cand, base = _simulate(3, n=600, ability=1.0, length_effect=3.0, extra_length=60)
    s = pairwise_stats(prefs, cand, base, n_bootstrap=100)
    truth = 100 * _sigmoid(np.array(1.0))  # its win rate at equal lengths: 73.1
    assert s["win_rate"] > truth + 5
    assert abs(s["length_controlled_winrate"] - truth) < 3 * s["lc_standard_error"]


def test_identity_and_symmetry() -> None:
    prefs, cand, base = _simulate(4, n=200, ability=0.5, length_effect=2.0, extra_length=30)
    s = pairwise_stats(prefs, cand, base, n_bootstrap=0)
    swapped = pairwise_stats(1 - prefs, base, cand, n_bootstrap=0)
    assert swapped["length_controlled_winrate"] == pytest.approx(100 - s["length_controlled_winrate"], abs=1e-6)
    same = pairwise_stats(np.full(50, 0.5), cand[:50], cand[:50], n_bootstrap=0)
    assert same["length_controlled_winrate"] == pytest.approx(50.0, abs=1e-9)


def test_lc_standard_error_is_a_seeded_bootstrap() -> None:
    prefs, cand, base = _simulate(5, n=120, ability=0.3, length_effect=2.0, extra_length=40)
    a = pairwise_stats(prefs, cand, base, n_bootstrap=60, seed=7)
    b = pairwise_stats(prefs, cand, base, n_bootstrap=60, seed=7)
    c = pairwise_stats(prefs, cand, base, n_bootstrap=60, seed=8)
    assert a == b
    assert a["lc_standard_error"] != c["lc_standard_error"]
    assert 0 < a["lc_standard_error"] < 15


def _pool(seed: int, n_models: int, n_items: int):
    rng = np.random.default_rng(seed)
    hardness = rng.normal(0, 1.5, n_items)
    pool = []
    for m in range(n_models):
        ability = rng.normal(0, 1)
        base = rng.integers(50, 150, n_items).astype(float)
        cand = np.clip(base + rng.normal(20 * m - 40, 50, n_items), 1, None)
        delta = cand - base
        p = _sigmoid(ability + 1.5 * np.tanh(delta / np.std(delta, ddof=1)) - hardness)
        y = (rng.random(n_items) < p).astype(float)
        pool += [PoolJudgement(f"m{m}", f"x{i}", y[i], cand[i], base[i]) for i in range(n_items)]
    return pool, hardness


def test_instruction_difficulty_from_a_pool_of_models() -> None:
    pool, hardness = _pool(0, n_models=12, n_items=80)
    diff = instruction_difficulty(pool)
    est = np.array([diff[f"x{i}"] for i in range(80)])
    assert abs(est.mean()) < 1e-9
    assert np.corrcoef(est, hardness)[0, 1] > 0.7

    # the candidate on the same instructions: the difficulty term keeps LC == WR at equal lengths
    rng = np.random.default_rng(1)
    ids = [f"x{i}" for i in range(80)]
    prefs = (rng.random(80) < _sigmoid(0.5 - hardness)).astype(float)
    lengths = rng.integers(20, 200, 80)
    s = pairwise_stats(prefs, lengths, lengths, ids, difficulty_pool=pool, n_bootstrap=0)
    assert s["length_controlled_winrate"] == pytest.approx(s["win_rate"], abs=1e-6)
    fit = fit_length_controlled(prefs, lengths, lengths, ids, difficulty=diff)
    assert fit.difficulty_weight < -0.3  # harder instructions lower the candidate's odds


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"preferences\[1\] = nan is not a finite number \(drop failed pairs"):
        pairwise_stats([1.0, float("nan")], [1, 1], [1, 1])
    with pytest.raises(ValueError, match=r"preferences\[0\] = 2.0 is outside \[0, 1\]"):
        pairwise_stats([2.0], [1], [1])
    with pytest.raises(ValueError, match="baseline_lengths has 1 items but preferences has 2"):
        pairwise_stats([1.0, 0.0], [1, 2], [1])
    with pytest.raises(ValueError, match=r"candidate_lengths\[0\] = -3.0 is negative"):
        pairwise_stats([1.0], [-3], [1])
    with pytest.raises(ValueError, match="preferences is empty"):
        pairwise_stats([], [], [])
    with pytest.raises(ValueError, match="instruction difficulty needs instruction_ids"):
        pairwise_stats([1.0], [1], [1], difficulty={"x": 1.0})
    with pytest.raises(ValueError, match="l2 must be a positive number"):
        pairwise_stats([1.0, 0.0], [1, 2], [2, 1], l2=0.0)
