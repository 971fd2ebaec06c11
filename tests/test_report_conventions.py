"""What a new user asked of the report (issue 13 item 4), one test each: an interval on every
ranking metric (tests/test_report.py), the win rates' baseline named, one ``±`` convention in the
report and the terminal, readable loss curves, plot titles that say what is drawn, a caveat on
importances from few trials, terminal tables at 80 columns, per-group scores.

    .venv/bin/pytest tests/test_report_conventions.py -q
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from report_store import GROUPS, PLAN, Store, make_store
from rich.console import Console
from scipy import stats
from typer.testing import CliRunner

from harness.reporting.intervals import CI_LABEL, Z95, pm
from harness.reporting.leaderboard import leaderboard, metric_columns, prompt_standard_error
from harness.reporting.plots import curves_plot, frontier_plot, method_colors, winrate_plot
from harness.reporting.results import results_table
from harness.reporting.tables import leaderboard_table
from harness.reporting.terminal import plan_panels, table_width

WIDTH = 80


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Three seeds per configuration, prompt groups, IPO's loss 300x the others'."""
    return make_store(tmp_path_factory.mktemp("runs") / "three", methods=("dpo", "ipo", "simpo", "kto"),
                      seeds=(0, 1, 2), study="sqlite", groups=GROUPS, baseline="runs/sft-0001/final")


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One seed per configuration: every interval comes from the eval prompts."""
    return make_store(tmp_path_factory.mktemp("runs") / "one", methods=("dpo", "ipo", "orpo"), seeds=(0,),
                      study=None, partial=False)


def _console(width: int = WIDTH) -> Console:
    return Console(width=width, file=io.StringIO(), record=True, color_system=None, highlight=False)


def _lines(text: str) -> list[str]:
    return text.splitlines()


def _frame(store: Store) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    df = results_table(store.root)
    board = leaderboard(df)
    return df, board, method_colors([str(a) for a in df["arm"].dropna()])


# --------------------------------------------------------------------------- 2. the baseline is named


def test_win_rates_name_their_baseline(three: Store, tmp_path: Path) -> None:
    from harness.reporting.report import write_report

    board = leaderboard(three.root)
    assert set(board.loc[board["n_seeds"] > 0, "baseline"]) == {"runs/sft-0001/final"}
    table = leaderboard_table(board)
    assert "baseline runs/sft-0001/final" in table.caption and "win rates vs baseline" not in table.headers
    page = write_report(three.root, tmp_path / "r").read_text()
    assert "<caption>Win rates: how often the judge preferred the method&#39;s answer to the baseline&#39;s, " \
           "baseline runs/sft-0001/final.</caption>" in page
    assert "against baseline runs/sft-0001/final" in page  # the win-rate plot's caption
    md = (tmp_path / "r" / "index.md").read_text()
    assert "baseline runs/sft-0001/final" in md

    # two sweeps judged against different baselines: a column says which row was judged against what
    root = tmp_path / "runs"
    make_store(root / "a", methods=("dpo",), seeds=(0,), n_configs=1, study=None, partial=False, sweep="a",
               baseline="toy-sft")
    make_store(root / "b", methods=("dpo",), seeds=(0,), n_configs=1, study=None, partial=False, sweep="b",
               baseline="Qwen/Qwen2.5-0.5B")
    mixed = leaderboard_table(leaderboard(root))
    col = mixed.headers.index("win rates vs baseline")
    assert sorted(r[col] for r in mixed.rows) == ["Qwen/Qwen2.5-0.5B", "toy-sft"] and mixed.caption == ""


# --------------------------------------------------------------------------- 3. one ± convention


def test_eval_printout_and_report_print_the_same_interval(one: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli.main as main
    from harness.cli.eval import print_result

    board = leaderboard(one.root).set_index("method")
    ev = one.values[board.loc["dpo", "runs"]]  # the best configuration's only run
    console = _console()
    monkeypatch.setattr(main, "console", console)
    print_result(ev)
    out = console.export_text()
    assert f"value {CI_LABEL}" in out and "1.96 x the standard error" in out
    cells = dict(zip(leaderboard_table(leaderboard(one.root)).headers,
                     leaderboard_table(leaderboard(one.root)).rows[list(board.index).index("dpo")]))
    for label in ("gold reward", "KL", "win rate", "LC win rate", "toy_mc acc", "toy_gen exact_match", "RM score"):
        report_cell = cells[label].removesuffix(" †")
        assert " ± " in report_cell and report_cell in out, (label, report_cell)
    # and they are 95% intervals: 1.96 standard errors
    assert pm(ev["kl_mean"], Z95 * ev["kl_stderr"]) in out
    assert pm(ev["gold_reward_mean"], Z95 * ev["gold_reward_std"] / math.sqrt(ev["n_prompts"])) in out
    assert "baseline: toy" in out


def test_sweep_status_prints_a_95_ci_over_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli.sweep as sweep_cli

    status = _status()
    console = _console()
    monkeypatch.setattr(sweep_cli, "console", console)
    sweep_cli.print_status(status)
    out = console.export_text()
    b = status["arms"][0]["best"]
    half = stats.t.ppf(0.975, 2) * b["std"] / math.sqrt(3)  # the sweep records the seeds' sample std
    assert f"best {CI_LABEL}" in out and pm(b["value"], half) in out
    assert f" ± {b['std']:.4g}" not in out  # not the bare standard deviation


# --------------------------------------------------------------------------- 4. loss curves


def test_loss_curves_one_panel_per_method_with_its_own_scale(three: Store) -> None:
    df, board, colors = _frame(three)
    plot = curves_plot(df, board, colors)
    assert plot is not None
    axes = {ax.get_title().split(" (")[0]: ax for ax in plot.fig.axes if ax.get_visible()}
    assert set(axes) == {"dpo", "ipo", "simpo"}  # kto logged too little to have a best configuration
    assert axes["ipo"].get_ylim()[1] > 100  # IPO's loss, ~300x DPO's ...
    for method in ("dpo", "simpo"):  # ... leaves the others readable on their own axes
        low, high = axes[method].get_ylim()
        assert high < 1.0 and high - low < 1.0, method
    for ax in axes.values():
        assert len(ax.get_lines()) == 2 * 3  # training and held-out loss of each of the three seeds
    assert "own y axis" in plot.title


# --------------------------------------------------------------------------- 5. titles say what is drawn


@pytest.mark.parametrize("store_name, says, never", [("three", "over seeds", "prompts"),
                                                     ("one", "over eval prompts", "over seeds")])
def test_plot_titles_match_the_intervals_drawn(store_name: str, says: str, never: str,
                                               request: pytest.FixtureRequest) -> None:
    df, board, colors = _frame(request.getfixturevalue(store_name))
    for plot in (frontier_plot(df, board, colors), winrate_plot(board, colors)):
        assert plot is not None
        title = plot.fig.axes[0].get_title()
        for text in (title, plot.title):
            assert says in text and never not in text, (plot.name, text)


def test_frontier_without_any_interval_says_so(one: Store) -> None:
    df, _, colors = _frame(one)
    df = df.drop(columns=["kl_stderr", "gold_reward_std"])
    plot = frontier_plot(df, leaderboard(df), colors)
    assert plot is not None and "no interval" in plot.fig.axes[0].get_title() and "95%" not in plot.title


# --------------------------------------------------------------------------- 6. importances from few trials


def _study(n: int) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    dist = {"beta": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
            "train.lr": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True)}
    rng = np.random.default_rng(0)
    for _ in range(n):
        beta, lr = float(rng.uniform(0.01, 1.0)), float(rng.uniform(1e-6, 1e-3))
        study.add_trial(optuna.trial.create_trial(params={"beta": beta, "train.lr": lr}, distributions=dist,
                                                  value=50 + 20 * beta + rng.normal(), user_attrs={"method": "dpo"}))
    return study


def test_importances_say_how_many_trials_and_grey_out_few() -> None:
    from matplotlib.colors import to_rgba

    from harness.reporting.studies import MIN_IMPORTANCE_TRIALS, optuna_plots

    colors = method_colors(["dpo"])
    for n in (4, MIN_IMPORTANCE_TRIALS + 5):
        plots, _ = optuna_plots(_study(n), "s", ["dpo"], colors)
        (imp,) = [p for p in plots if p.name.startswith("importance_")]
        ax = imp.fig.axes[0]
        bars = [patch.get_facecolor() for patch in ax.patches]
        assert f"rests on {n} completed trials" in imp.title and f"rests on {n}" in ax.get_title()
        few = n < MIN_IMPORTANCE_TRIALS
        assert ("greyed" in imp.title) == few and ("indicative only" in ax.get_title()) == few
        assert all((bar == to_rgba("#b8b8b8")) == few for bar in bars), (n, bars)
        assert all((bar == to_rgba(colors["dpo"])) != few for bar in bars), (n, bars)


# --------------------------------------------------------------------------- 7. 80 columns


def _check_width(out: str, width: int = WIDTH) -> None:
    long = [line for line in _lines(out) if len(line) > width]
    assert not long, long


def test_panels_fit_and_repeat_the_key_column() -> None:
    headers = ["method", *[f"metric {i}" for i in range(12)]]
    rows = [["simpo", *[f"{50 + i}.1 ± 2.{i} †" for i in range(12)]]]
    panels = plan_panels(headers, rows, WIDTH)
    assert len(panels) > 1 and all(p.columns[0] == 0 for p in panels)
    assert sorted(c for p in panels for c in p.columns[1:]) == list(range(1, 13))  # every column once
    assert all(table_width(p.widths) <= WIDTH for p in panels)
    assert all(w >= len(rows[0][c]) for p in panels for c, w in zip(p.columns, p.widths))  # no cell folds
    assert len(plan_panels(headers, rows, 400)) == 1  # a wide terminal keeps one table


def test_leaderboard_reads_at_80_columns(three: Store) -> None:
    from harness.cli.main import app

    res = CliRunner().invoke(app, ["leaderboard", str(three.root)], env={"COLUMNS": str(WIDTH)})
    assert res.exit_code == 0, res.output
    _check_width(res.output)
    table = leaderboard_table(leaderboard(three.root))
    lines = _lines(res.output)
    for row in table.rows:
        method = row[0]
        for header, cell in zip(table.headers, row):
            if " ± " in cell:  # every interval reads whole, on its method's line
                assert any(method in line and cell in line for line in lines), (method, header, cell)
    assert "gold reward by prompt group" in res.output and "cluster/arithmetic" in res.output


def test_sweep_status_reads_at_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli.sweep as sweep_cli

    console = _console()
    monkeypatch.setattr(sweep_cli, "console", console)
    status = _status()
    sweep_cli.print_status(status)
    out = console.export_text()
    _check_width(out)
    lines = _lines(out)
    for arm in status["arms"]:
        assert sum(line.startswith(f"│ {arm['arm']} ") for line in lines) >= 2  # the key column in every panel
    best = status["arms"][0]["best"]
    assert any("dpo" in line and pm(best["value"], stats.t.ppf(0.975, 2) * best["std"] / math.sqrt(3)) in line
               for line in lines)
    assert any("#3: beta=0.3," in line for line in lines)


def test_eval_result_reads_at_80_columns(three: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli.main as main
    from harness.cli.eval import print_result

    ev = next(iter(three.values.values()))
    console = _console()
    monkeypatch.setattr(main, "console", console)
    print_result(ev)
    out = console.export_text()
    _check_width(out)
    for kind, res in ev["judges"].items():
        cell = pm(res["length_controlled_winrate"], Z95 * res["lc_standard_error"])
        assert any(f"LC win_rate ({kind})" in line and cell in line for line in _lines(out)), kind
    for group in GROUPS:
        assert f"gold_reward [{group}]" in out


def test_reward_model_eval_prints_the_same_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.cli.main as main
    from harness.cli.eval import print_result

    console = _console()
    monkeypatch.setattr(main, "console", console)
    print_result({"rm_accuracy": 0.8125, "rm_accuracy_stderr": 0.04, "rm_margin_mean": 1.2, "rm_n_pairs": 96,
                  "timing_s": {"rm_accuracy": 0.5}})
    out = console.export_text()
    assert pm(0.8125, Z95 * 0.04) in out and "over the 96 held-out pairs" in out
    _check_width(out)


def _status() -> dict[str, Any]:
    """``harness.sweeps.spec.sweep_status``'s shape for a three-seed sweep with long parameter lists."""
    arms = []
    for i, arm in enumerate(("dpo", "ipo", "simpo-long-arm-name")):
        arms.append({
            "arm": arm, "method": arm.split("-")[0], "budget": 8, "exists": True, "complete": 5, "running": 1,
            "waiting": 2, "pruned": 1, "failed": 1, "retried": 1,
            "best": {"number": 3, "value": 61.23456 - i, "std": 2.5, "n_seeds": 3,
                     "params": {"method.beta": 0.3, "train.lr": 1.2345e-4, "train.warmup_ratio": 0.1,
                                "method.label_smoothing": 0.0}},
            "overhead": {"to_first_step_s": 12.5, "train_s": 140.25, "after_last_step_s": 33.0, "eval_s": 30.1,
                         "import_s": 6.0},
            "failures": [{"number": 4, "retried": True, "reason": "OutOfMemoryError: CUDA out of memory " * 3}],
        })
    arms.append({"arm": "kto", "budget": 8, "exists": False})
    return {"sweep": "quickstart", "direction": "maximize", "objective": "length_controlled_winrate",
            "seeds": [0, 1, 2], "arms": arms, "storage": "sqlite:///runs/quickstart/study.db",
            "output_dir": "runs/quickstart"}


# --------------------------------------------------------------------------- 8. per-group scores


def test_per_group_scores_in_the_leaderboard_and_report(three: Store, tmp_path: Path) -> None:
    from harness.reporting.report import write_report

    board = leaderboard(three.root).set_index("method")
    assert board.attrs["groups"] == {"gold_reward": sorted(GROUPS)}
    for method in ("dpo", "ipo", "simpo"):
        cfg = PLAN[method][1].index(float(board.loc[method, "config"].split("=")[1].split(",")[0]))
        evs = [three.values[n] for n, v in three.runs.items() if v[0] == method and v[1] == cfg and n in three.values]
        for g in GROUPS:
            vals = [ev["gold_reward_by_group"][g] for ev in evs]
            col = f"gold_reward_by_group/{g}"
            assert board.loc[method, col] == pytest.approx(np.mean(vals))
            assert board.loc[method, f"{col}_ci95"] == pytest.approx(
                stats.t.ppf(0.975, 2) * np.std(vals, ddof=1) / math.sqrt(3))
    page = write_report(three.root, tmp_path / "r").read_text()
    section = page.split("<h2>Scores by prompt group</h2>")[1].split("</section>")[0]
    assert re.findall(r"<th>([^<]+)</th>", section) == ["method", *sorted(GROUPS)]
    assert re.findall(r"<tr data-key='([^']+)'>", section) == ["simpo", "dpo", "ipo",
                                                              "baseline:runs/sft-0001/final"]
    cell = pm(board.loc["dpo", "gold_reward_by_group/heldout"], board.loc["dpo", "gold_reward_by_group/heldout_ci95"])
    assert cell.replace(" ± ", "&nbsp;±&nbsp;") in section
    assert "| baseline: runs/sft-0001/final | 0.1 | 0.05 | 0 | -0.05 |" in (tmp_path / "r" / "index.md").read_text()


def test_no_groups_no_section(one: Store, tmp_path: Path) -> None:
    from harness.reporting.report import write_report

    assert leaderboard(one.root).attrs["groups"] == {}
    assert "Scores by prompt group" not in write_report(one.root, tmp_path / "r").read_text()


# --------------------------------------------------------------------------- lm-eval filters


def test_lm_eval_metrics_kept_per_filter_pair_with_their_own_stderr() -> None:
    """lm-eval keeps a metric with several filters as ``acc/<filter>`` and its error as
    ``acc_stderr/<filter>``: the error is not a score, and each score finds its own error."""
    df = pd.DataFrame({"lm_eval/gsm/metrics/exact_match/strict": [0.4], "lm_eval/gsm/metrics/exact_match_stderr/strict": [0.02],
                       "lm_eval/gsm/metrics/exact_match/flexible": [0.5],
                       "lm_eval/gsm/metrics/exact_match_stderr/flexible": [0.03],
                       "lm_eval/mc/metrics/acc": [0.7], "lm_eval/mc/metrics/acc_stderr": [0.01],
                       "lm_eval/mc/n_shot": [0], "n_prompts": [64], "rm_accuracy": [0.8],
                       "rm_accuracy_stderr": [0.04]})
    df.attrs["eval_columns"] = list(df.columns)
    assert metric_columns(df) == ["lm_eval/gsm/metrics/exact_match/flexible", "lm_eval/gsm/metrics/exact_match/strict",
                                  "lm_eval/mc/metrics/acc"]
    assert prompt_standard_error(df, "lm_eval/gsm/metrics/exact_match/strict").iloc[0] == 0.02
    assert prompt_standard_error(df, "lm_eval/gsm/metrics/exact_match/flexible").iloc[0] == 0.03
    assert prompt_standard_error(df, "lm_eval/mc/metrics/acc").iloc[0] == 0.01
    assert prompt_standard_error(df, "rm_accuracy").iloc[0] == 0.04  # a reward model's sweep objective
