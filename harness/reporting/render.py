"""The report: its sections (leaderboard, trials, plots, Optuna, cost, provenance), rendered
through the Jinja2 templates in ``reports/templates/`` into ``index.html`` (self-contained) and
``index.md`` (plots saved beside it), plus ``results.csv``, ``leaderboard.csv`` and ``report.json``.

    harness report runs/quickstart       # (harness.cli.report) -> runs/quickstart/report/index.html
    python -c "from harness.reporting.render import write_report; print(write_report('runs/quickstart'))"
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.reporting.ablation import ablation_parts
from harness.reporting.leaderboard import first_value, keyed, leaderboard
from harness.reporting.plots import Plot, curves_plot, frontier_plot, method_colors, winrate_plot
from harness.reporting.results import results_table
from harness.reporting.studies import load_study, optuna_plots
from harness.reporting.tables import (
    INTERVAL_LEGEND,
    Table,
    cost_table,
    group_tables,
    leaderboard_table,
    provenance_table,
    status_tables,
)
from harness.reporting.templates import render


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)



def _optuna_section(df: pd.DataFrame, root: Path, colors: dict[str, Any]) -> Section:
    sec = Section("Optuna: optimisation history and hyperparameter importances")
    if "study_name" not in df.columns or "sweep_storage" not in df.columns:
        sec.notes.append("no run names an Optuna study (sweep_storage / study_name): skipped")
        return sec
    refs = df.dropna(subset=["study_name", "sweep_storage"])
    if refs.empty:
        sec.notes.append("no run names an Optuna study (sweep_storage / study_name): skipped")
        return sec
    for (storage, name), g in refs.groupby(["sweep_storage", "study_name"], sort=True):
        bases = [root, *root.parents][:4] + [Path(p) for p in g["path"].astype(str).unique()[:3]]
        study, why = load_study(str(storage), str(name), bases)
        if study is None:
            sec.notes.append(f"study {name!r}: {why}; its plots are skipped")
            continue
        methods = sorted(str(m) for m in g["arm"].dropna().unique())
        objective = first_value(g["sweep_objective"]) if "sweep_objective" in g.columns else None
        plots, notes = optuna_plots(study, str(name), methods, colors, objective)
        sec.plots += plots
        sec.notes += notes
    return sec


def build_sections(df: pd.DataFrame, root: Path, objective: str | None = None,
                   direction: str | None = None) -> tuple[list[Section], pd.DataFrame]:
    board = leaderboard(df, objective=objective, direction=direction)
    colors = method_colors([str(m) for m in keyed(df)["arm"]])
    sections: list[Section] = []

    lead = Section("Leaderboard")
    if board.empty:
        lead.notes.append("no runs found")
    else:
        objectives = sorted({f"{o} ({d})" for o, d in zip(board["objective"], board["direction"])
                             if isinstance(o, str)})
        lead.text.append(
            "Each method's best configuration, ranked by the objective "
            f"{', '.join(objectives) or '(none measured: most-seeded configuration shown)'}.")
        lead.text.append(INTERVAL_LEGEND)
        judges = sorted({str(j) for j in board["judge"] if str(j)})
        if len(judges) == 1:
            lead.text.append(f"Judge: {judges[0]}.")
        lead.tables.append(leaderboard_table(board))
    sections.append(lead)
    by_group = group_tables(board) if not board.empty else []
    if by_group:
        sections.append(Section("Scores by prompt group", tables=by_group, text=[
            "The evaluation's per-group means (groups of eval prompts the world defines, e.g. one per task "
            "cluster, held-out vs seen) for each method's best configuration: mean ± 95% CI over seeds. "
            "The evaluation records no per-group spread, so with one seed a group shows its mean alone. "
            "Baseline rows: the model the win rates were judged against, on the same prompts."]))
    sections.append(Section("Trials", tables=status_tables(df)))

    plots = Section("Plots")
    makers: list[tuple[str, Callable[[], Plot | None], str]] = [
        ("reward-vs-KL frontier", lambda: frontier_plot(df, board, colors),
         "no completed run has both kl_mean and gold_reward_mean"),
        ("win rate", lambda: winrate_plot(board, colors), "no win rate (or objective) measured"),
        ("training curves", lambda: curves_plot(df, board, colors), "no training loss logged by the best trials"),
    ]
    for what, maker, why in makers:
        try:
            plot = maker()
        except Exception as e:  # one broken plot must not take the report down
            plot, why = None, f"failed: {type(e).__name__}: {e}"
        if plot is None:
            plots.notes.append(f"{what} plot skipped: {why}")
        else:
            plots.plots.append(plot)
    sections.append(plots)
    try:
        a_plots, a_tables, a_notes = ablation_parts(df, colors, objective, direction)
    except Exception as e:  # one broken plot must not take the report down
        a_plots, a_tables, a_notes = [], [], [f"ablation section failed: {type(e).__name__}: {e}"]
    if a_plots or a_notes:
        sections.append(Section("Ablation: score against each swept parameter", text=[
            "Every completed configuration of every arm (the leaderboard above keeps each arm's best one): the "
            "objective, and the other coarse groups of its per-group score, against each spec field an arm "
            "varies; mean over seeds with 95% intervals; dashed lines are the runs' starting model on the same "
            "prompts."], tables=a_tables, plots=a_plots, notes=a_notes))
    sections.append(_optuna_section(df, root, colors))
    cost = Section("Cost", text=["Best configuration per method: mean per run. Sweep totals: all its trials."])
    if not board.empty:
        cost.tables.append(cost_table(board))
    sections.append(cost)
    sections.append(Section("Provenance", tables=[provenance_table(df)]))
    return sections, board


def write_report(root: str | Path, out_dir: str | Path | None = None, *, objective: str | None = None,
                 direction: str | None = None) -> Path:
    """Write ``index.md``, ``index.html``, ``plots/*.png`` and ``results.csv``; returns the path of ``index.html``.

    ``out_dir`` defaults to ``<root>/report/``.  ``objective``/``direction`` override the
    sweep's own objective for choosing each method's best configuration.
    """
    root = Path(root)
    df = results_table(root)
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections, board = build_sections(df, root.resolve(), objective, direction)
    counts = df["status"].fillna("unknown").value_counts().to_dict() if len(df) else {}
    meta = (f"{len(df)} runs under {root} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'}); "
            f"generated {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by align-harness")
    title = f"align-harness report: {root.resolve().name}"
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    for stale in plots_dir.glob("*.png"):
        stale.unlink()
    for s in sections:
        for p in s.plots:
            (plots_dir / f"{p.name}.png").write_bytes(p.png)
    (out / "index.md").write_text(render("report.md.j2", title=title, meta=meta, sections=sections))
    (out / "index.html").write_text(render("report.html.j2", title=title, meta=meta, sections=sections))
    df.to_csv(out / "results.csv", index=False)
    board.to_csv(out / "leaderboard.csv", index=False)
    (out / "report.json").write_text(json.dumps(
        {"root": str(root), "runs": len(df), "statuses": counts,
         "plots": [p.name for s in sections for p in s.plots],
         "notes": [n for s in sections for n in s.notes]}, indent=2, default=str) + "\n")
    return out / "index.html"
