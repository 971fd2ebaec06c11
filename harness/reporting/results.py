"""Every run and trial in a run store as one pandas DataFrame: the only input of reports and leaderboards.

    python -c "from harness.reporting.results import results_table; print(results_table('runs'))"
    harness leaderboard runs/            # (harness.cli.report) built from this table

One row per run directory found under ``root`` (``harness.store.runs.iter_runs``), whatever its
state.  Columns:

- identity: ``run`` (directory name), ``relpath`` (below ``root``; unique), ``path``,
  ``status`` (``status.json``; a run with no status file reads ``unknown``), ``error``,
  ``started_at``, ``ended_at``;
- the spec (``config.yaml``): short columns ``method``, ``model``, ``data``, ``peft``,
  ``seed`` and every field flattened as ``<section>.<key>`` (``method.beta``, ``train.lr``,
  ``peft.r``, ``tags.<k>``, ...); ``config_id`` hashes the spec's model/data/method/peft/
  train/eval sections without the seed, so the seeds of one configuration share it;
- the sweep, when the run belongs to one: ``sweep_name``, ``sweep_arm``, ``trial_number``,
  ``sweep_storage``, ``study_name``, ``sweep_objective``, ``sweep_direction`` (from the
  spec's ``tags`` that ``harness.sweeps.spec`` sets, a ``sweep`` entry, or the summary's keys of
  those names, which win); ``arm`` is the sweep arm, else the method: what leaderboards rank;
- results (``summary.json``): top-level numbers as they are (``final_loss``, ``steps``, ...),
  nested sections flattened with ``/`` (``final_metrics/loss``), and the ``eval`` section
  flattened *without* a prefix (``win_rate``, ``length_controlled_winrate``,
  ``gold_reward_mean``, ``kl_mean``, ``lm_eval/<task>/<metric>``, ``judge/<field>``);
  ``judge`` names the judge so numbers of different judges are never compared; per-group
  means (``gold_reward_by_group`` / ``baseline_gold_reward_by_group`` of a world whose eval
  prompts come in groups) become ``gold_reward_by_group/<group>``, where the group name may
  itself hold ``/`` (``gold_reward_by_group/cluster/arithmetic``): :func:`by_group_columns`
  maps them back to group names;
- training progress (``metrics.jsonl``): ``last_step`` and ``last/<key>``, the last logged
  value of every metric, so running and failed runs show how far they got;
- cost: ``wall_time_s``, ``tokens_per_s``, ``peak_memory_mb``, ``trainable_params``,
  ``gpu_hours`` (always present, NaN when unknown);
- provenance (``env.json``) flattened under ``env/`` (``env/git_sha``, ``env/packages/torch``).

Nothing here raises on partial results: a running, failed or pruned run, a missing or
unreadable file gives a row with what is known and NaN elsewhere (a file that cannot be
read is named in ``error``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from harness.store.runs import Run, iter_runs

#: spec sections flattened as ``<section>.<key>``
SPEC_SECTIONS = ("model", "data", "method", "peft", "train", "eval", "tracking")
#: sections that define a configuration (what a sweep compares); tracking and tags do not
CONFIG_SECTIONS = ("model", "data", "method", "peft", "train", "eval")
#: spec fields that differ between the seeds of one configuration, or do not change results
NOT_CONFIG = {"seed", "name", "output_dir", "train.resume_from", "train.progress", "tracking.mode", "tracking.project",
              "tracking.group", "tracking.job_type"}
SWEEP_KEYS = ("sweep_name", "sweep_arm", "trial_number", "sweep_storage", "study_name", "sweep_objective",
              "sweep_direction")
COST_COLUMNS = ("wall_time_s", "tokens_per_s", "peak_memory_mb", "trainable_params", "gpu_hours")
BASE_COLUMNS = ("run", "relpath", "path", "status", "error", "started_at", "ended_at", "arm", "method", "model",
                "data", "peft", "seed", "config_id", *SWEEP_KEYS, "judge", *COST_COLUMNS)
#: the tags ``harness.sweeps.spec`` puts on every trial's spec
_TAG_KEYS = {"sweep": "sweep_name", "arm": "sweep_arm", "trial_number": "trial_number", "study_name": "study_name",
             "storage": "sweep_storage"}
#: how the sweep's keys may be spelled in a config's ``sweep`` mapping
_SWEEP_ALIASES = {"name": "sweep_name", "sweep": "sweep_name", "sweep_name": "sweep_name", "arm": "sweep_arm",
                  "sweep_arm": "sweep_arm", "trial": "trial_number", "trial_number": "trial_number",
                  "storage": "sweep_storage", "sweep_storage": "sweep_storage", "study": "study_name",
                  "study_name": "study_name", "objective": "sweep_objective", "metric": "sweep_objective",
                  "sweep_objective": "sweep_objective", "direction": "sweep_direction",
                  "sweep_direction": "sweep_direction"}


def _scalar(value: Any) -> Any:
    """A DataFrame cell: numbers and strings as they are, containers as JSON text (hashable, printable)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return json.dumps(value, sort_keys=True, default=str)


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = _scalar(value)
    return out


def judge_identity(judge: Any) -> Any:
    """One printable name for the judge section of an eval summary (``backend:model@prompt_version``)."""
    if judge is None:
        return math.nan
    if isinstance(judge, str):
        return judge
    if isinstance(judge, Mapping):
        parts = [str(judge[k]) for k in ("backend", "kind", "name", "model") if judge.get(k) not in (None, "")]
        name = ":".join(dict.fromkeys(parts))  # a backend named like its model appears once
        version = judge.get("prompt_version") or judge.get("version")
        if version not in (None, "", "none"):
            name = f"{name}@{version}"
        if judge.get("mode") not in (None, ""):
            name = f"{name}[{judge['mode']}]"
        return name or json.dumps(dict(judge), sort_keys=True, default=str)
    return str(judge)


def config_id(spec_columns: Mapping[str, Any]) -> str:
    """Short hash of a configuration: every spec column except those in ``NOT_CONFIG``."""
    items = sorted((k, v) for k, v in spec_columns.items()
                   if k.split(".")[0] in CONFIG_SECTIONS and k not in NOT_CONFIG)
    text = json.dumps(items, default=str, allow_nan=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


#: how the evaluation names per-group means: ``<score>_by_group`` = {group: mean}
BY_GROUP = "_by_group"


def by_group_columns(df: pd.DataFrame, score: str = "gold_reward") -> dict[str, str]:
    """``{group: column}`` of the per-group means of ``score`` (``gold_reward``,
    ``baseline_gold_reward``) in a results table, groups sorted by name."""
    prefix = f"{score}{BY_GROUP}/"
    return {c.removeprefix(prefix): c for c in sorted(df.columns) if c.startswith(prefix)}


def group_scores(df: pd.DataFrame) -> list[str]:
    """The scores that have per-group means in ``df`` (the candidate's, not the baseline's)."""
    found = {c.split(f"{BY_GROUP}/", 1)[0] for c in df.columns if f"{BY_GROUP}/" in c and not c.startswith("summary/")}
    return sorted(s for s in found if not s.startswith("baseline_") and "/" not in s)


def _read(run: Run, what: str, errors: list[str]) -> Any:
    try:
        return getattr(run, what)()
    except Exception as e:  # a torn or hand-edited file must not hide the other runs
        errors.append(f"{what}: {type(e).__name__}: {e}")
        return {} if what != "metrics" else []


def _spec_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    for section in SPEC_SECTIONS:
        value = config.get(section)
        if isinstance(value, Mapping):
            cols.update(flatten(value, section, sep="."))
        elif value is not None:
            cols[section] = _scalar(value)
    for key, value in config.items():
        if key in SPEC_SECTIONS or key == "sweep":
            continue
        if isinstance(value, Mapping):  # e.g. tags: {...}
            cols.update(flatten(value, str(key), sep="."))
        else:
            cols[str(key)] = _scalar(value)
    return cols


def _sweep_columns(config: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, Any]:
    cols: dict[str, Any] = {}
    tags = config.get("tags")
    if isinstance(tags, Mapping):  # harness.sweeps.spec tags every trial's spec, so failed trials are placed too
        for key, col in _TAG_KEYS.items():
            if tags.get(key) is not None and not isinstance(tags[key], Mapping):
                cols[col] = _scalar(tags[key])
    sweep = config.get("sweep")
    if isinstance(sweep, Mapping):
        for key, value in sweep.items():
            if key in _SWEEP_ALIASES:
                cols[_SWEEP_ALIASES[key]] = _scalar(value)
            elif not isinstance(value, Mapping):
                cols[f"sweep.{key}"] = _scalar(value)
    elif sweep is not None:
        cols["sweep_name"] = _scalar(sweep)
    for key in SWEEP_KEYS:  # the summary is written last, by the trial itself: it wins
        if summary.get(key) is not None:
            cols[key] = _scalar(summary[key])
    return cols


def _last_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    last: dict[str, Any] = {}
    step = math.nan
    for row in rows:
        if isinstance(row.get("step"), (int, float)):
            step = row["step"] if math.isnan(step) else max(step, row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                last[f"last/{key}"] = value
    return {"last_step": step, **last}


def _gpu_count(env: Mapping[str, Any]) -> int | None:
    hw = env.get("hardware")
    if not isinstance(hw, Mapping):
        return None
    if isinstance(hw.get("gpus"), list):
        return len(hw["gpus"])
    if hw.get("cuda") is False:
        return 0
    return None


def run_row(run: Run, root: Path) -> tuple[dict[str, Any], set[str]]:
    """One row of the results table, and the names of its eval columns."""
    errors: list[str] = []
    config = _read(run, "config", errors)
    config = config if isinstance(config, Mapping) else {}
    status = _read(run, "live_status", errors)  # a running run whose process is gone reads "stale"
    status = status if isinstance(status, Mapping) else {}
    summary = _read(run, "summary", errors)
    summary = summary if isinstance(summary, Mapping) else {}
    env = _read(run, "env", errors)
    env = env if isinstance(env, Mapping) else {}
    metrics = _read(run, "metrics", errors)

    try:
        rel = str(run.path.relative_to(root))
    except ValueError:
        rel = str(run.path)
    row: dict[str, Any] = {"run": run.name, "path": str(run.path), "relpath": rel,
                           "status": status.get("status") or "unknown",
                           "error": status.get("error") or status.get("reason"),
                           "started_at": status.get("started_at"), "ended_at": status.get("ended_at")}
    spec = _spec_columns(config)
    row.update(spec)
    method = config.get("method")
    row["method"] = method.get("name") if isinstance(method, Mapping) else method
    row["model"] = spec.get("model.name_or_path", spec.get("model"))
    row["data"] = spec.get("data.source", spec.get("data"))
    row["peft"] = spec.get("peft.kind", spec.get("peft"))
    row["config_id"] = config_id(spec) if spec else math.nan
    row.update(_sweep_columns(config, summary))
    # the unit a leaderboard ranks: a sweep's arm (one method with fixed overrides), else the method
    row["arm"] = row.get("sweep_arm") if isinstance(row.get("sweep_arm"), str) else row["method"]

    # summary keys may repeat spec names (``method``, ``data``, ``status``): the spec keeps the short name
    reserved = set(row)
    eval_cols: set[str] = set()
    for key, value in summary.items():
        if key in SWEEP_KEYS:
            continue
        if key == "eval" and isinstance(value, Mapping):
            flat = flatten(value)
            eval_cols.update(flat)
            for name, v in flat.items():
                row[f"summary/eval/{name}" if name in reserved else name] = v
            if "judge" in value:
                row["judge"] = judge_identity(value["judge"])
        elif isinstance(value, Mapping):
            row.update(flatten(value, str(key)))
        elif isinstance(value, list):
            continue  # per-step series live in metrics.jsonl
        else:
            row[f"summary/{key}" if key in reserved else key] = _scalar(value)
    row.update(_last_metrics(metrics))
    if "gpu_hours" not in summary and isinstance(row.get("wall_time_s"), (int, float)):
        n = _gpu_count(env)
        if n is not None:
            row["gpu_hours"] = row["wall_time_s"] / 3600 * n
    row.update(flatten(env, "env"))
    if errors:
        row["error"] = "; ".join(([str(row["error"])] if row.get("error") else []) + errors)
    return row, eval_cols


def results_table(root: str | Path) -> pd.DataFrame:
    """One row per run or trial under ``root`` (see the module docstring for the columns).

    ``df.attrs["eval_columns"]`` lists the columns that came from summaries' ``eval`` sections.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"run store {str(root)!r} does not exist")
    rows: list[dict[str, Any]] = []
    eval_cols: set[str] = set()
    for run in iter_runs(root):
        if "wandb" in run.path.relative_to(root).parts:
            continue  # W&B's own run folders (``<run>/wandb/run-*/files/config.yaml``) are not runs
        row, cols = run_row(run, root)
        rows.append(row)
        eval_cols |= cols
    df = pd.DataFrame(rows)
    # missing base columns appear as NaN, all at once (column-by-column inserts fragment the frame)
    df = df.reindex(columns=[*BASE_COLUMNS, *(c for c in df.columns if c not in BASE_COLUMNS)])
    df = df.astype({c: "float64" for c in COST_COLUMNS if df[c].isna().all()}).copy()  # copy: one block per dtype
    df.attrs["eval_columns"] = sorted(c for c in eval_cols if c in df.columns)
    df.attrs["root"] = str(root)
    return df
