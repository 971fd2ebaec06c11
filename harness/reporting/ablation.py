"""Ablation curves: a metric against a parameter a sweep varies, one line per arm, with intervals.

    harness sweep sweeps/flan-clusters-by-size.yaml
    harness report runs/flan-clusters-by-size     # "Ablation" section: held-out score against data.mixture.clusters

Paper ablations are curves: FLAN's held-out score against the number of training clusters
(Wei et al. 2021, Figure 6) or against model size (Figure 7), LoRA's score against rank.  A
sweep that grids a parameter inside each arm gives such a curve per arm, and the leaderboard
(which keeps each arm's *best* configuration) hides it.  This section draws it, for any sweep:

- **swept parameters** are the spec fields (``model.*``, ``data.*``, ``method.*``, ``peft.*``,
  ``train.*``, ``eval.*``) that take more than one value among the completed runs of one arm
  (fields that differ only between arms are the arms themselves);
- x is the parameter's value when it is numeric; a swept model (``model.name_or_path``, e.g.
  the sizes of a world's bases) is placed at its parameter count (``total_params`` of the runs,
  log scale) and labelled by name; other non-numeric parameters are not drawn (a note says so);
- y is the metric (the sweep's objective, and the other coarse groups of the same per-group
  score: for ``gold_reward_by_group/heldout`` also ``.../heldout_fewshot`` and ``.../seen``,
  groups whose name has no ``/``), the mean over the seeds at each x with its 95% interval
  (:func:`harness.reporting.leaderboard.interval`: over seeds, or over prompts for one seed
  when the evaluation recorded a standard error);
- one line per arm (and per value of any other swept parameter); where the metric has a
  ``baseline_`` counterpart (the run's starting model scored on the same prompts, e.g.
  ``baseline_gold_reward_by_group/heldout``: the untuned base) it is drawn dashed in the same
  colour: FLAN's "without instruction tuning" line.

A table lists every point (mean, interval, seeds, baseline).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.intervals import fmt, isnan, pm
from harness.reporting.leaderboard import choose_objective, interval, keyed, label, numeric
from harness.reporting.plots import Plot, new_figure, png_bytes
from harness.reporting.results import NOT_CONFIG

SPEC_FIELD = re.compile(r"(model|data|method|peft|train|eval)\.")
#: swept models are placed by this summary column
SIZE_COLUMN = "total_params"
MODEL_FIELD = "model.name_or_path"


def swept_parameters(df: pd.DataFrame) -> list[str]:
    """Spec fields with more than one value among the completed runs of some arm, in column order."""
    done = keyed(df[df["status"] == "completed"]) if "status" in df.columns else keyed(df)
    cols = [c for c in done.columns if SPEC_FIELD.match(c) and c not in NOT_CONFIG and c != "method.name"]
    out = []
    for c in cols:
        if any(g[c].map(_key).nunique() > 1 for _, g in done.groupby("arm", sort=True)):
            out.append(c)
    return out


def _key(v: Any) -> str:
    return "" if isnan(v) else str(v)


def metrics_to_plot(df: pd.DataFrame, objective: str | None) -> list[str]:
    """The objective, then the other coarse groups of its per-group score (module docstring)."""
    if objective is None:
        return []
    out = [objective]
    m = re.fullmatch(r"(.+_by_group)/([^/]+)", objective)
    if m:
        siblings = sorted(c for c in df.columns if re.fullmatch(rf"{re.escape(m.group(1))}/[^/]+", c)
                          and c != objective and numeric(df, c).notna().any())
        out += siblings
    return out


def _x_values(rows: pd.DataFrame, param: str) -> tuple[pd.Series | None, str, bool]:
    """(x per run, axis label, log scale) or (None, why, False) when the parameter cannot be placed."""
    x = pd.to_numeric(rows[param], errors="coerce")
    if x.notna().all():
        return x, param, False
    if param == MODEL_FIELD and SIZE_COLUMN in rows.columns and numeric(rows, SIZE_COLUMN).notna().all():
        return numeric(rows, SIZE_COLUMN), "model parameters (total_params), labelled by model", True
    return None, f"{param} is not numeric (values: {', '.join(sorted(rows[param].map(_key).unique())[:6])})", False


def curve_points(df: pd.DataFrame, param: str, metric: str) -> pd.DataFrame:
    """One row per (line, x): mean, 95% half-width, seeds, source, the baseline's mean, the x label."""
    done = keyed(df[df["status"] == "completed"])
    done = done[numeric(done, metric).notna()]
    if done.empty:
        return pd.DataFrame()
    x, _, _ = _x_values(done, param)
    if x is None:
        return pd.DataFrame()
    done = done.assign(_x=x.to_numpy())
    others = [p for p in swept_parameters(df) if p != param]
    base_col = f"baseline_{metric}"
    rows = []
    for keys, g in done.groupby(["arm", *others, param], sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        arm, other_vals, value = keys[0], keys[1:-1], keys[-1]
        line = str(arm) + "".join(f", {p}={_key(v)}" for p, v in zip(others, other_vals))
        mean, half, n, source = interval(g, metric)
        base = numeric(g, base_col).mean() if base_col in g.columns else math.nan
        rows.append({"line": line, "arm": str(arm), "param": param, "value": _key(value),
                     "x": float(g["_x"].mean()), "mean": mean, "ci95": half, "n": n, "source": source,
                     "baseline": base})
    return pd.DataFrame(rows).sort_values(["line", "x"]).reset_index(drop=True)


def ablation_plot(df: pd.DataFrame, param: str, metrics: list[str], colors: dict[str, Any]) -> Plot | None:
    """One panel per metric: mean ± 95% CI against ``param``, one line per arm, baselines dashed."""
    curves = {m: curve_points(df, param, m) for m in metrics}
    curves = {m: c for m, c in curves.items() if not c.empty}
    if not curves:
        return None
    done = df[df["status"] == "completed"]
    _, xlabel, log = _x_values(done[done[param].notna()], param)
    n = len(curves)
    ncols = min(3, n)
    nrows = -(-n // ncols)
    fig, axes = new_figure(max(6.5, 4.3 * ncols), 3.6 * nrows + 0.5, ncols, nrows)
    flat = list(np.asarray(axes).ravel())
    any_base = False
    for ax, (metric, pts) in zip(flat, curves.items()):
        for line, g in pts.groupby("line", sort=True):
            c = colors.get(str(g["arm"].iloc[0]))
            ax.plot(g["x"], g["mean"], color=c, marker="o", ms=4, lw=1.4, label=str(line))
            if g["ci95"].notna().any():
                ax.errorbar(g["x"], g["mean"], yerr=g["ci95"].fillna(0).to_numpy(), color=c, fmt="none", capsize=3)
            if g["baseline"].notna().any():
                any_base = True
                ax.plot(g["x"], g["baseline"], color=c, ls="--", marker="o", mfc="none", ms=4, lw=1.0,
                        label=f"{line}: starting model")
        if log:
            ax.set_xscale("log")
        ticks = pts.drop_duplicates("x").sort_values("x")
        if len(ticks) <= 12:
            ax.set_xticks(ticks["x"].to_numpy(), [_short(v) for v in ticks["value"]] if log else
                          [fmt(v) for v in ticks["x"]], fontsize=8, rotation=20 if log else 0)
            ax.minorticks_off()
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(label(metric), fontsize=9)
        ax.set_title(label(metric), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in flat[n:]:
        ax.set_visible(False)
    flat[0].legend(fontsize=7, loc="best")
    sources = {str(s) for c in curves.values() for s in c["source"]}
    bars = ("95% CI over seeds" if sources == {"seeds"} else "95% CI over seeds where there are several, over "
            "eval prompts for one seed; none where neither is recorded")
    base = "; dashed: the runs' starting model on the same prompts (untrained baseline)" if any_base else ""
    fig.suptitle(f"{', '.join(label(m) for m in curves)} against {param}", fontsize=10)
    caption = (f"Ablation: {', '.join(label(m) for m in curves)} against {param} ({xlabel}); one line per arm, "
               f"mean over seeds at each point, error bars: {bars}{base}.")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", param)
    return Plot(f"ablation_{slug}", caption, png_bytes(fig), f"metric against {param}, one line per arm", fig)


def _short(value: str) -> str:
    return value if len(value) <= 22 else "…" + value[-21:]


def ablation_tables(df: pd.DataFrame, param: str, metrics: list[str]) -> list[Any]:
    from harness.reporting.tables import Table

    tables = []
    for metric in metrics:
        pts = curve_points(df, param, metric)
        if pts.empty:
            continue
        rows = [[r["line"], r["value"], pm(r["mean"], r["ci95"]), str(r["n"]), fmt(r["baseline"]),
                 fmt(r["mean"] - r["baseline"]) if not isnan(r["baseline"]) else "—"] for _, r in pts.iterrows()]
        tables.append(Table(["line", param, label(metric), "seeds", "starting model", "difference"], rows,
                            [f"{r['line']}@{r['value']}" for _, r in pts.iterrows()],
                            id=f"ablation_{param}_{metric}", caption=f"{label(metric)} against {param}"))
    return tables


def ablation_parts(df: pd.DataFrame, colors: dict[str, Any], objective: str | None = None,
                   direction: str | None = None) -> tuple[list[Plot], list[Any], list[str]]:
    """Plots, tables and notes of the report's ablation section (nothing when no sweep varies a parameter)."""
    if df.empty or "status" not in df.columns:
        return [], [], []
    params = swept_parameters(df)
    if not params:
        return [], [], []
    metric, _ = choose_objective(df, objective, direction)
    metrics = metrics_to_plot(df, metric)
    plots, tables, notes = [], [], []
    for p in params:
        done = df[(df["status"] == "completed") & df[p].notna()]
        x, why, _ = _x_values(done, p)
        if x is None:
            notes.append(f"ablation against {p} not drawn: {why}")
            continue
        plot = ablation_plot(df, p, metrics, colors)
        if plot is None:
            notes.append(f"ablation against {p} not drawn: no completed run has {metric}")
            continue
        plots.append(plot)
        tables += ablation_tables(df, p, metrics)
    return plots, tables, notes
