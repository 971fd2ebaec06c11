"""Leaderboards and the sweep report (Markdown + a self-contained HTML page), built from the results table.

    harness report runs/quickstart             # -> runs/quickstart/report/index.html (path printed)
    harness leaderboard runs/ --model toy      # one table across every sweep and run
    python -c "from harness.reporting.report import write_report; print(write_report('runs/quickstart'))"

Everything comes from :func:`harness.reporting.results.results_table` (one row per run or trial),
plus each best trial's ``metrics.jsonl`` for training curves and the Optuna study when the
runs name its storage (``sweep_storage`` / ``study_name``).  The report has:

- a leaderboard: per method, its best configuration by the sweep's objective (the runs'
  ``sweep_objective``; else ``length_controlled_winrate`` when measured, else
  ``gold_reward_mean``) and its metrics as mean ± 95% CI over seeds (Student t); with a single
  seed, win rates show ±1.96 standard errors of the judge over prompts instead (marked †);
- trial status counts per method (completed / pruned / failed / running / interrupted) and
  the errors of failed trials;
- the reward-vs-KL frontier (the setting of Rafailov et al. 2023, DPO, arXiv:2305.18290,
  Figure 2: x = KL to the reference, y = gold reward), a win-rate bar chart with error bars,
  the best trials' training curves, Optuna's optimisation history and hyperparameter
  importances per method;
- cost (wall time, tokens/s, peak memory, trainable parameters, GPU-hours) and provenance
  (model, data, judge, package versions, git sha, hardware, dates).

``index.html`` inlines its plots as base64 PNG and its CSS, and loads nothing else: it
can be mailed or attached as one file.  ``index.md`` shows the same content with the plots
saved next to it in ``plots/``.  Partial stores (running, failed, pruned trials; a missing
study) render with what exists and a note for what does not.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.results import COST_COLUMNS, NOT_CONFIG, results_table
from harness.store.runs import read_jsonl

#: AlpacaEval 2.0's leaderboard columns, LC win rate first; judge standard errors per metric
ALPACA_COLUMNS = ("length_controlled_winrate", "win_rate", "avg_length")
JUDGE_SE = {"length_controlled_winrate": "lc_standard_error", "win_rate": "standard_error"}
TAIL_COLUMNS = ("gold_reward_mean", "kl_mean")
DEFAULT_OBJECTIVES = ("length_controlled_winrate", "gold_reward_mean")
STATUS_ORDER = ("completed", "pruned", "failed", "running", "interrupted", "unknown")
#: a leaderboard row; ``arm`` is a sweep's arm (a method with fixed overrides) or the method
GROUP_KEYS = ("sweep_name", "model", "data", "judge", "arm")
LABELS = {
    "length_controlled_winrate": "LC win rate", "win_rate": "win rate", "discrete_win_rate": "discrete win rate",
    "avg_length": "avg length", "gold_reward_mean": "gold reward", "rm_score_mean": "RM score", "kl_mean": "KL", "wall_time_s": "wall time (s)",
    "tokens_per_s": "tokens/s", "peak_memory_mb": "peak memory (MB)", "trainable_params": "trainable params",
    "gpu_hours": "GPU-hours",
}
_NONE = "—"


# --------------------------------------------------------------------------- statistics


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student t quantile for a mean over ``n`` values (``n - 1`` degrees of freedom)."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, n - 1))


def mean_ci(values: Iterable[Any], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the ``level`` CI, n) over the finite values; half-width NaN below 2 values."""
    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n < 2:
        return mean, math.nan, n
    return mean, t_quantile(n, level) * float(arr.std(ddof=1)) / math.sqrt(n), n


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce")


def _is_number_column(df: pd.DataFrame, col: str) -> bool:
    values = df[col].dropna()
    if values.empty or values.map(lambda v: isinstance(v, bool)).all():
        return False
    return bool(pd.to_numeric(values, errors="coerce").notna().any())


#: lm-eval fields per task that are not scores
_LM_EVAL_META = {"version", "n_shot", "n_samples", "chat_template", "alias", "sample_len", "samples"}


def _is_lm_eval_score(col: str) -> bool:
    parts = col.split("/")
    if len(parts) < 3 or parts[0] != "lm_eval" or parts[2] in ("higher_is_better", "filters"):
        return False
    last = parts[-1].split(",")[0]
    return last not in _LM_EVAL_META and not last.endswith("_stderr")


def _same_values(a: pd.Series, b: pd.Series) -> bool:
    x, y = pd.to_numeric(a, errors="coerce"), pd.to_numeric(b, errors="coerce")
    return bool(((x - y).abs().lt(1e-12) | (x.isna() & y.isna())).all())


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Eval metrics a leaderboard shows, in order: AlpacaEval columns (LC win rate first), the same
    columns of any further judges, lm-eval scores, reward-model score, gold reward, KL.

    Spreads, counts, timings and metadata stay in the results table only.
    """
    evals = [c for c in df.attrs.get("eval_columns", []) if c in df.columns]
    if not evals:  # a table that lost its attrs (e.g. after filtering): fall back on known names
        evals = [c for c in df.columns if c in ALPACA_COLUMNS + TAIL_COLUMNS or c.startswith(("lm_eval/", "judges/"))
                 or c == "rm_score_mean"]
    numeric = {c for c in evals if _is_number_column(df, c)}
    head = [c for c in ALPACA_COLUMNS if c in numeric]
    # ``judges/<kind>/<column>``: every judge's win rates; the main judge's copy repeats the flat columns
    others = []
    for col in ("length_controlled_winrate", "win_rate"):
        for c in sorted(c for c in numeric if re.fullmatch(rf"judges/[^/]+/{col}", c)):
            if not (col in df.columns and _same_values(df[c], df[col])):
                others.append(c)
    lm = sorted(c for c in numeric if _is_lm_eval_score(c))
    rm = [c for c in ("rm_score_mean",) if c in numeric]
    tail = [c for c in TAIL_COLUMNS if c in numeric]
    return head + others + lm + rm + tail


def _resolve_metric(df: pd.DataFrame, name: str | None) -> str | None:
    if not name or not isinstance(name, str):
        return None
    stripped = re.sub(r"^(eval[./])", "", name)
    for cand in (name, stripped, f"last/{name}", f"last/{stripped}", f"summary/{name}"):
        if cand in df.columns and _numeric(df, cand).notna().any():
            return cand
    return None


def _first(series: pd.Series) -> Any:
    vals = series.dropna()
    return vals.mode().iloc[0] if len(vals) else None


def choose_objective(df: pd.DataFrame, objective: str | None = None,
                     direction: str | None = None) -> tuple[str | None, str]:
    """The metric that ranks configurations of one group, and its direction."""
    if direction is None and "sweep_direction" in df.columns:
        direction = _first(df["sweep_direction"])
    direction = str(direction or "maximize").lower()
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"objective direction {direction!r}: use maximize or minimize")
    wanted = objective or (_first(df["sweep_objective"]) if "sweep_objective" in df.columns else None)
    metric = _resolve_metric(df, wanted)
    if metric is None:
        for cand in DEFAULT_OBJECTIVES:
            metric = _resolve_metric(df, cand)
            if metric is not None:
                break
    return metric, direction


# --------------------------------------------------------------------------- leaderboard


def _keys(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for k in GROUP_KEYS:
        if k not in out.columns:
            out[k] = ""
        out[k] = out[k].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    if "method" not in out.columns:
        out["method"] = out["arm"]
    return out


def _hyperparameters(group: pd.DataFrame, best: pd.DataFrame) -> str:
    """The best configuration's values of the spec fields its arm varied (what was searched);
    all method hyperparameters when nothing varied."""
    spec_cols = [c for c in group.columns if re.match(r"(method|model|data|peft|train|eval)\.", c)
                 and c not in NOT_CONFIG and c != "method.name"]
    varied = [c for c in spec_cols if group[c].astype(str).nunique(dropna=False) > 1]
    shown = []
    for c in varied or [c for c in spec_cols if c.startswith("method.")]:
        v = best[c].iloc[0]
        if not _isnan(v):
            shown.append(f"{c.removeprefix('method.')}={_fmt(v)}")
    return ", ".join(shown)


def _status_counts(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows["status"].fillna("unknown").astype(str).value_counts().to_dict()
    return {s: int(counts.get(s, 0)) for s in STATUS_ORDER} | {
        s: int(n) for s, n in counts.items() if s not in STATUS_ORDER}


def _filter(df: pd.DataFrame, column: str, needle: str | None, keep_blank: bool = False) -> pd.DataFrame:
    if not needle:
        return df
    col = df[column].fillna("").astype(str) if column in df.columns else pd.Series("", index=df.index)
    keep = col.str.contains(needle, case=False, regex=False)
    if keep_blank:
        keep |= col.eq("")
    return df[keep]


def leaderboard(root: str | Path | pd.DataFrame, *, model: str | None = None, data: str | None = None,
                judge: str | None = None, objective: str | None = None,
                direction: str | None = None) -> pd.DataFrame:
    """One row per (sweep, model, data, judge, method): its best configuration with mean and 95% CI over seeds.

    ``root`` is a run store (any depth: one sweep, or ``runs/`` with many) or a results table.
    ``model``/``data``/``judge`` keep rows whose value contains that text (case-insensitive).
    Columns: the group keys, ``objective``, ``direction``, ``config``, ``config_id``, ``n_seeds``,
    ``runs``, status counts, then per metric ``<metric>``, ``<metric>_ci95``,
    ``<metric>_n``, then the mean cost columns.  Methods with no completed trial keep a row
    (its counts, NaN metrics).  Rows are sorted by objective within each group.
    """
    df = root if isinstance(root, pd.DataFrame) else results_table(root)
    metrics = metric_columns(df)
    df = _keys(df)
    df = _filter(_filter(df, "model", model), "data", data)
    # a run is judged only once it finishes: unfinished runs stay, so their counts show
    df = _filter(df, "judge", judge, keep_blank=True)
    if judge:
        df = df[~(df["judge"].eq("") & df["status"].eq("completed"))]
        if not df["judge"].ne("").any():  # no judged run matches: unfinished runs alone say nothing
            df = df.iloc[0:0]
    rows: list[dict[str, Any]] = []
    if df.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "objective", "config", "n_seeds", *STATUS_ORDER])
    method_keys = ["sweep_name", "model", "data", "arm"]
    for mkey, mrows in df.groupby(method_keys, sort=True, dropna=False):
        counts = _status_counts(mrows)
        done = mrows[mrows["status"] == "completed"]
        groups = list(done.groupby("judge", sort=True, dropna=False)) or [(mrows["judge"].iloc[0], done)]
        for judge_name, g in groups:
            row: dict[str, Any] = dict(zip(method_keys, mkey)) | {"judge": judge_name,
                                                                  "method": _first(mrows["method"]) or ""}
            metric, dirn = choose_objective(mrows if g.empty else g, objective, direction)
            row.update({"objective": metric, "direction": dirn, **counts})
            if g.empty:
                row.update({"config": "", "config_id": None, "n_seeds": 0, "runs": ""})
                rows.append(row)
                continue
            scored = g.assign(_score=_numeric(g, metric) if metric else math.nan)
            per_cfg = scored.groupby("config_id", dropna=False)["_score"]
            ranking = pd.DataFrame({"score": per_cfg.mean(), "n": per_cfg.size()})
            if ranking["score"].notna().any():
                ranking = ranking.sort_values(["score", "n"], ascending=[dirn == "minimize", False], na_position="last")
            else:
                ranking = ranking.sort_values("n", ascending=False)
            best_id = ranking.index[0]
            best = g[g["config_id"].eq(best_id) | (g["config_id"].isna() & pd.isna(best_id))]
            row.update({"config": _hyperparameters(mrows, best), "config_id": best_id,
                        "n_seeds": int(best["seed"].nunique()) if "seed" in best.columns else len(best),
                        "runs": ", ".join(best["relpath"].astype(str)), "n_configs": int(len(ranking))})
            for m in metrics:
                mean, half, n = mean_ci(best[m])
                se_col = JUDGE_SE.get(m)
                if n == 1 and se_col and se_col in best.columns:
                    se = _numeric(best, se_col).dropna()
                    if len(se):
                        half = 1.96 * float(se.iloc[0])
                        row[f"{m}_ci_source"] = "judge_se"
                row[m], row[f"{m}_ci95"], row[f"{m}_n"] = mean, half, n
            for c in COST_COLUMNS:
                row[c] = _numeric(best, c).mean()
            row["sweep_wall_time_s"] = _numeric(mrows, "wall_time_s").sum(min_count=1)
            row["sweep_gpu_hours"] = _numeric(mrows, "gpu_hours").sum(min_count=1)
            row["objective_value"] = _numeric(best, metric).mean() if metric else math.nan
            rows.append(row)
    out = pd.DataFrame(rows)
    if "objective_value" not in out.columns:
        out["objective_value"] = math.nan
    sign = out["direction"].map({"minimize": 1.0, "maximize": -1.0}).fillna(-1.0)
    out["_rank"] = sign * pd.to_numeric(out["objective_value"], errors="coerce")
    out["_empty"] = out["n_seeds"].eq(0)  # methods with nothing finished go below the ranked ones
    out = out.sort_values(["sweep_name", "model", "data", "_empty", "judge", "_rank", "arm"],
                          na_position="last").drop(columns=["_rank", "_empty"])
    out.attrs["metrics"] = metrics
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- formatting


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v == "")


def _fmt(v: Any) -> str:
    if _isnan(v):
        return _NONE
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if abs(int(v)) >= 10000 else str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1e-3:
            return f"{v:.4g}"
        return f"{v:.2e}"
    return str(v)


def _pm(mean: Any, half: Any, mark: str = "") -> str:
    """``mean ± half`` with both rounded to the interval's second significant digit."""
    if _isnan(mean):
        return _NONE
    if _isnan(half) or not math.isfinite(float(half)):
        return _fmt(mean)
    half = float(half)
    if half == 0:
        return f"{_fmt(mean)} ± 0{mark}"
    digits = max(0, 1 - math.floor(math.log10(abs(half))))
    return f"{float(mean):.{digits}f} ± {half:.{digits}f}{mark}"


def _label(col: str) -> str:
    m = re.fullmatch(r"lm_eval/([^/]+)/(?:metrics/)?([^,/]+)(?:[,/](.+))?", col)
    if m:  # lm-eval's keys are "<metric>,<filter>"; the default filter is "none"
        task, metric, filt = m.groups()
        return f"{task} {metric}" + (f" ({filt})" if filt and filt != "none" else "")
    m = re.fullmatch(r"judges/([^/]+)/(.+)", col)
    if m:
        return f"{LABELS.get(m.group(2), m.group(2))} ({m.group(1)})"
    return LABELS.get(col, col)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    row_ids: list[str] = field(default_factory=list)
    id: str = ""
    caption: str = ""

    def markdown(self) -> str:
        if not self.rows:
            return "_(none)_\n"

        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cell(h) for h in self.headers) + " |",
                 "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        if not self.rows:
            return "<p class='note'>(none)</p>"
        e = html.escape
        head = "".join(f"<th>{e(h)}</th>" for h in self.headers)
        body = []
        for i, r in enumerate(self.rows):
            rid = f" data-key='{e(self.row_ids[i])}'" if i < len(self.row_ids) else ""
            # "mean ± ci" never breaks across lines
            body.append(f"<tr{rid}>" + "".join(f"<td>{e(c).replace(' ± ', '&nbsp;±&nbsp;')}</td>" for c in r)
                        + "</tr>")
        tid = f" id='{e(self.id)}'" if self.id else ""
        cap = f"<caption>{e(self.caption)}</caption>" if self.caption else ""
        return (f"<div class='scroll'><table{tid}>{cap}<thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table></div>")


# --------------------------------------------------------------------------- plots


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    alt: str


def _figure(width: float = 7.0, height: float = 4.2, ncols: int = 1) -> Any:
    # the object-oriented API: no pyplot global state, no GUI backend, safe in worker threads
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(set(methods)))}


def pareto_front(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated by one with lower (or equal) ``x`` and higher ``y``: the reward-vs-KL frontier."""
    order = np.lexsort((-y, x))
    xs, ys, best = [], [], -np.inf
    for i in order:
        if y[i] > best:
            xs.append(x[i])
            ys.append(y[i])
            best = y[i]
    return np.array(xs), np.array(ys)


def frontier_plot(df: pd.DataFrame, board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    done = df[df["status"] == "completed"]
    x, y = _numeric(done, "kl_mean"), _numeric(done, "gold_reward_mean")
    ok = done[x.notna() & y.notna()]
    if ok.empty:
        return None
    fig, ax = _figure()
    for method, g in ok.groupby("arm", sort=True):
        gx, gy = _numeric(g, "kl_mean").to_numpy(), _numeric(g, "gold_reward_mean").to_numpy()
        c = colors.get(str(method))
        ax.scatter(gx, gy, s=22, alpha=0.55, color=c, label=f"{method} ({len(g)} runs)")
        fx, fy = pareto_front(gx, gy)
        if len(fx) > 1:
            ax.plot(fx, fy, color=c, lw=1.2, alpha=0.9)
    for _, r in board.iterrows():
        if not _isnan(r.get("kl_mean")) and not _isnan(r.get("gold_reward_mean")):
            ax.errorbar(r["kl_mean"], r["gold_reward_mean"],
                        xerr=0 if _isnan(r.get("kl_mean_ci95")) else r["kl_mean_ci95"],
                        yerr=0 if _isnan(r.get("gold_reward_mean_ci95")) else r["gold_reward_mean_ci95"],
                        fmt="*", ms=13, mec="black", mew=0.7, color=colors.get(str(r["arm"])), capsize=3)
    ax.set_xlabel("KL(policy ‖ reference), mean over eval prompts")
    ax.set_ylabel("gold reward, mean over eval prompts")
    ax.set_title("Reward vs KL frontier (stars: best configuration, 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return Plot("frontier", "Reward vs KL frontier", _png(fig),
                "scatter of gold reward against KL to the reference, one colour per method")


def winrate_plot(board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    cols = [c for c in ("length_controlled_winrate", "win_rate") if c in board.columns
            and _numeric(board, c).notna().any()]
    value_label = "win rate vs baseline (%)"
    baseline_at: float | None = 50.0  # a candidate as good as the baseline wins half its pairs
    if not cols:  # no judge ran: compare the objective instead
        cols = [c for c in DEFAULT_OBJECTIVES if c in board.columns and _numeric(board, c).notna().any()][:1]
        value_label, baseline_at = (_label(cols[0]), None) if cols else ("", None)
    rows = board[_numeric(board, cols[0]).notna()] if cols else board.iloc[0:0]
    if rows.empty:
        return None
    labels = [_row_label(r, board) for _, r in rows.iterrows()]
    fig, ax = _figure(max(5.0, 1.2 * len(rows) + 2), 4.2)
    width = 0.8 / len(cols)
    xs = np.arange(len(rows))
    for j, c in enumerate(cols):
        vals = _numeric(rows, c).to_numpy()
        err = _numeric(rows, f"{c}_ci95").fillna(0).to_numpy()
        bar_colors = [colors.get(str(m)) for m in rows["arm"]]
        ax.bar(xs + (j - (len(cols) - 1) / 2) * width, vals, width * 0.95, yerr=err, capsize=4,
               color=bar_colors, alpha=1.0 if j == 0 else 0.5, edgecolor="black", lw=0.5, label=_label(c))
    if baseline_at is not None:
        ax.axhline(baseline_at, color="grey", ls="--", lw=1)
    ax.set_xticks(xs, labels, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel(value_label)
    ax.set_title("Best configuration per method (error bars: 95% CI)")
    if len(cols) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return Plot("winrate", "Win rate", _png(fig), "bar chart of win rates per method with error bars")


def _arm_label(r: pd.Series) -> str:
    arm, method = str(r["arm"]), str(r.get("method") or "")
    return arm if not method or method == arm else f"{arm} ({method})"


def _varies(board: pd.DataFrame, key: str) -> bool:
    """More than one value among the rows that have one (methods with no result have none)."""
    vals = board[key].astype(str)
    return vals[vals != ""].nunique() > 1


def _row_label(r: pd.Series, board: pd.DataFrame) -> str:
    label = _arm_label(r)
    for k in ("sweep_name", "model", "judge"):
        if _varies(board, k) and r[k]:
            label += f"\n{r[k]}"
    return label


def curves_plot(df: pd.DataFrame, board: pd.DataFrame, colors: dict[str, Any]) -> Plot | None:
    series: list[tuple[str, str, list[dict[str, Any]]]] = []
    for _, r in board.iterrows():
        for name in filter(None, str(r.get("runs") or "").split(", ")):
            match = df[df["relpath"] == name]
            if not match.empty:
                series.append((str(r["arm"]), name, read_jsonl(Path(match["path"].iloc[0]) / "metrics.jsonl")))
    has_eval = any("eval/loss" in row for _, _, rows in series for row in rows)
    if not any(any("loss" in row for row in rows) for _, _, rows in series):
        return None
    fig, axes = _figure(11 if has_eval else 7, 4.0, 2 if has_eval else 1)
    axes = list(np.atleast_1d(axes))
    seen: set[str] = set()
    for method, _name, rows in series:
        c = colors.get(method)
        for ax, key in zip(axes, ("loss", "eval/loss")):
            pts = [(row["step"], row[key]) for row in rows
                   if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), (int, float))]
            if pts:
                s, v = zip(*pts)
                lab = method if (method not in seen and key == "loss") else None
                ax.plot(s, v, color=c, lw=1.1, alpha=0.8, label=lab, marker="o" if len(pts) < 6 else None, ms=3)
        seen.add(method)
    axes[0].set_title("training loss (best configuration, every seed)")
    if has_eval:
        axes[1].set_title("held-out loss")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (each method's own objective)")
    axes[0].legend(fontsize=8)
    return Plot("curves", "Training curves", _png(fig), "training loss against step for each method's best trials")


# --------------------------------------------------------------------------- optuna


def _storage_candidates(storage: str, bases: Sequence[Path]) -> list[str]:
    """Where a storage URL or path written by a sweep may be, seen from here."""
    if "://" in storage and not storage.startswith("sqlite:///"):
        return [storage]
    path_str = storage.removeprefix("sqlite:///")
    p = Path(path_str).expanduser()
    paths = [p] if p.is_absolute() else [Path.cwd() / p, *(b / p for b in bases), *(b / p.name for b in bases)]
    found = [q.resolve() for q in paths if q.is_file()]
    return [f"{'sqlite:///' if storage.startswith('sqlite:///') else ''}{q}" for q in dict.fromkeys(found)]


def load_study(storage: str, study_name: str, bases: Sequence[Path]) -> tuple[Any | None, str]:
    """The Optuna study, or None and why.  Never creates a storage file that is not there."""
    try:
        import optuna
    except ImportError as e:
        return None, f"optuna is not installed ({e})"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cands = _storage_candidates(storage, bases)
    if not cands:
        return None, f"storage {storage!r} not found"
    errors = []
    for url in cands:
        try:
            if url.startswith("sqlite:///"):
                store: Any = optuna.storages.RDBStorage(url, skip_compatibility_check=True)
            elif "://" in url:
                kw = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgres") else {}
                store = optuna.storages.RDBStorage(url, engine_kwargs=kw, skip_compatibility_check=True)
            else:
                from optuna.storages.journal import JournalFileBackend, JournalStorage

                store = JournalStorage(JournalFileBackend(url))
            return optuna.load_study(study_name=study_name, storage=store), ""
        except Exception as e:  # a report never fails because a study cannot be opened
            errors.append(f"{type(e).__name__}: {e}")
    return None, f"could not open study {study_name!r} at {storage!r} ({'; '.join(errors)[:300]})"


def _trial_method(t: Any) -> str | None:
    for d in (t.user_attrs, t.params, t.system_attrs):
        v = d.get("method")
        if isinstance(v, str):
            return v
    return None


def optuna_plots(study: Any, label: str, methods: Sequence[str], colors: dict[str, Any],
                 objective: str | None = None) -> tuple[list[Plot], list[str]]:
    """Optimisation history and hyperparameter importances per method of one study."""
    import optuna
    from matplotlib.ticker import MaxNLocator

    plots: list[Plot] = []
    notes: list[str] = []
    if len(study.directions) != 1:
        return [], [f"study {label}: multi-objective studies are not plotted"]
    direction = study.direction
    trials = study.get_trials(deepcopy=False)
    tagged = {_trial_method(t) for t in trials} - {None}
    by_method: dict[str, list[Any]] = {}
    if tagged:
        for t in trials:
            by_method.setdefault(_trial_method(t) or "?", []).append(t)
    else:
        by_method[" + ".join(methods) if methods else label] = trials
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    for method, ts in sorted(by_method.items()):
        complete = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        states: dict[str, int] = {}
        for t in ts:
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        if not complete:
            notes.append(f"{method}: no completed trial in study {label} ({state_text or 'no trials'})")
            continue
        c = colors.get(method, "C0")
        fig, ax = _figure(6.5, 3.2)
        nums = np.array([t.number for t in complete])
        vals = np.array([t.value for t in complete], dtype=float)
        ax.scatter(nums, vals, color=c, s=25, label="completed trial", zorder=3)
        best = np.maximum.accumulate(vals) if direction == optuna.study.StudyDirection.MAXIMIZE else np.minimum.accumulate(vals)
        ax.step(nums, best, where="post", color="black", lw=1.2, label="best so far")
        pruned = [t for t in ts if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                       marker="x", color="grey", label="pruned (last report)", zorder=2)
        ax.set_xlabel("trial number")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"objective: {objective}" if objective else "objective")
        ax.set_title(f"{method}: optimisation history ({state_text})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(Plot(f"history_{slug}_{method}", f"{method}: optimisation history", _png(fig),
                          f"objective per trial for {method}"))
        varying = sorted(p for p in {k for t in complete for k in t.params}
                         if p != "method" and len({repr(t.params.get(p)) for t in complete}) > 1)
        if len(complete) < 2 or not varying:
            notes.append(f"{method}: hyperparameter importances need at least 2 completed trials with varying "
                         f"parameters ({len(complete)} completed, varying: {', '.join(varying) or 'none'})")
            continue
        try:
            sub = optuna.create_study(direction=direction)
            sub.add_trials([t for t in complete if all(p in t.params for p in varying)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna flags its importance API as experimental
                imp = optuna.importance.get_param_importances(sub, params=varying)
        except Exception as e:  # too few distinct trials for the evaluator, etc.
            notes.append(f"{method}: hyperparameter importances unavailable ({type(e).__name__}: {e})")
            continue
        fig, ax = _figure(6, 0.5 + 0.45 * len(imp))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color=c)
        ax.set_xlabel("importance (optuna PED-ANOVA, normalised)")
        ax.set_title(f"{method}: hyperparameter importance ({len(complete)} trials)")
        ax.grid(axis="x", alpha=0.3)
        plots.append(Plot(f"importance_{slug}_{method}", f"{method}: hyperparameter importance", _png(fig),
                          f"hyperparameter importances for {method}"))
    return plots, notes


# --------------------------------------------------------------------------- report


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def leaderboard_table(board: pd.DataFrame) -> Table:
    """The leaderboard as display cells: one row per method (and sweep/model/data/judge where they vary)."""
    metrics: list[str] = board.attrs.get("metrics", [])
    multi = [k for k in ("sweep_name", "model", "data", "judge") if _varies(board, k)]
    headers = ["method", *multi, "best configuration", "seeds", "trials", *[_label(m) for m in metrics]]
    rows, ids = [], []
    for _, r in board.iterrows():
        cells = [_arm_label(r), *[str(r[k]) or _NONE for k in multi], str(r.get("config") or _NONE),
                 str(int(r["n_seeds"])),
                 ", ".join(f"{int(r[s])} {s}" for s in STATUS_ORDER if not _isnan(r.get(s)) and r.get(s))]
        for m in metrics:
            mark = " †" if r.get(f"{m}_ci_source") == "judge_se" else ""
            cells.append(_pm(r.get(m), r.get(f"{m}_ci95"), mark))
        rows.append(cells)
        ids.append(str(r["arm"]))
    return Table(headers, rows, ids, id="leaderboard")


def _status_section(df: pd.DataFrame) -> Section:
    sec = Section("Trials")
    keyed = _keys(df)
    headers = ["method", *STATUS_ORDER]
    rows = []
    for method, g in keyed.groupby("arm", sort=True):
        counts = _status_counts(g)
        rows.append([str(method) or _NONE, *[str(counts[s]) for s in STATUS_ORDER]])
    sec.tables.append(Table(headers, rows, id="status"))
    bad = keyed[keyed["status"].isin(["failed", "interrupted", "pruned", "running", "unknown"])]
    if not bad.empty:
        rows = [[str(r["relpath"]), str(r["arm"]) or _NONE, str(r["status"]),
                 (str(r["error"])[:160] if not _isnan(r.get("error")) else _NONE)]
                for _, r in bad.sort_values(["status", "relpath"]).iterrows()]
        sec.tables.append(Table(["run", "method", "status", "reason"], rows, id="unfinished"))
    return sec


def _cost_table(board: pd.DataFrame) -> Table:
    headers = ["method", *[_label(c) for c in COST_COLUMNS], "sweep wall time (h)", "sweep GPU-hours"]
    rows = []
    for _, r in board.iterrows():
        sweep_h = r.get("sweep_wall_time_s")
        rows.append([_row_label(r, board).replace("\n", " / "), *[_fmt(r.get(c)) for c in COST_COLUMNS],
                     _fmt(sweep_h / 3600 if not _isnan(sweep_h) else math.nan), _fmt(r.get("sweep_gpu_hours"))])
    return Table(headers, rows, id="cost")


def _values(df: pd.DataFrame, col: str) -> str:
    if col not in df.columns:
        return _NONE
    vals = [str(v) for v in df[col].dropna().unique() if str(v) != ""]
    return ", ".join(sorted(vals)) if vals else _NONE


def _provenance_table(df: pd.DataFrame) -> Table:
    rows = [["model", _values(df, "model")], ["data", _values(df, "data")], ["judge", _values(df, "judge")]]
    for col in sorted(c for c in df.columns if c.startswith("judge/")):
        rows.append([col, _values(df, col)])
    for col, label in (("env/git_sha", "git sha"), ("env/python", "python"), ("env/platform", "platform")):
        rows.append([label, _values(df, col)])
    for col in sorted(c for c in df.columns if c.startswith("env/hardware/")):
        rows.append([col.removeprefix("env/"), _values(df, col)])
    for col in sorted(c for c in df.columns if c.startswith("env/packages/")):
        rows.append([col.removeprefix("env/packages/"), _values(df, col)])
    dates = pd.concat([df[c].dropna().astype(str) for c in ("env/date", "started_at", "ended_at") if c in df.columns]
                      or [pd.Series(dtype=str)])
    rows.append(["runs dated", f"{dates.min()} … {dates.max()}" if len(dates) else _NONE])
    rows.append(["report generated", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")])
    return Table(["what", "value"], rows, id="provenance")


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
        objective = _first(g["sweep_objective"]) if "sweep_objective" in g.columns else None
        plots, notes = optuna_plots(study, str(name), methods, colors, objective)
        sec.plots += plots
        sec.notes += notes
    return sec


def build_sections(df: pd.DataFrame, root: Path, objective: str | None = None,
                   direction: str | None = None) -> tuple[list[Section], pd.DataFrame]:
    board = leaderboard(df, objective=objective, direction=direction)
    colors = _colors([str(m) for m in _keys(df)["arm"]])
    sections: list[Section] = []

    lead = Section("Leaderboard")
    if board.empty:
        lead.notes.append("no runs found")
    else:
        objectives = sorted({f"{o} ({d})" for o, d in zip(board["objective"], board["direction"])
                             if isinstance(o, str)})
        lead.text.append(
            "Each method's best configuration, ranked by the objective "
            f"{', '.join(objectives) or '(none measured: most-seeded configuration shown)'}; "
            "metrics are mean ± 95% confidence interval over seeds (Student t). "
            "† : one seed, so the interval is ±1.96 standard errors of the judge over prompts.")
        judges = sorted({str(j) for j in board["judge"] if str(j)})
        if len(judges) == 1:
            lead.text.append(f"Judge: {judges[0]}.")
        lead.tables.append(leaderboard_table(board))
    sections.append(lead)
    sections.append(_status_section(df))

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
    sections.append(_optuna_section(df, root, colors))
    cost = Section("Cost", text=["Best configuration per method: mean per run. Sweep totals: all its trials."])
    if not board.empty:
        cost.tables.append(_cost_table(board))
    sections.append(cost)
    sections.append(Section("Provenance", tables=[_provenance_table(df)]))
    return sections, board


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1440px;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8rem 0;font-size:.86rem}
th,td{border:1px solid #d0d0d0;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f2f2f5}tbody tr:nth-child(even){background:#fafafa}
#leaderboard tbody tr:first-child{font-weight:600}
.scroll{overflow-x:auto}.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{margin:.5rem 0;max-width:100%}figcaption{font-size:.85rem;color:#555}
img{max-width:100%;height:auto;border:1px solid #eee}.note{color:#8a5a00;font-size:.88rem}
.meta{color:#666;font-size:.85rem}
"""


def _render_html(title: str, meta: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1><p class='meta'>{e(meta)}</p>"]
    for s in sections:
        parts.append(f"<section><h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        parts += [t.html() for t in s.tables]
        if s.plots:
            parts.append("<div class='figs'>")
        for p in s.plots:
            b64 = base64.b64encode(p.png).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{b64}' alt='{e(p.alt)}' "
                         f"data-plot='{e(p.name)}'><figcaption>{e(p.title)}</figcaption></figure>")
        if s.plots:
            parts.append("</div>")
        parts += [f"<p class='note'>{e(n)}</p>" for n in s.notes]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _render_md(title: str, meta: str, sections: list[Section]) -> str:
    out = [f"# {title}", "", meta, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for line in s.text:
            out += [line, ""]
        for table in s.tables:
            out += [table.markdown()]
        for p in s.plots:
            out += [f"![{p.alt}](plots/{p.name}.png)", "", f"*{p.title}*", ""]
        for n in s.notes:
            out += [f"> {n}", ""]
    return "\n".join(out)


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
    (out / "index.md").write_text(_render_md(title, meta, sections))
    (out / "index.html").write_text(_render_html(title, meta, sections))
    df.to_csv(out / "results.csv", index=False)
    board.to_csv(out / "leaderboard.csv", index=False)
    (out / "report.json").write_text(json.dumps(
        {"root": str(root), "runs": len(df), "statuses": counts,
         "plots": [p.name for s in sections for p in s.plots],
         "notes": [n for s in sections for n in s.notes]}, indent=2, default=str) + "\n")
    return out / "index.html"
