"""Statistics, bootstrap and verdicts of ``harness reproduce`` (harness.reproduce.stats) on synthetic stores
whose numbers are chosen here, so every statistic is checked against a hand-computed value.

    .venv/bin/pytest tests/test_reproduce_stats.py -q

What each test guards was checked by breaking it (see the comment on each): the verdict's strict and
non-strict comparisons, selection by the objective, the log in trends, the frontier's anchor and
interpolation, resampling seeds with replacement, one prompt resample shared by every run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from reproduce_store import StoreBuilder

from harness.core.config import build
from harness.reproduce.claims import Agreement, BootstrapSpec, Claim, build_claim
from harness.reproduce.stats import (
    AGREES,
    DISAGREES,
    INCONCLUSIVE,
    NO_DATA,
    Draw,
    compute_claim,
    evaluate,
    load_store,
    verdict,
)


def claim(statistic: dict, agreement: dict | None = None, cid: str = "c") -> Claim:
    return build_claim({"id": cid, "claim": "test", "source": "test", "experiment": "e", "statistic": statistic,
                        "agreement": agreement or {"direction": "greater", "threshold": 0.0}})


def value(store, c: Claim) -> float:
    return evaluate(store, c.statistic, Draw(store, None, False), store.objective, store.direction).value


def const(v: float, n: int = 8) -> list[float]:
    return [v] * n


# --------------------------------------------------------------------------- verdict


@pytest.mark.parametrize("lo, hi, rule, expected", [
    # greater 0: agreement needs the whole interval strictly above; touching 0 from above is not enough
    (0.1, 0.5, {"direction": "greater", "threshold": 0.0}, AGREES),
    (0.0, 0.5, {"direction": "greater", "threshold": 0.0}, INCONCLUSIVE),
    (-0.1, 0.5, {"direction": "greater", "threshold": 0.0}, INCONCLUSIVE),
    (-0.5, 0.0, {"direction": "greater", "threshold": 0.0}, DISAGREES),
    (-0.5, -0.1, {"direction": "greater", "threshold": 0.0}, DISAGREES),
    (0.0, 0.0, {"direction": "greater", "threshold": 0.0}, DISAGREES),
    # at_least -0.1 (non-inferiority): exactly at the margin agrees
    (-0.1, 0.3, {"direction": "at_least", "threshold": -0.1}, AGREES),
    (-0.1000001, 0.3, {"direction": "at_least", "threshold": -0.1}, INCONCLUSIVE),
    (-0.5, -0.1000001, {"direction": "at_least", "threshold": -0.1}, DISAGREES),
    (-0.5, -0.1, {"direction": "at_least", "threshold": -0.1}, INCONCLUSIVE),
    # less / at_most mirror them
    (-0.5, -0.1, {"direction": "less", "threshold": 0.0}, AGREES),
    (-0.5, 0.0, {"direction": "less", "threshold": 0.0}, INCONCLUSIVE),
    (0.0, 0.5, {"direction": "less", "threshold": 0.0}, DISAGREES),
    (0.0, 0.1, {"direction": "at_most", "threshold": 0.1}, AGREES),
    (0.0, 0.1000001, {"direction": "at_most", "threshold": 0.1}, INCONCLUSIVE),
    (0.1, 0.2, {"direction": "at_most", "threshold": 0.1}, INCONCLUSIVE),
    (0.1000001, 0.2, {"direction": "at_most", "threshold": 0.1}, DISAGREES),
    # within [-0.1, 0.1] (equivalence): both ends count as inside
    (-0.1, 0.1, {"direction": "within", "low": -0.1, "high": 0.1}, AGREES),
    (-0.2, 0.05, {"direction": "within", "low": -0.1, "high": 0.1}, INCONCLUSIVE),
    (0.1000001, 0.3, {"direction": "within", "low": -0.1, "high": 0.1}, DISAGREES),
    (-0.3, -0.1000001, {"direction": "within", "low": -0.1, "high": 0.1}, DISAGREES),
    (-0.3, 0.3, {"direction": "within", "low": -0.1, "high": 0.1}, INCONCLUSIVE),
    # no interval is never a verdict
    (math.nan, 0.3, {"direction": "greater", "threshold": 0.0}, INCONCLUSIVE),
    (0.1, math.inf, {"direction": "greater", "threshold": 0.0}, INCONCLUSIVE),
])
def test_verdict_at_the_boundaries(lo, hi, rule, expected):
    # checked: turning `lo > t` into `lo >= t` for greater, or `hi < t` into `hi <= t` for at_least,
    # turns the boundary rows red
    assert verdict(lo, hi, build(Agreement, rule)) == expected


def test_verdict_refuses_a_reversed_interval():
    with pytest.raises(ValueError, match="reversed"):
        verdict(0.5, 0.1, build(Agreement, {"direction": "greater", "threshold": 0.0}))


# --------------------------------------------------------------------------- statistics


@pytest.fixture
def diff_store(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    # arm a: beta=0.1 has mean 1.5 over its seeds, beta=0.5 has 0.5: the objective picks beta=0.1
    for seed, g in ((0, 1.0), (1, 2.0)):
        b.run("a", {"method.beta": 0.1}, seed, gold=const(g), base_gold=const(0.25))
    for seed, g in ((0, 0.0), (1, 1.0)):
        b.run("a", {"method.beta": 0.5}, seed, gold=const(g), base_gold=const(0.25))
    for seed, g in ((0, 0.2), (1, 0.4)):
        b.run("b", {"method.beta": 0.1}, seed, gold=const(g), base_gold=const(0.25))
    b.run("a", {"method.beta": 0.9}, 0, gold=const(9.0), status="failed")  # never counted
    return load_store(tmp_path, {"a": ["method.beta"], "b": ["method.beta"]})


def test_difference_value_and_selection(diff_store):
    # a at its best (beta=0.1: 1.5) minus b (0.3); checked: selecting the worst configuration gives 0.2
    c = claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a"}, "b": {"arm": "b"}})
    assert value(diff_store, c) == pytest.approx(1.2)
    # a declared configuration instead of the best
    c = claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a", "at": {"method.beta": 0.5}},
               "b": {"arm": "b"}})
    assert value(diff_store, c) == pytest.approx(0.2)
    # the same run's two metrics (a policy against its starting model): 1.5 - 0.25
    c = claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a"},
               "b": {"arm": "a", "metric": "baseline_gold_reward_mean"}})
    assert value(diff_store, c) == pytest.approx(1.25)
    c = claim({"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "b"}})
    assert value(diff_store, c) == pytest.approx(0.3)
    assert "runs not completed (left out): 1 failed" in diff_store.notes


def test_where_bounds_filter_configurations(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    for beta, kl, win in ((0.1, 9.0, [1.0] * 8), (0.5, 3.0, [1.0] * 6 + [0.0] * 2), (1.0, 1.0, [0.5] * 8)):
        for seed in (0, 1):
            b.run("rlhf", {"method.beta": beta}, seed, preference=win, scalars={"kl_mean": kl})
    store = load_store(tmp_path, {"rlhf": ["method.beta"]}, objective="win_rate")
    c = claim({"kind": "value", "metric": "win_rate", "a": {"arm": "rlhf", "where": {"kl_mean": {"max": 5.0}}}})
    # the best win rate among KL <= 5 is beta=0.5 (75), not beta=0.1 (100, KL 9)
    assert value(store, c) == pytest.approx(75.0)


@pytest.fixture
def grid_store(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    # r -> mean over seeds: 1 -> 0.5, 2 -> 0.7, 4 -> 0.6  (seeds +-0.1 around it)
    for r, m in ((1, 0.5), (2, 0.7), (4, 0.6)):
        for seed, d in ((0, -0.1), (1, 0.1)):
            b.run("dpo", {"peft.kind": "lora", "peft.lora.r": r}, seed, gold=const(m + d))
    return load_store(tmp_path, {"dpo": ["peft.lora.r"]})


def test_spread_across_a_grid(grid_store):
    c = claim({"kind": "spread", "metric": "gold_reward_mean", "a": {"arm": "dpo"}, "over": "peft.lora.r"},
              {"direction": "at_most", "threshold": 0.1})
    assert value(grid_store, c) == pytest.approx(0.2)


def test_trend_slope_against_log_x(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    for beta, y in ((1.0, 0.0), (10.0, 1.0), (100.0, 2.0)):
        for seed in (0, 1):
            b.run("dpo", {"method.beta": beta, "train.max_steps": 120}, seed, scalars={"kl_mean": y})
        b.run("dpo", {"method.beta": beta, "train.max_steps": 40}, 0, scalars={"kl_mean": 100 - y})
    store = load_store(tmp_path, {"dpo": ["method.beta", "train.max_steps"]}, objective="kl_mean",
                       direction="minimize")
    c = claim({"kind": "trend", "metric": "kl_mean", "over": "method.beta", "log_x": True,
               "a": {"arm": "dpo", "at": {"train.max_steps": 120}}})
    # y = log10(x): slope against ln x is 1/ln 10; checked: without log_x it is the slope against x
    assert value(store, c) == pytest.approx(1 / math.log(10))
    # `max`: the largest value the arm ran, whatever the budget's grid (here 120)
    c = claim({"kind": "trend", "metric": "kl_mean", "over": "method.beta", "log_x": True,
               "a": {"arm": "dpo", "at": {"train.max_steps": "max"}}})
    assert value(store, c) == pytest.approx(1 / math.log(10))
    c = claim({"kind": "trend", "metric": "kl_mean", "over": "method.beta", "a": {"arm": "dpo",
               "at": {"train.max_steps": 120}}})
    assert value(store, c) == pytest.approx(np.polyfit([1, 10, 100], [0, 1, 2], 1)[0])


def test_trend_against_a_metric_of_each_grid_point(tmp_path: Path):
    # a grid of model names has no numeric value: x_value places each at its parameter count
    b = StoreBuilder(tmp_path)
    for name, params, y in (("toy:tiny", 1e3, 0.1), ("toy:small", 1e5, 0.3), ("toy:medium", 1e4, 0.2)):
        for seed in (0, 1):
            b.run("sft", {"model.name_or_path": name}, seed, gold=const(y), scalars={"total_params": params})
    store = load_store(tmp_path, {"sft": ["model.name_or_path"]})
    c = claim({"kind": "trend", "metric": "gold_reward_mean", "over": "model.name_or_path", "log_x": True,
               "x_value": "total_params", "a": {"arm": "sft"}})
    # y = 0.1 * log10(params) - 0.2: slope 0.1 / ln 10 against ln(params); checked: without x_value the
    # names are not numbers and the statistic is undefined
    assert value(store, c) == pytest.approx(0.1 / math.log(10))
    c2 = claim({"kind": "trend", "metric": "gold_reward_mean", "over": "model.name_or_path", "a": {"arm": "sft"}})
    assert not math.isfinite(value(store, c2))


def test_gain_over_the_runs_own_start_is_paired(tmp_path: Path):
    # gain/<m> = m - baseline_<m> of the same run on the same prompt resample: the base scores vary a lot
    # across prompts but the gain is 0.2 on every prompt, so its interval has zero width; checked:
    # subtracting the base's full-data mean instead gives a wide interval
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, 40)
    b = StoreBuilder(tmp_path)
    for seed in (0, 1):
        b.run("a", {"method.beta": 0.1}, seed, gold=list(base + 0.2), base_gold=list(base))
    store = load_store(tmp_path, {"a": ["method.beta"]})
    r = compute_claim(claim({"kind": "value", "metric": "gain/gold_reward_mean", "a": {"arm": "a"}}), store,
                      BootstrapSpec(resamples=300, seed=0))
    assert r.value == pytest.approx(0.2) and r.lo == pytest.approx(0.2) and r.hi == pytest.approx(0.2)
    assert r.sources == ["seeds", "prompts"] and r.verdict == AGREES


def test_a_pipelines_rounds_are_metrics(tmp_path: Path):
    # summary.json's `rounds` list (the results table leaves lists out) read as rounds/<round>/<key>
    from harness.store.runs import Run

    b = StoreBuilder(tmp_path)
    for seed, (h0, h2) in enumerate(((0.0, 0.8), (0.1, 0.9))):
        path = b.run("cai", {"method.beta": 0.1}, seed, method="cai")
        Run(path).update_summary(rounds=[{"round": 0, "harmlessness": h0, "stage": "start"},
                                         {"round": 2, "harmlessness": h2, "eval": {"gold_reward_mean": 0.3},
                                          "revision_harmlessness": [0.1, 0.9]}])
    store = load_store(tmp_path, {"cai": ["method.beta"]})
    c = claim({"kind": "difference", "metric": "rounds/2/harmlessness", "a": {"arm": "cai"},
               "b": {"arm": "cai", "metric": "rounds/0/harmlessness"}})
    assert value(store, c) == pytest.approx(0.8)
    assert value(store, claim({"kind": "value", "metric": "rounds/2/eval/gold_reward_mean",
                               "a": {"arm": "cai"}})) == pytest.approx(0.3)
    r = compute_claim(c, store, BootstrapSpec(resamples=200, seed=0))
    assert r.sources == ["seeds"] and r.lo == pytest.approx(0.8) and r.verdict == AGREES


@pytest.fixture
def frontier_store(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    # points (KL, gold): a = (1, 1.0), (2, 1.5), (4, 1.1); b = (1, 0.5), (3, 1.2); the reference scores 0
    for arm, pts in (("a", ((1, 1.0), (2, 1.5), (4, 1.1))), ("b", ((1, 0.5), (3, 1.2)))):
        for i, (kl, g) in enumerate(pts):
            for seed in (0, 1):
                b.run(arm, {"method.beta": 0.1 * (i + 1)}, seed, gold=const(g), base_gold=const(0.0),
                      scalars={"kl_mean": kl})
    return load_store(tmp_path, {"a": ["method.beta"], "b": ["method.beta"]})


def test_frontier_share_and_area(frontier_store):
    st = {"kind": "frontier", "metric": "gold_reward_mean", "x_metric": "kl_mean", "a": {"arm": "a"},
          "b": {"arm": "b"}}
    # b's front from the reference: (0, 0), (1, 0.5), (3, 1.2), flat after; at x = 1, 2, 4 it is 0.5, 0.85,
    # 1.2: a's points 1.0 and 1.5 lie above, 1.1 below -> 2/3
    assert value(frontier_store, claim({**st, "measure": "share"})) == pytest.approx(2 / 3)
    # mean gap of the fronts over [0, 2]: integral of 0.5x on [0,1] (0.25) + (0.5 + 0.15(x-1)) on [1,2]
    # (0.575), divided by 2; checked: np.mean over a grid instead of the trapezoid gives another number
    assert value(frontier_store, claim({**st, "measure": "area"})) == pytest.approx(0.4125)
    # without the anchor, b's front starts at its own first point (held flat to its left)
    assert value(frontier_store, claim({**st, "measure": "share", "anchor": False})) == pytest.approx(2 / 3)


def test_undefined_statistics_give_no_data(grid_store):
    c = claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "dpo"}, "b": {"arm": "missing"}})
    r = compute_claim(c, grid_store, BootstrapSpec(resamples=20))
    assert r.verdict == NO_DATA and not math.isfinite(r.value)
    c = claim({"kind": "value", "metric": "kl_mean", "a": {"arm": "dpo"}})  # no such metric in these runs
    assert compute_claim(c, grid_store, BootstrapSpec(resamples=20)).verdict == NO_DATA


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_reproducible_and_seeded(diff_store):
    stat = {"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a"}, "b": {"arm": "b"}}
    c = claim(stat)
    r1 = compute_claim(c, diff_store, BootstrapSpec(resamples=300, seed=7))
    r2 = compute_claim(c, diff_store, BootstrapSpec(resamples=300, seed=7))
    r3 = compute_claim(c, diff_store, BootstrapSpec(resamples=300, seed=8))
    assert np.array_equal(r1.replicates, r2.replicates) and (r1.lo, r1.hi) == (r2.lo, r2.hi)
    assert not np.array_equal(r1.replicates, r3.replicates)
    assert r1.numbers() == r2.numbers()
    # another claim id draws another stream from the same seed
    c2 = claim(stat, cid="other")
    assert not np.array_equal(compute_claim(c2, diff_store, BootstrapSpec(resamples=300, seed=7)).replicates,
                              r1.replicates)


def test_seeds_are_resampled_with_replacement(tmp_path: Path):
    # one configuration, five seeds with constant per-prompt values: only the seed level varies.  The
    # bootstrap standard error of a mean of n values drawn with replacement is sqrt((n-1)/n) * s / sqrt(n);
    # checked: drawing without replacement (a permutation) gives a zero-width interval and fails this
    vals = [0.1, 0.4, 0.2, 0.9, 0.5]
    b = StoreBuilder(tmp_path)
    for seed, v in enumerate(vals):
        b.run("a", {"method.beta": 0.1}, seed, gold=const(v))
    store = load_store(tmp_path, {"a": ["method.beta"]})
    r = compute_claim(claim({"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "a"}}), store,
                      BootstrapSpec(resamples=4000, seed=0))
    n, s = len(vals), np.std(vals, ddof=1)
    assert np.std(r.replicates) == pytest.approx(math.sqrt((n - 1) / n) * s / math.sqrt(n), rel=0.08)
    assert r.sources == ["seeds", "prompts"] and min(vals) <= r.lo < r.hi <= max(vals)


def test_prompts_are_resampled_and_shared_across_runs(tmp_path: Path):
    rng = np.random.default_rng(0)
    g = rng.normal(0.0, 1.0, 40)
    b = StoreBuilder(tmp_path)
    b.run("a", {"method.beta": 0.1}, 0, gold=list(g + 0.5))
    b.run("b", {"method.beta": 0.1}, 0, gold=list(g))
    store = load_store(tmp_path, {"a": ["method.beta"], "b": ["method.beta"]})
    # one seed: the interval of a's mean comes from the prompts alone, SE = std / sqrt(P)
    r = compute_claim(claim({"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "a"}}), store,
                      BootstrapSpec(resamples=4000, seed=0))
    assert r.sources == ["prompts"] and any("prompt sampling only" in n for n in r.notes)
    assert np.std(r.replicates) == pytest.approx(np.std(g) / math.sqrt(len(g)), rel=0.08)
    # a - b is 0.5 on every prompt: a resample shared by both runs keeps the difference at exactly 0.5;
    # checked: resampling each run's prompts independently widens this interval to about +-0.4
    r = compute_claim(claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a"},
                             "b": {"arm": "b"}}), store, BootstrapSpec(resamples=500, seed=0))
    assert r.lo == pytest.approx(0.5) and r.hi == pytest.approx(0.5) and r.verdict == AGREES
    # no prompt level when asked not to: nothing left to resample, so no verdict
    r = compute_claim(claim({"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "a"}}), store,
                      BootstrapSpec(resamples=100, seed=0, prompts=False))
    assert r.verdict == INCONCLUSIVE and any("no interval" in n for n in r.notes)


def test_one_seed_and_no_per_prompt_values_is_never_decided(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    b.run("a", {"method.beta": 0.1}, 0, scalars={"kl_mean": 3.0})
    store = load_store(tmp_path, {"a": ["method.beta"]})
    r = compute_claim(claim({"kind": "value", "metric": "kl_mean", "a": {"arm": "a"}},
                            {"direction": "greater", "threshold": 1.0}), store, BootstrapSpec(resamples=50))
    # the point estimate is far above 1, yet a zero-width interval from one number decides nothing
    assert r.value == 3.0 and r.lo == r.hi == 3.0 and r.verdict == INCONCLUSIVE


def test_selection_is_redone_in_every_resample(tmp_path: Path):
    b = StoreBuilder(tmp_path)
    # two configurations whose seeds overlap: resamples sometimes pick the other one
    for beta, vals in ((0.1, (0.0, 1.0, 0.5)), (0.5, (0.4, 0.6, 0.55))):
        for seed, v in enumerate(vals):
            b.run("a", {"method.beta": beta}, seed, gold=const(v))
    store = load_store(tmp_path, {"a": ["method.beta"]})
    r = compute_claim(claim({"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "a"}}), store,
                      BootstrapSpec(resamples=500, seed=0))
    assert r.full.chosen["a"].params["method.beta"] == 0.5
    assert 0.2 < r.stability["a"] < 0.95
    # the interval includes the winner's curse: its upper end is above either configuration's mean
    assert r.hi > 0.55


def test_per_cell_summaries_and_numbers_for_the_report(diff_store):
    r = compute_claim(claim({"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "a"},
                             "b": {"arm": "b"}}), diff_store, BootstrapSpec(resamples=200))
    labels = list(r.cells)
    assert labels[0].startswith("a: a (beta=0.1)") and labels[1].startswith("b: b (beta=0.1)")
    assert r.cells[labels[0]].value == pytest.approx(1.5) and r.cells[labels[0]].n_seeds == 2
    nums = r.numbers()
    assert nums["chosen"] == {"a": "a (beta=0.1)", "b": "b (beta=0.1)"} and nums["verdict"] == r.verdict
