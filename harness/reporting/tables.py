"""The report's tables as display cells (strings), shared by the HTML/Markdown templates and the
terminal: the leaderboard, trial statuses, cost and provenance.

    harness report runs/quickstart       # renders these through reports/templates/
    harness leaderboard runs/            # prints leaderboard_table() through harness.reporting.terminal
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field

import pandas as pd

from harness.reporting.intervals import NONE, fmt, isnan, pm
from harness.reporting.leaderboard import (
    STATUS_ORDER,
    arm_label,
    keyed,
    label,
    row_label,
    status_counts,
    varies,
)
from harness.reporting.results import COST_COLUMNS


@dataclass
class Table:
    """Headers and rows of strings; ``row_ids`` become ``data-key`` attributes in HTML."""

    headers: list[str]
    rows: list[list[str]]
    row_ids: list[str] = field(default_factory=list)
    id: str = ""
    caption: str = ""


def leaderboard_table(board: pd.DataFrame) -> Table:
    """The leaderboard as display cells: one row per method (and sweep/model/data/judge where they vary)."""
    metrics: list[str] = board.attrs.get("metrics", [])
    multi = [k for k in ("sweep_name", "model", "data", "judge") if varies(board, k)]
    headers = ["method", *multi, "best configuration", "seeds", "trials", *[label(m) for m in metrics]]
    rows, ids = [], []
    for _, r in board.iterrows():
        cells = [arm_label(r), *[str(r[k]) or NONE for k in multi], str(r.get("config") or NONE),
                 str(int(r["n_seeds"])),
                 ", ".join(f"{int(r[s])} {s}" for s in STATUS_ORDER if not isnan(r.get(s)) and r.get(s))]
        for m in metrics:
            mark = " †" if r.get(f"{m}_ci_source") == "judge_se" else ""
            cells.append(pm(r.get(m), r.get(f"{m}_ci95"), mark))
        rows.append(cells)
        ids.append(str(r["arm"]))
    return Table(headers, rows, ids, id="leaderboard")


def status_tables(df: pd.DataFrame) -> list[Table]:
    """Trial counts per method by status, and every unfinished trial with its reason."""
    keyed_df = keyed(df)
    headers = ["method", *STATUS_ORDER]
    rows = []
    for method, g in keyed_df.groupby("arm", sort=True):
        counts = status_counts(g)
        rows.append([str(method) or NONE, *[str(counts[s]) for s in STATUS_ORDER]])
    tables = [Table(headers, rows, id="status")]
    bad = keyed_df[keyed_df["status"].isin(["failed", "interrupted", "pruned", "running", "unknown"])]
    if not bad.empty:
        rows = [[str(r["relpath"]), str(r["arm"]) or NONE, str(r["status"]),
                 (str(r["error"])[:160] if not isnan(r.get("error")) else NONE)]
                for _, r in bad.sort_values(["status", "relpath"]).iterrows()]
        tables.append(Table(["run", "method", "status", "reason"], rows, id="unfinished"))
    return tables


def cost_table(board: pd.DataFrame) -> Table:
    headers = ["method", *[label(c) for c in COST_COLUMNS], "sweep wall time (h)", "sweep GPU-hours"]
    rows = []
    for _, r in board.iterrows():
        sweep_h = r.get("sweep_wall_time_s")
        rows.append([row_label(r, board).replace("\n", " / "), *[fmt(r.get(c)) for c in COST_COLUMNS],
                     fmt(sweep_h / 3600 if not isnan(sweep_h) else math.nan), fmt(r.get("sweep_gpu_hours"))])
    return Table(headers, rows, id="cost")


def _values(df: pd.DataFrame, col: str) -> str:
    if col not in df.columns:
        return NONE
    vals = [str(v) for v in df[col].dropna().unique() if str(v) != ""]
    return ", ".join(sorted(vals)) if vals else NONE


def provenance_table(df: pd.DataFrame) -> Table:
    rows = [["model", _values(df, "model")], ["data", _values(df, "data")], ["judge", _values(df, "judge")]]
    for col in sorted(c for c in df.columns if c.startswith("judge/")):
        rows.append([col, _values(df, col)])
    for col, name in (("env/git_sha", "git sha"), ("env/python", "python"), ("env/platform", "platform")):
        rows.append([name, _values(df, col)])
    for col in sorted(c for c in df.columns if c.startswith("env/hardware/")):
        rows.append([col.removeprefix("env/"), _values(df, col)])
    for col in sorted(c for c in df.columns if c.startswith("env/packages/")):
        rows.append([col.removeprefix("env/packages/"), _values(df, col)])
    dates = pd.concat([df[c].dropna().astype(str) for c in ("env/date", "started_at", "ended_at") if c in df.columns]
                      or [pd.Series(dtype=str)])
    rows.append(["runs dated", f"{dates.min()} … {dates.max()}" if len(dates) else NONE])
    rows.append(["report generated", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")])
    return Table(["what", "value"], rows, id="provenance")
