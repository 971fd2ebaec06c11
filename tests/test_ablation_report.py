"""Ablation curves in reports (harness.reporting.ablation): a metric against the parameter a sweep
varies, one line per arm, means and intervals over seeds, the starting model dashed; a swept
model placed at its parameter count.  Synthetic stores (rendering only), with real resolved specs
and summaries shaped like the runner's; every plotted number is recomputed here.

    .venv/bin/pytest tests/test_ablation_report.py -q
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from harness.core.config import load_spec, spec_to_dict
from harness.reporting.ablation import ablation_parts, curve_points, swept_parameters
from harness.reporting.leaderboard import leaderboard
from harness.reporting.plots import method_colors
from harness.reporting.render import write_report
from harness.reporting.results import results_table
from harness.store.runs import Run

SWEEP = "flan-demo"
OBJECTIVE = "eval.gold_reward_by_group.heldout"
PARAMS = {"toy-instruct:small": 340_000, "toy-instruct:medium": 560_000, "toy-instruct:base": 1_200_000}


def heldout(arm: str, clusters: int, seed: int) -> float:
    return 0.01 * clusters + (0.1 if arm == "base" else 0.0) + 0.02 * seed


def add_run(root: Path, arm: str, number: int, seed: int, model: str, overrides: list[str], value: float,
            base_value: float, status: str = "completed") -> None:
    name = f"trial-{number:04d}-seed{seed}"
    spec = load_spec(None, ["method=sft", f"model={model}", "data=flan:toy-instruct", f"seed={seed}", f"name={name}",
                            f"output_dir={root / arm}", *overrides])
    cfg = spec_to_dict(spec)
    cfg["tags"] = {"sweep": SWEEP, "method": "sft", "arm": arm, "trial_number": number,
                   "study_name": f"{SWEEP}/{arm}", "seed_index": seed}
    run = Run.create(root / arm, name, prefix=arm)
    run.write_config(cfg)
    run.set_status(status)
    if status != "completed":
        return
    groups = {"heldout": value, "heldout_fewshot": value / 2, "seen": 0.5 + value, "cluster/sorting": value * 3}
    base = {"heldout": base_value, "heldout_fewshot": 0.0, "seen": 0.5, "cluster/sorting": 0.0}
    run.write_summary({
        "method": "sft", "status": "completed", "steps": 10, "total_params": PARAMS[model],
        # the overall mean falls as clusters rise: ranking by it would pick another configuration
        "eval": {"gold_reward_mean": 1.0 - value, "gold_reward_by_group": groups,
                 "baseline_gold_reward_mean": 0.3, "baseline_gold_reward_by_group": base, "n_prompts": 216},
        "sweep_name": SWEEP, "trial_number": number, "sweep_objective": OBJECTIVE, "sweep_direction": "maximize",
        "sweep_arm": arm, "sweep_seed_index": seed})


@pytest.fixture
def clusters_store(tmp_path) -> Path:
    root = tmp_path / SWEEP
    for arm, model, base_value in (("small", "toy-instruct:small", 0.005), ("base", "toy-instruct:base", 0.007)):
        for number, clusters in enumerate((1, 4, 12)):
            for seed in (0, 1):
                add_run(root, arm, number, seed, model, [f"data.mixture.clusters={clusters}"],
                        heldout(arm, clusters, seed), base_value)
    add_run(root, "small", 9, 0, "toy-instruct:small", ["data.mixture.clusters=8"], 0.0, 0.0, status="failed")
    return root


def test_the_swept_parameter_is_found_and_its_curve_recomputed(clusters_store):
    df = results_table(clusters_store)
    assert swept_parameters(df) == ["data.mixture.clusters"]  # the model differs between arms only
    pts = curve_points(df, "data.mixture.clusters", "gold_reward_by_group/heldout")
    assert list(pts["line"]) == ["base"] * 3 + ["small"] * 3 and list(pts["x"]) == [1, 4, 12] * 2
    t = 12.706204736174698  # Student t, 1 degree of freedom, 97.5%
    for _, r in pts.iterrows():
        vals = [heldout(r["arm"], int(r["x"]), s) for s in (0, 1)]
        assert r["mean"] == pytest.approx(statistics.mean(vals))
        assert r["ci95"] == pytest.approx(t * statistics.stdev(vals) / math.sqrt(2))
        assert r["n"] == 2 and r["source"] == "seeds"
        assert r["baseline"] == pytest.approx(0.007 if r["arm"] == "base" else 0.005)


def test_the_plot_draws_each_arm_against_the_parameter_with_its_baseline(clusters_store):
    df = results_table(clusters_store)
    plots, tables, notes = ablation_parts(df, method_colors(["small", "base"]))
    assert not notes and [p.name for p in plots] == ["ablation_data.mixture.clusters"]
    axes = [ax for ax in plots[0].fig.axes if ax.get_visible()]
    # the objective, then the other coarse groups of the same score; never the per-cluster ones
    assert [ax.get_title() for ax in axes] == ["gold_reward_by_group/heldout", "gold_reward_by_group/heldout_fewshot",
                                               "gold_reward_by_group/seen"]
    lines = {ln.get_label(): ln for ln in axes[0].get_lines() if not ln.get_label().startswith("_")}
    assert set(lines) == {"base", "small", "base: starting model", "small: starting model"}
    assert list(lines["small"].get_xdata()) == [1, 4, 12]
    assert list(lines["small"].get_ydata()) == pytest.approx([statistics.mean(heldout("small", c, s) for s in (0, 1))
                                                              for c in (1, 4, 12)])
    assert lines["base: starting model"].get_linestyle() == "--"
    assert list(lines["base: starting model"].get_ydata()) == pytest.approx([0.007] * 3)
    assert "error bars: 95% CI over seeds" in plots[0].title
    heldout_table = tables[0]
    assert heldout_table.headers[:3] == ["line", "data.mixture.clusters", "gold_reward_by_group/heldout"]
    assert [r[:2] for r in heldout_table.rows] == [["base", "1"], ["base", "4"], ["base", "12"], ["small", "1"],
                                                   ["small", "4"], ["small", "12"]]


def test_the_report_ranks_by_the_sweeps_dotted_objective_and_shows_the_ablation(clusters_store):
    board = leaderboard(clusters_store)
    assert set(board["objective"]) == {"gold_reward_by_group/heldout"}
    best = board.set_index("arm")["config"].to_dict()
    assert all("clusters=12" in best[a] for a in ("small", "base"))  # not the gold_reward_mean winner (1 cluster)
    html = write_report(clusters_store)
    info = json.loads((html.parent / "report.json").read_text())
    assert "ablation_data.mixture.clusters" in info["plots"]
    md = (html.parent / "index.md").read_text()
    assert "## Ablation: score against each swept parameter" in md and "| small | 12 |" in md


def test_a_swept_model_is_placed_at_its_parameter_count(tmp_path):
    root = tmp_path / "size"
    for number, model in enumerate(PARAMS):
        for seed in (0, 1):
            add_run(root, "tuned", number, seed, model, [], 0.01 * number + 0.01 * seed, 0.002 * number)
    df = results_table(root)
    assert swept_parameters(df) == ["model.name_or_path"]
    plots, _, notes = ablation_parts(df, method_colors(["tuned"]))
    ax = plots[0].fig.axes[0]
    assert ax.get_xscale() == "log" and "model parameters" in ax.get_xlabel()
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "tuned")
    assert list(line.get_xdata()) == sorted(PARAMS.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(PARAMS)
    base = next(ln for ln in ax.get_lines() if ln.get_label() == "tuned: starting model")
    assert list(base.get_ydata()) == pytest.approx([0.0, 0.002, 0.004])  # FLAN Figure 7's "untuned" line


def test_a_parameter_that_cannot_be_placed_is_a_note(tmp_path):
    root = tmp_path / "templates"
    for number, templates in enumerate(("zs", "zs+fs")):
        add_run(root, "small", number, 0, "toy-instruct:small", [f"data.templates={templates}"], 0.1 * number, 0.0)
    df = results_table(root)
    plots, _, notes = ablation_parts(df, method_colors(["small"]))
    assert not plots and notes == ["ablation against data.templates not drawn: data.templates is not numeric "
                                   "(values: zs, zs+fs)"]
