"""Leaderboards and the report, rendered from synthetic sweep stores (no training here)."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_store import GROUPS, JUDGE_ID, PLAN, Store, make_store
from scipy import stats
from typer.testing import CliRunner

from harness.reporting.report import leaderboard, mean_ci, pareto_front, write_report
from harness.reporting.results import results_table

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store(tmp_path_factory.mktemp("runs") / "quickstart", groups=GROUPS)


@pytest.fixture(scope="module")
def report(sweep: Store) -> Path:
    return write_report(sweep.root)


def _by_config(store: Store, method: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for name, ev in store.values.items():
        m, cfg, _seed, _ = store.runs[name]
        if m == method:
            out.setdefault(cfg, []).append(ev)
    return out


def _ci(values: list[float]) -> float:
    a = np.asarray(values)
    return float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def test_mean_ci_and_pareto_front() -> None:
    mean, half, n = mean_ci([1.0, 2.0, 3.0, float("nan"), None])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302652729 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([])[2] == 0
    x, y = np.array([1.0, 2.0, 3.0, 2.5, 0.5]), np.array([1.0, 3.0, 2.0, 4.0, 0.2])
    fx, fy = pareto_front(x, y)
    assert list(fx) == [0.5, 1.0, 2.0, 2.5] and list(fy) == [0.2, 1.0, 3.0, 4.0]


def test_leaderboard_best_configuration_with_ci(sweep: Store) -> None:
    board = leaderboard(sweep.root)
    assert list(board["method"]) == ["simpo", "dpo", "ipo", "orpo", "kto"]  # by LC win rate; nothing done last
    for _, row in board.iterrows():
        method = row["method"]
        if method == "kto":  # every trial failed or is running
            assert row["n_seeds"] == 0 and row["failed"] == 4 and row["running"] == 2 and row["completed"] == 0
            assert math.isnan(row["length_controlled_winrate"])
            continue
        configs = _by_config(sweep, method)
        best = max(configs, key=lambda c: np.mean([ev["length_controlled_winrate"] for ev in configs[c]]))
        evs = configs[best]
        assert row["objective"] == "length_controlled_winrate" and row["n_seeds"] == 3
        assert row["config"].startswith(f"{PLAN[method][0]}=") or f"{PLAN[method][0]}=" in row["config"]
        assert f"{PLAN[method][0]}={PLAN[method][1][best]:g}" in row["config"]
        for col in ("length_controlled_winrate", "win_rate", "gold_reward_mean", "kl_mean"):
            vals = [ev[col] for ev in evs]
            assert row[col] == pytest.approx(np.mean(vals)), col
            assert row[f"{col}_ci95"] == pytest.approx(_ci(vals)), col
            assert row[f"{col}_ci_source"] == "seeds", col
        acc = [ev["lm_eval"]["toy_mc"]["metrics"]["acc"] for ev in evs]
        assert row["lm_eval/toy_mc/metrics/acc"] == pytest.approx(np.mean(acc))
        assert row["lm_eval/toy_mc/metrics/acc_ci95"] == pytest.approx(_ci(acc))
        rm_win = [ev["judges"]["reward_model"]["win_rate"] for ev in evs]
        assert row["judges/reward_model/win_rate"] == pytest.approx(np.mean(rm_win))
        assert row["completed"] == 6
        assert row["wall_time_s"] > 0 and row["sweep_wall_time_s"] > row["wall_time_s"]
    dpo = board.set_index("method").loc["dpo"]
    assert (dpo["pruned"], dpo["failed"], dpo["running"]) == (1, 1, 1)
    assert board.attrs["metrics"] == [
        "length_controlled_winrate", "win_rate", "avg_length",  # AlpacaEval's leaderboard columns, LC first
        "judges/reward_model/length_controlled_winrate", "judges/reward_model/win_rate",  # the second judge
        "lm_eval/toy_gen/metrics/exact_match", "lm_eval/toy_mc/metrics/acc", "rm_score_mean",
        "gold_reward_mean", "kl_mean"]  # the main judge's copy under judges/gold and spreads/counts/timings: not shown


def test_objective_override_changes_the_winner(sweep: Store) -> None:
    table = results_table(sweep.root)
    for objective, direction, pick in (("gold_reward_mean", "maximize", max), ("kl_mean", "minimize", min)):
        board = leaderboard(table, objective=objective, direction=direction).set_index("method")
        for method in ("dpo", "ipo", "simpo", "orpo"):
            configs = _by_config(sweep, method)
            best = pick(configs, key=lambda c, o=objective: np.mean([ev[o] for ev in configs[c]]))
            assert board.loc[method, "objective"] == objective
            assert board.loc[method, objective] == pytest.approx(np.mean([ev[objective] for ev in configs[best]]))
    with pytest.raises(ValueError, match="direction 'up'"):
        leaderboard(table, direction="up")


def test_report_is_self_contained(sweep: Store, report: Path) -> None:
    assert report == sweep.root / "report" / "index.html"
    page = report.read_text()
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//|file:)", page)
    srcs = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(srcs) >= 3 + 2 * 4  # frontier, win rate, curves + history and importance for 4 methods
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    rows = re.findall(r"<tr data-key='([^']+)'>", page.split("id='leaderboard'")[1].split("</table>")[0])
    assert rows == ["simpo", "dpo", "ipo", "orpo", "kto"]
    for text in ("OutOfMemoryError: CUDA out of memory", "NonFiniteLoss", "trial pruned at step 5",
                 JUDGE_ID, "Reward vs KL frontier", "Provenance", "GPU-hours", "LC win rate (reward_model)",
                 "toy_mc acc", "dpo/trial-0002-seed0"):
        assert text in page, text
    assert "± " in page and not re.search(r">\s*nan\s*<", page, re.IGNORECASE)
    md = (report.parent / "index.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert len(images) == len(srcs)
    for img in images:
        assert (report.parent / img).read_bytes().startswith(PNG)
    assert "| simpo |" in md and "| kto |" in md and "| LC win rate |" in md
    info = json.loads((report.parent / "report.json").read_text())
    assert {"frontier", "winrate", "curves"} <= set(info["plots"])
    assert sum(p.startswith("history_") for p in info["plots"]) == 4  # kto has no completed trial
    assert sum(p.startswith("importance_") for p in info["plots"]) == 4
    results = pd.read_csv(report.parent / "results.csv")
    assert len(results) == len(sweep.runs)


def test_single_seed_intervals_come_from_the_eval_prompts(tmp_path: Path) -> None:
    store = make_store(tmp_path / "one", methods=("dpo", "orpo"), seeds=(0,), n_configs=1, study="journal",
                       partial=False)
    board = leaderboard(store.root).set_index("method")
    z = stats.norm.ppf(0.975)
    for method in ("dpo", "orpo"):
        (name,) = [n for n, v in store.runs.items() if v[0] == method]
        ev = store.values[name]
        n = ev["n_prompts"]
        expected = {  # every ranking metric has an interval: the evaluation's standard error over prompts
            "length_controlled_winrate": ev["lc_standard_error"], "win_rate": ev["standard_error"],
            "judges/reward_model/win_rate": ev["judges"]["reward_model"]["standard_error"],
            "judges/reward_model/length_controlled_winrate": ev["judges"]["reward_model"]["lc_standard_error"],
            "gold_reward_mean": ev["gold_reward_std"] / math.sqrt(n), "rm_score_mean": ev["rm_score_std"] / math.sqrt(n),
            "kl_mean": ev["kl_stderr"], "lm_eval/toy_mc/metrics/acc": ev["lm_eval"]["toy_mc"]["metrics"]["acc_stderr"],
            "lm_eval/toy_gen/metrics/exact_match": ev["lm_eval"]["toy_gen"]["metrics"]["exact_match_stderr"],
        }
        for col, se in expected.items():
            assert board.loc[method, f"{col}_ci95"] == pytest.approx(z * se), col
            assert board.loc[method, f"{col}_ci_source"] == "prompts", col
        # avg length ranks nothing and the eval records no spread for it: no interval, and none claimed
        assert math.isnan(board.loc[method, "avg_length_ci95"]) and board.loc[method, "avg_length_ci_source"] == ""
    page = write_report(store.root, tmp_path / "out").read_text()
    assert " †" in page and "over the eval prompts instead" in page
    assert "importances need at least 2 completed trials" in page
    assert page.count("data-plot='history_") == 2 and "data-plot='importance_" not in page


def test_ranking_metric_outside_the_shown_columns_gets_an_interval(sweep: Store) -> None:
    board = leaderboard(results_table(sweep.root), objective="final_loss", direction="minimize")
    assert board.attrs["metrics"][-1] == "final_loss"  # shown, so the ranking can be read
    simpo = board.set_index("method").loc["simpo"]
    assert simpo["final_loss_ci_source"] == "seeds" and simpo["final_loss_n"] == 3


def test_report_with_nothing_finished(tmp_path: Path) -> None:
    store = make_store(tmp_path / "broken", methods=("kto",), seeds=(0, 1), n_configs=1, study=None)
    assert {v[3] for v in store.runs.values()} == {"failed", "running"}
    page = write_report(store.root).read_text()
    assert "reward-vs-KL frontier plot skipped" in page and "no run names an Optuna study" in page
    assert "<img" not in page
    assert re.findall(r"<tr data-key='([^']+)'>", page) == ["kto"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no runs found" in write_report(empty).read_text()


def test_missing_study_is_a_note_and_is_not_created(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", methods=("dpo",), seeds=(0, 1), n_configs=2, study="sqlite", partial=False)
    db = store.root / "study.db"
    db.unlink()
    page = write_report(store.root).read_text()
    assert "not found; its plots are skipped" in page
    assert not db.exists()
    assert "data-plot='frontier'" in page


def test_study_found_relative_to_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path / "rel", methods=("dpo",), seeds=(0,), n_configs=2, study="sqlite", partial=False)
    for name in store.values:  # a sweep that wrote a relative storage URL, reported from elsewhere
        summary = json.loads((store.root / name / "summary.json").read_text())
        summary["sweep_storage"] = "sqlite:///study.db"
        (store.root / name / "summary.json").write_text(json.dumps(summary))
    page = write_report(store.root).read_text()
    assert "data-plot='history_quickstart_dpo_dpo'" in page


def test_leaderboard_across_sweeps_and_filters(tmp_path: Path) -> None:
    make_store(tmp_path / "runs" / "a", methods=("dpo", "ipo"), seeds=(0, 1), n_configs=1, study=None,
               partial=False, sweep="a")
    make_store(tmp_path / "runs" / "b", methods=("dpo",), seeds=(0, 1), n_configs=1, study=None, partial=False,
               sweep="b", overrides=("model.name_or_path=tiny-llama",),
               judge={"backend": "reward_model", "model": "rm-small", "prompt_version": "rm-chat-v1"})
    board = leaderboard(tmp_path / "runs")
    assert sorted(zip(board["sweep_name"], board["method"])) == [("a", "dpo"), ("a", "ipo"), ("b", "dpo")]
    assert set(board["judge"]) == {JUDGE_ID, "reward_model:rm-small@rm-chat-v1"}
    only_b = leaderboard(tmp_path / "runs", model="TINY")
    assert list(zip(only_b["sweep_name"], only_b["method"])) == [("b", "dpo")]
    by_judge = leaderboard(tmp_path / "runs", judge="scorer")
    assert sorted(by_judge["sweep_name"]) == ["a", "a"]
    assert leaderboard(tmp_path / "runs", data="nothing-like-this").empty


def test_cli_report_and_leaderboard(sweep: Store, tmp_path: Path) -> None:
    from harness.cli.main import app

    runner = CliRunner()
    out = tmp_path / "cli-report"
    res = runner.invoke(app, ["report", str(sweep.root), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(out / "index.html") and (out / "index.html").exists()
    res = runner.invoke(app, ["leaderboard", str(sweep.root), "--model", "toy", "--csv", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    for method in ("simpo", "dpo", "ipo", "orpo", "kto"):
        assert method in res.output
    assert "LC win rate" in res.output and "±" in res.output
    assert len(pd.read_csv(tmp_path / "lb.csv")) == 5
    res = runner.invoke(app, ["leaderboard", str(sweep.root), "--judge", "no-such-judge"])
    assert res.exit_code == 1 and "match the filters" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_one_study_for_all_methods_is_split_by_method() -> None:
    import optuna

    from harness.reporting.plots import method_colors
    from harness.reporting.studies import optuna_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"beta": optuna.distributions.FloatDistribution(0.01, 1.0, log=True)}
    for i, (method, beta) in enumerate([("dpo", 0.1), ("ipo", 0.1), ("dpo", 0.3), ("ipo", 0.5), ("dpo", 0.5)]):
        study.add_trial(optuna.trial.create_trial(params={"beta": beta}, distributions=dist, value=50.0 + i,
                                                  user_attrs={"method": method}))
    study.add_trial(optuna.trial.create_trial(params={"beta": 0.2}, distributions=dist,
                                              state=optuna.trial.TrialState.FAIL, user_attrs={"method": "kto"}))
    plots, notes = optuna_plots(study, "sweep", ["dpo", "ipo", "kto"], method_colors(["dpo", "ipo", "kto"]),
                                "length_controlled_winrate")
    assert sorted(p.name for p in plots) == ["history_sweep_dpo", "history_sweep_ipo",
                                             "importance_sweep_dpo", "importance_sweep_ipo"]
    assert all(p.png.startswith(PNG) for p in plots)
    assert notes == ["kto: no completed trial in study sweep (1 fail)"]
