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

from harness.reporting.intervals import CI_LABEL, NONE, fmt, isnan, pm
from harness.reporting.leaderboard import (
    PROMPTS,
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


#: marks an interval over eval prompts (a configuration with one seed); unmarked ones are over seeds
PROMPT_MARK = "†"
INTERVAL_LEGEND = (
    f"{CI_LABEL}: mean ± half-width of its 95% confidence interval, over seeds (Student t) where a "
    f"configuration has several; {PROMPT_MARK}: one seed, so over the eval prompts instead (1.96 × the "
    "standard error the evaluation recorded: the judge's for win rates, std/√n_prompts for gold reward and "
    "RM score, kl_stderr for KL, lm-eval's stderr). A value without ± has no interval.")


def is_win_rate(metric: str) -> bool:
    return metric.split("/")[-1] in ("length_controlled_winrate", "win_rate")


def baselines(board: pd.DataFrame) -> list[str]:
    """The distinct baselines the board's win rates were judged against (``""``: not recorded)."""
    metrics = [m for m in board.attrs.get("metrics", []) if is_win_rate(m) and m in board.columns]
    if not metrics:
        return []
    judged = board[board[metrics].apply(pd.to_numeric, errors="coerce").notna().any(axis=1)]
    col = judged["baseline"] if "baseline" in judged.columns else pd.Series("", index=judged.index)
    return sorted({"" if isnan(b) else str(b) for b in col})


def baseline_caption(board: pd.DataFrame) -> str:
    """One line naming what every win rate was judged against, when it is one model."""
    found = baselines(board)
    if len(found) != 1:
        return ""
    return (f"Win rates: how often the judge preferred the method's answer to the baseline's, "
            f"baseline {found[0] or '(not recorded)'}.")


def leaderboard_table(board: pd.DataFrame) -> Table:
    """The leaderboard as display cells: one row per method (and sweep/model/data/judge where they vary).

    Every metric cell is ``mean ± 95% CI`` (:data:`INTERVAL_LEGEND`); the baseline of the win rates
    is the caption when all rows share one, else a column.
    """
    metrics: list[str] = board.attrs.get("metrics", [])
    multi = [k for k in ("sweep_name", "model", "data", "judge") if varies(board, k)]
    with_baseline = len(baselines(board)) > 1
    headers = ["method", *multi, "best configuration", "seeds", "trials",
               *(["win rates vs baseline"] if with_baseline else []), *[label(m) for m in metrics]]
    rows, ids = [], []
    for _, r in board.iterrows():
        cells = [arm_label(r), *[str(r[k]) or NONE for k in multi], str(r.get("config") or NONE),
                 str(int(r["n_seeds"])),
                 ", ".join(f"{int(r[s])} {s}" for s in STATUS_ORDER if not isnan(r.get(s)) and r.get(s))]
        if with_baseline:
            cells.append(str(r.get("baseline") or NONE) if not isnan(r.get("baseline")) else NONE)
        for m in metrics:
            mark = f" {PROMPT_MARK}" if r.get(f"{m}_ci_source") == PROMPTS else ""
            cells.append(pm(r.get(m), r.get(f"{m}_ci95"), mark))
        rows.append(cells)
        ids.append(str(r["arm"]))
    return Table(headers, rows, ids, id="leaderboard", caption=baseline_caption(board))


def group_tables(board: pd.DataFrame) -> list[Table]:
    """Per score with per-group means (``gold_reward_by_group``): a method x group table of each
    method's best configuration (mean ± 95% CI over seeds), then one row per baseline."""
    tables = []
    for score, groups in (board.attrs.get("groups") or {}).items():
        if not groups:
            continue
        done = board[board["n_seeds"] > 0]
        rows, ids = [], []
        for _, r in done.iterrows():
            cols = [f"{score}_by_group/{g}" for g in groups]
            rows.append([row_label(r, board).replace("\n", " / "),
                         *[pm(r.get(c), r.get(f"{c}_ci95")) for c in cols]])
            ids.append(str(r["arm"]))
        base_cols = [f"baseline_{score}_by_group/{g}" for g in groups]
        if "baseline" in done.columns and any(c in done.columns for c in base_cols):
            for name, g in done.groupby(done["baseline"].map(lambda b: "" if isnan(b) else str(b)), sort=True):
                vals = [pd.to_numeric(g[c], errors="coerce").mean() if c in g.columns else float("nan")
                        for c in base_cols]
                if any(not isnan(v) for v in vals):
                    rows.append([f"baseline: {name or '(not recorded)'}", *[fmt(v) for v in vals]])
                    ids.append(f"baseline:{name}")
        tables.append(Table(["method", *groups], rows, ids, id=f"{score}_by_group",
                            caption=f"{label(score + '_mean')} by prompt group"))
    return tables


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
