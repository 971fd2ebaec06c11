"""``harness report`` and ``harness leaderboard``: the run store rendered for people.

    harness report runs/quickstart [--out DIR]            # writes index.md + index.html, prints the html path
    harness leaderboard runs/ [--model M] [--data D] [--judge J]

Registered into the ``harness`` app by ``harness.cli.main`` (``register(app)``); the work is done
by :mod:`harness.reporting.report` from :func:`harness.reporting.results.results_table`.  The
leaderboard is printed at the terminal's width (``COLUMNS`` wins; 220 when piped), in panels of
whole columns (:mod:`harness.reporting.terminal`), every metric as mean ± 95% CI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

_err = Console(stderr=True, soft_wrap=True)  # paths in messages stay on one line


def _fail(msg: str) -> None:
    _err.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(2)


def _check_root(root: Path) -> None:
    if not root.exists():
        _fail(f"run store {str(root)!r} does not exist")
    if not root.is_dir():
        _fail(f"{str(root)!r} is not a directory (give a run store such as runs/ or runs/<sweep>)")


def report(
    root: Path = typer.Argument(..., help="run store: a sweep's directory, runs/, or one run"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output directory (default: <root>/report)"),
    objective: str | None = typer.Option(None, help="metric that picks each method's best configuration"),
    direction: str | None = typer.Option(None, help="maximize or minimize (default: the sweep's, else maximize)"),
) -> None:
    """Write a Markdown + self-contained HTML report (leaderboard, plots, cost, provenance); print its path."""
    from harness.reporting.report import write_report

    _check_root(root)
    if direction is not None and direction not in ("maximize", "minimize"):
        _fail(f"--direction {direction!r}: use maximize or minimize")
    path = write_report(root, out, objective=objective, direction=direction)
    typer.echo(str(path))


def leaderboard(
    root: Path = typer.Argument(..., help="run store to scan (any depth: every sweep and run below it)"),
    model: str | None = typer.Option(None, help="keep models whose name contains this text"),
    data: str | None = typer.Option(None, help="keep datasets whose name contains this text"),
    judge: str | None = typer.Option(None, help="keep judges whose identity contains this text"),
    objective: str | None = typer.Option(None, help="metric that picks each method's best configuration"),
    csv: Path | None = typer.Option(None, help="also write the full leaderboard (every column) to this CSV"),
) -> None:
    """One table across all sweeps and runs: each method's best configuration, every metric mean ± 95% CI."""
    from harness.reporting.report import leaderboard as build
    from harness.reporting.report import leaderboard_table
    from harness.reporting.tables import INTERVAL_LEGEND, group_tables
    from harness.reporting.terminal import print_table

    _check_root(root)
    board = build(root, model=model, data=data, judge=judge, objective=objective)
    if csv is not None:
        board.to_csv(csv, index=False)
    if board.empty:
        _err.print(f"no runs under {root} match the filters")
        raise typer.Exit(1)
    # the terminal's width (COLUMNS wins); piped output has none, so it gets a wide one
    console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 220, highlight=False)
    print_table(console, leaderboard_table(board), title=f"leaderboard: {root}",
                wrap=("best configuration", "trials", "win rates vs baseline"), notes=[INTERVAL_LEGEND])
    for table in group_tables(board):
        console.print()
        print_table(console, table, notes=["per-group means: ± 95% CI over seeds (none recorded per prompt)"])


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("leaderboard")(leaderboard)
