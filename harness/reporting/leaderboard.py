"""Leaderboards: per method, its best configuration by the sweep's objective, with every metric's
mean and 95% interval.  What ``harness leaderboard`` prints and the report's first table.

    harness leaderboard runs/ --model toy
    python -c "from harness.reporting.leaderboard import leaderboard; print(leaderboard('runs/quickstart'))"

Built from :func:`harness.reporting.results.results_table` only.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.intervals import Z95, fmt, isnan, mean_ci
from harness.reporting.results import COST_COLUMNS, NOT_CONFIG, by_group_columns, group_scores, results_table

ALPACA_COLUMNS = ("length_controlled_winrate", "win_rate", "avg_length")
#: win-rate columns and the judge's standard error over prompts that AlpacaEval reports with each
JUDGE_SE = {"length_controlled_winrate": "lc_standard_error", "win_rate": "standard_error"}
#: where a metric's 95% interval comes from (``<metric>_ci_source``)
SEEDS, PROMPTS = "seeds", "prompts"
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


def numeric(df: pd.DataFrame, col: str) -> pd.Series:
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


def _lm_eval_metric(col: str) -> tuple[str, str, str | None] | None:
    """``lm_eval/<task>/metrics/<metric>[/<filter>]`` (or lm-eval's raw ``<metric>,<filter>``) ->
    (task, metric, filter); None for other columns."""
    parts = col.split("/")
    if len(parts) < 3 or parts[0] != "lm_eval":
        return None
    rest = parts[3:] if parts[2] == "metrics" else parts[2:]
    if not rest or len(rest) > 2:
        return None
    metric, _, flt = rest[0].partition(",")
    return parts[1], metric, (rest[1] if len(rest) == 2 else flt or None)


def _is_lm_eval_score(col: str) -> bool:
    parsed = _lm_eval_metric(col)
    if parsed is None or col.split("/")[2] in ("higher_is_better", "filters"):
        return False
    metric = parsed[1]
    # a metric kept per filter (``acc/strict``) has its stderr as ``acc_stderr/strict``: never a score
    return metric not in _LM_EVAL_META and not metric.endswith("_stderr")


def prompt_standard_error(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Per run, the standard error of ``metric`` over the eval prompts, as the evaluation recorded
    it (NaN where it did not): the judge's for win rates, ``<score>_std / sqrt(n_prompts)`` for
    per-prompt scores (gold reward, RM score), ``kl_stderr`` for KL, lm-eval's ``*_stderr``, and
    ``<metric>_stderr`` wherever the evaluation wrote one (``rm_accuracy_stderr``)."""
    nan = pd.Series(np.nan, index=rows.index, dtype=float)
    judged = re.fullmatch(r"(judges/[^/]+/)?(length_controlled_winrate|win_rate)", metric)
    if judged:
        return numeric(rows, f"{judged.group(1) or ''}{JUDGE_SE[judged.group(2)]}")
    if metric == "kl_mean":
        return numeric(rows, "kl_stderr")
    lm = _lm_eval_metric(metric)
    if lm is not None:  # lm-eval names the error of ``acc`` ``acc_stderr`` (filter suffix kept)
        parts = metric.split("/")
        i = 3 if parts[2] == "metrics" else 2
        parts[i] = parts[i].replace(lm[1], f"{lm[1]}_stderr", 1)
        return numeric(rows, "/".join(parts))
    if metric.endswith("_mean") and not metric.startswith(("judges/", "lm_eval/")):
        std = numeric(rows, metric.removesuffix("_mean") + "_std")
        n = numeric(rows, "n_prompts")
        return (std / np.sqrt(n)).where(n > 1)
    if f"{metric}_stderr" in rows.columns:  # e.g. rm_accuracy_stderr of a reward model's held-out pairs
        return numeric(rows, f"{metric}_stderr")
    return nan


def interval(rows: pd.DataFrame, metric: str) -> tuple[float, float, int, str]:
    """(mean, 95% half-width, n, source) of ``metric`` over the runs of one configuration.

    Several runs (seeds) with a value: Student t over them (source ``seeds``).  One run: ``Z95``
    times its standard error over the eval prompts (``prompts``), when the evaluation recorded one.
    Otherwise the half-width is NaN and the source empty.
    """
    values = numeric(rows, metric)
    mean, half, n = mean_ci(values)
    if n >= 2:
        return mean, half, n, SEEDS
    if n == 1:
        se = prompt_standard_error(rows, metric)[np.isfinite(values)].dropna()
        if len(se) and math.isfinite(float(se.iloc[0])):
            return mean, Z95 * float(se.iloc[0]), n, PROMPTS
    return mean, math.nan, n, ""


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
    # a sweep objective is a dotted path into summary.json (eval.gold_reward_by_group.heldout); the
    # results table flattens nested sections with "/" (gold_reward_by_group/heldout)
    for cand in (name, stripped, f"last/{name}", f"last/{stripped}", f"summary/{name}", stripped.replace(".", "/")):
        if cand in df.columns and numeric(df, cand).notna().any():
            return cand
    return None


def first_value(series: pd.Series) -> Any:
    vals = series.dropna()
    return vals.mode().iloc[0] if len(vals) else None


def choose_objective(df: pd.DataFrame, objective: str | None = None,
                     direction: str | None = None) -> tuple[str | None, str]:
    """The metric that ranks configurations of one group, and its direction."""
    if direction is None and "sweep_direction" in df.columns:
        direction = first_value(df["sweep_direction"])
    direction = str(direction or "maximize").lower()
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"objective direction {direction!r}: use maximize or minimize")
    wanted = objective or (first_value(df["sweep_objective"]) if "sweep_objective" in df.columns else None)
    metric = _resolve_metric(df, wanted)
    if metric is None:
        for cand in DEFAULT_OBJECTIVES:
            metric = _resolve_metric(df, cand)
            if metric is not None:
                break
    return metric, direction



# --------------------------------------------------------------------------- leaderboard


def keyed(df: pd.DataFrame) -> pd.DataFrame:
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
        if not isnan(v):
            shown.append(f"{c.removeprefix('method.')}={fmt(v)}")
    return ", ".join(shown)


def status_counts(rows: pd.DataFrame) -> dict[str, int]:
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
    ``runs``, status counts, then per metric ``<metric>``, ``<metric>_ci95`` (half-width of the
    95% interval, see :func:`interval`), ``<metric>_n``, ``<metric>_ci_source`` (``seeds`` /
    ``prompts`` / empty), ``baseline`` (what the win rates were judged against), per-group
    means ``<score>_by_group/<group>`` (+ ``_ci95``, ``_n``; their baseline's as
    ``baseline_<score>_by_group/<group>``), then the mean cost columns.  Methods with no
    completed trial keep a row (its counts, NaN metrics).  Rows are sorted by objective within
    each group.  ``attrs["metrics"]``: the metric columns shown, the ranking metric included;
    ``attrs["groups"]``: ``{score: [group, ...]}``.
    """
    df = root if isinstance(root, pd.DataFrame) else results_table(root)
    metrics = metric_columns(df)
    df = keyed(df)
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
    extra: list[str] = []
    by_group = {score: by_group_columns(df, score) for score in group_scores(df)}
    group_cols = [c for cols in by_group.values() for c in cols.values()]
    group_cols += [c for score in by_group for c in by_group_columns(df, f"baseline_{score}").values()]
    method_keys = ["sweep_name", "model", "data", "arm"]
    for mkey, mrows in df.groupby(method_keys, sort=True, dropna=False):
        counts = status_counts(mrows)
        done = mrows[mrows["status"] == "completed"]
        groups = list(done.groupby("judge", sort=True, dropna=False)) or [(mrows["judge"].iloc[0], done)]
        for judge_name, g in groups:
            row: dict[str, Any] = dict(zip(method_keys, mkey)) | {"judge": judge_name,
                                                                  "method": first_value(mrows["method"]) or ""}
            metric, dirn = choose_objective(mrows if g.empty else g, objective, direction)
            row.update({"objective": metric, "direction": dirn, **counts})
            if g.empty:
                row.update({"config": "", "config_id": None, "n_seeds": 0, "runs": ""})
                rows.append(row)
                continue
            scored = g.assign(_score=numeric(g, metric) if metric else math.nan)
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
            if metric and metric not in metrics:  # the ranking metric is always shown, with its interval
                extra.append(metric)
            for m in [*metrics, *(e for e in dict.fromkeys(extra) if e not in metrics)]:
                row[m], row[f"{m}_ci95"], row[f"{m}_n"], row[f"{m}_ci_source"] = interval(best, m)
            # the model every win rate of this row was judged against (the evaluation's ``baseline``)
            row["baseline"] = ", ".join(sorted({str(b) for b in best["baseline"].dropna() if str(b)})) \
                if "baseline" in best.columns else ""
            for col in group_cols:  # per-group means: no per-group spread is recorded, so seeds only
                mean, half, n = mean_ci(best[col]) if col in best.columns else (math.nan, math.nan, 0)
                row[col], row[f"{col}_ci95"], row[f"{col}_n"] = mean, half, n
            for c in COST_COLUMNS:
                row[c] = numeric(best, c).mean()
            row["sweep_wall_time_s"] = numeric(mrows, "wall_time_s").sum(min_count=1)
            row["sweep_gpu_hours"] = numeric(mrows, "gpu_hours").sum(min_count=1)
            row["objective_value"] = numeric(best, metric).mean() if metric else math.nan
            rows.append(row)
    out = pd.DataFrame(rows)
    if "objective_value" not in out.columns:
        out["objective_value"] = math.nan
    sign = out["direction"].map({"minimize": 1.0, "maximize": -1.0}).fillna(-1.0)
    out["_rank"] = sign * pd.to_numeric(out["objective_value"], errors="coerce")
    out["_empty"] = out["n_seeds"].eq(0)  # methods with nothing finished go below the ranked ones
    out = out.sort_values(["sweep_name", "model", "data", "_empty", "judge", "_rank", "arm"],
                          na_position="last").drop(columns=["_rank", "_empty"])
    out.attrs["metrics"] = [*metrics, *(e for e in dict.fromkeys(extra) if e not in metrics)]
    out.attrs["groups"] = {score: list(cols) for score, cols in by_group.items()}
    return out.reset_index(drop=True)



def label(col: str) -> str:
    m = re.fullmatch(r"lm_eval/([^/]+)/(?:metrics/)?([^,/]+)(?:[,/](.+))?", col)
    if m:  # lm-eval's keys are "<metric>,<filter>"; the default filter is "none"
        task, metric, filt = m.groups()
        return f"{task} {metric}" + (f" ({filt})" if filt and filt != "none" else "")
    m = re.fullmatch(r"judges/([^/]+)/(.+)", col)
    if m:
        return f"{LABELS.get(m.group(2), m.group(2))} ({m.group(1)})"
    return LABELS.get(col, col)



def arm_label(r: pd.Series) -> str:
    arm, method = str(r["arm"]), str(r.get("method") or "")
    return arm if not method or method == arm else f"{arm} ({method})"


def varies(board: pd.DataFrame, key: str) -> bool:
    """More than one value among the rows that have one (methods with no result have none)."""
    vals = board[key].astype(str)
    return vals[vals != ""].nunique() > 1


def row_label(r: pd.Series, board: pd.DataFrame) -> str:
    label = arm_label(r)
    for k in ("sweep_name", "model", "judge"):
        if varies(board, k) and r[k]:
            label += f"\n{r[k]}"
    return label

