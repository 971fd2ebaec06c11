"""A claim's statistic over a sweep's run store, its two-level bootstrap interval and the verdict.

    harness reproduce simpo             # computes every claim of sweeps/claims/simpo.yaml with this module
    python -c "from harness.reproduce.stats import verdict; print(verdict(0.1, 0.4, ...))"

The store is read through :func:`harness.reporting.results.results_table` (one row per run) and
each run's ``samples.jsonl`` (per-prompt gold rewards, judge preferences, output lengths).
Completed trial runs are grouped into *cells*: one cell per (arm, configuration), holding one
run per seed.  A pipeline's stage runs (``<trial>/stages/<stage>``) hang off their trial's run.

**Statistics** (``statistic.kind`` in a claims file), each on cell means:

- ``difference``: metric of selector ``a`` minus metric of selector ``b``;
- ``value``: metric of selector ``a``;
- ``spread``: max - min of the metric across the values of the grid key ``over`` (at each value,
  the configuration chosen by the objective among those matching ``at``);
- ``trend``: least-squares slope of the metric against ``over`` (or its log) over those values (with
  ``x_value``, against that metric of each value's chosen configuration: ``total_params`` for model names);
- ``frontier``: arm ``a``'s configurations as points (x = ``x_metric``, y = metric) against arm
  ``b``'s Pareto frontier (lower x, higher y), linearly interpolated, flat beyond its last point
  and, with ``anchor``, starting at the reference policy (x = 0, y = ``baseline_<metric>``, what
  the evaluation measured for the starting model); ``share``: the fraction of ``a``'s points
  strictly above ``b``'s frontier; ``area``: the mean vertical gap between ``a``'s and ``b``'s
  frontiers over [0, the smaller of their largest x].

Besides the results table's columns, a metric may be ``rounds/<round>/<key>``: a pipeline trial's
per-round numbers (the ``rounds`` list of its summary, harness.pipelines.engine: a CAI round's
``harmlessness``, a Self-Rewarding round's ``judge_accuracy``), nested sections flattened with ``/``;
and ``gain/<metric>``: a run's metric minus its ``baseline_<metric>`` on the same draw (paired: the same
prompt resample for both), the gain over the run's own starting model.

A selector picks, among its arm's configurations matching ``at`` (grid values) and ``where``
(bounds on a configuration's mean metric), the best by the objective (the sweep's unless the
claim names one).

**Bootstrap.**  Each resample draws, for every cell independently, as many seeds as it has
*with replacement* (level one: training randomness), and one resample of the eval prompts
*shared by every run* (level two: which prompts were asked; every run answers the same prompt
list, so differences stay paired).  A run's value is recomputed on the drawn prompts where
per-prompt values exist (gold reward, RM score, win rate = mean judge preference, and the
length-controlled win rate refitted with the run's own cross-validated penalty), else it is the
run's scalar (KL, margins, reward-model accuracy: seeds only).  Configuration selection is
redone inside every resample, so the interval includes the chance of picking another
configuration.  The interval is the percentile interval of the resampled statistic; the
generator is seeded (``bootstrap.seed`` and the claim's id), so a report regenerates exactly.

**Verdict** (:func:`verdict`): *agrees* when the whole interval satisfies the claim's rule,
*disagrees* when the whole interval violates it, *inconclusive* when it straddles the threshold
(or touches it from the claimed side), or when there is no interval to speak of (one seed and
no per-prompt values, or a statistic undefined in more than 5% of resamples).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reporting.results import flatten, results_table
from harness.reproduce.claims import GAIN, Agreement, BootstrapSpec, Claim, Selector, Statistic
from harness.store.runs import Run, read_jsonl

AGREES, DISAGREES, INCONCLUSIVE, NO_DATA = "agrees", "disagrees", "inconclusive", "no data"
#: metrics recomputed from per-prompt values in samples.jsonl: metric -> (samples field, scale)
PER_PROMPT = {
    "gold_reward_mean": ("gold_reward", 1.0),
    "baseline_gold_reward_mean": ("baseline_gold_reward", 1.0),
    "rm_score_mean": ("rm_score", 1.0),
    "baseline_rm_score_mean": ("baseline_rm_score", 1.0),
    "win_rate": ("preference", 100.0),
    "length_controlled_winrate": ("preference", 100.0),
}
#: a statistic undefined in more of the resamples than this gives no verdict
MAX_UNDEFINED = 0.05


# --------------------------------------------------------------------------- verdict


def verdict(lo: float, hi: float, agreement: Agreement) -> str:
    """The verdict of an interval [lo, hi] under a claim's rule (module docstring).

    ``greater`` t: agrees iff lo > t, disagrees iff hi <= t.  ``at_least`` t: agrees iff lo >= t,
    disagrees iff hi < t.  ``less`` / ``at_most`` mirror them.  ``within`` [a, b]: agrees iff
    a <= lo and hi <= b, disagrees iff the interval lies wholly outside.  Anything else, and a
    missing or non-finite bound, is inconclusive."""
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and math.isfinite(lo)
            and math.isfinite(hi)):
        return INCONCLUSIVE
    if lo > hi:
        raise ValueError(f"interval [{lo}, {hi}] is reversed")
    d = agreement.direction
    if d == "within":
        assert agreement.low is not None and agreement.high is not None
        if agreement.low <= lo and hi <= agreement.high:
            return AGREES
        if hi < agreement.low or lo > agreement.high:
            return DISAGREES
        return INCONCLUSIVE
    t = agreement.threshold
    assert t is not None
    rules = {
        "greater": (lo > t, hi <= t),
        "at_least": (lo >= t, hi < t),
        "less": (hi < t, lo >= t),
        "at_most": (hi <= t, lo > t),
    }
    agrees, disagrees = rules[d]
    return AGREES if agrees else DISAGREES if disagrees else INCONCLUSIVE


# --------------------------------------------------------------------------- the store


@dataclass
class RunData:
    """One completed run: its spec columns, numeric results and per-prompt values."""

    relpath: str
    path: Path
    arm: str
    config_id: str
    seed: int
    params: dict[str, Any]
    scalars: dict[str, float]
    prompts: tuple[str, ...] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    stages: dict[str, RunData] = field(default_factory=dict)
    _lc_l2: float | None = None

    def lc_l2(self) -> float:
        """The length-control penalty the run's own evaluation would pick (cross-validated, seed 0)."""
        if self._lc_l2 is None:
            from harness.evaluation.winrate import fit_length_controlled

            y, c, b = self._lc_arrays(None)
            self._lc_l2 = float(fit_length_controlled(y, c, b, l2="cv", seed=0).l2)
        return self._lc_l2

    def _lc_arrays(self, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y, c, b = self.arrays["preference"], self.arrays["out_len"], self.arrays["base_len"]
        if idx is not None:
            y, c, b = y[idx], c[idx], b[idx]
        keep = np.isfinite(y)
        return y[keep], c[keep], b[keep]


@dataclass
class Cell:
    """One configuration of one arm: a run per seed."""

    arm: str
    config_id: str
    params: dict[str, Any]
    runs: list[RunData]

    @property
    def label(self) -> str:
        return self.arm + (f" ({describe(self.params)})" if self.params else "")


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_fmt_param(v)}" for k, v in params.items())


def _fmt_param(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class StoreData:
    """A sweep's completed runs as cells, and what the report says about the store."""

    root: Path
    cells: list[Cell]
    #: the prompt list every run with per-prompt values answered (None: none, or they differ)
    prompts: tuple[str, ...] | None
    objective: str | None
    direction: str
    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def arm_cells(self, arm: str) -> list[Cell]:
        return [c for c in self.cells if c.arm == arm]


def objective_column(metric: str | None) -> str | None:
    """A sweep objective (a summary path, ``eval.gold_reward_mean``) as a results-table column."""
    if not metric:
        return None
    if metric.startswith("eval."):
        return metric[len("eval."):].replace(".", "/")
    return metric.replace(".", "/", 1) if "." in metric else metric


def _number(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _samples(path: Path) -> tuple[tuple[str, ...] | None, dict[str, np.ndarray]]:
    rows = read_jsonl(path / "samples.jsonl")
    if not rows:
        return None, {}
    prompts = tuple(str(r.get("prompt")) for r in rows)
    arrays: dict[str, np.ndarray] = {}
    for key in ("gold_reward", "baseline_gold_reward", "rm_score", "baseline_rm_score", "preference"):
        vals = np.array([_number(r.get(key)) for r in rows], dtype=float)
        if np.isfinite(vals).any():
            arrays[key] = vals
    # AlpacaEval counts lengths in characters (harness.evaluation.winrate)
    arrays["out_len"] = np.array([len(r.get("output") or "") for r in rows], dtype=float)
    arrays["base_len"] = np.array([len(r.get("baseline_output") or "") for r in rows], dtype=float)
    return prompts, arrays


def _round_scalars(path: Path) -> dict[str, Any]:
    """A pipeline's per-round numbers (its summary's ``rounds`` list) as ``rounds/<round>/<key>`` columns;
    the results table leaves lists out, so they are read here (nothing for a run that is no pipeline)."""
    try:
        rounds = Run(path).summary().get("rounds")
    except Exception:  # a torn summary: the results table has already named it in `error`
        return {}
    if not isinstance(rounds, list):
        return {}
    out: dict[str, Any] = {}
    for entry in rounds:
        if isinstance(entry, dict) and entry.get("round") is not None:
            out.update(flatten({k: v for k, v in entry.items() if k != "round"}, f"rounds/{entry['round']}"))
    return out


def _run_data(row: pd.Series, params_keys: Iterable[str]) -> RunData:
    path = Path(str(row["path"]))
    scalars = {k: _number(v) for k, v in {**row.to_dict(), **_round_scalars(path)}.items() if isinstance(k, str)}
    scalars = {k: v for k, v in scalars.items() if math.isfinite(v)}
    params = {k: row.get(k) for k in params_keys}
    prompts, arrays = _samples(path)
    seed = int(_number(row.get("seed"))) if math.isfinite(_number(row.get("seed"))) else 0
    return RunData(str(row["relpath"]), path, str(row["arm"]), str(row["config_id"]), seed, params, scalars,
                   prompts, arrays)


def load_store(root: str | Path, searched: dict[str, list[str]] | None = None, objective: str | None = None,
               direction: str | None = None) -> StoreData:
    """Cells of the completed trial runs under ``root``.

    ``searched``: per arm, the grid keys it varies (a cell's ``params``); by default the spec
    columns whose values differ between the arm's runs.  ``objective`` / ``direction``: the
    selection metric (default: the runs' ``sweep_objective``)."""
    root = Path(root)
    df = results_table(root)
    notes: list[str] = []
    stage_col = "tags.stage"
    is_stage = df[stage_col].notna() if stage_col in df.columns else pd.Series(False, index=df.index)
    trials = df[~is_stage]
    done = trials[trials["status"] == "completed"]
    not_done = trials[trials["status"] != "completed"]
    if len(not_done):
        counts = not_done["status"].fillna("unknown").value_counts().to_dict()
        notes.append("runs not completed (left out): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if direction is None:
        vals = done["sweep_direction"].dropna() if "sweep_direction" in done.columns else pd.Series(dtype=object)
        direction = str(vals.mode().iloc[0]) if len(vals) else "maximize"
    if objective is None:
        vals = done["sweep_objective"].dropna() if "sweep_objective" in done.columns else pd.Series(dtype=object)
        objective = objective_column(str(vals.mode().iloc[0])) if len(vals) else None
    stages = df[is_stage & (df["status"] == "completed")]
    cells: dict[tuple[str, str], Cell] = {}
    for arm, g in done.groupby("arm", sort=True):
        keys = (searched or {}).get(str(arm))
        if keys is None:
            spec_cols = [c for c in g.columns if c.split(".")[0] in ("method", "peft", "train", "data", "model")
                         and c not in ("method.name",) and g[c].astype(str).nunique() > 1]
            keys = sorted(spec_cols)
        for _, row in g.sort_values(["config_id", "seed"]).iterrows():
            run = _run_data(row, keys)
            for _, srow in stages[stages["path"].astype(str).str.startswith(str(run.path) + "/stages/")].iterrows():
                run.stages[str(srow["tags.stage"])] = _run_data(srow, [])
            cell = cells.setdefault((run.arm, run.config_id), Cell(run.arm, run.config_id, run.params, []))
            cell.runs.append(run)
    prompt_lists = {r.prompts for c in cells.values() for r in c.runs if r.prompts is not None}
    prompts = prompt_lists.pop() if len(prompt_lists) == 1 else None
    if len(prompt_lists) > 0:
        notes.append("runs answered different prompt lists: prompts are not resampled (seeds only)")
    return StoreData(root, list(cells.values()), prompts, objective, direction, df, notes)


# --------------------------------------------------------------------------- one draw


class Draw:
    """The data one evaluation of a statistic sees: all of it (``rng=None``), or one bootstrap
    resample (seeds per cell with replacement, one shared resample of the prompts)."""

    def __init__(self, store: StoreData, rng: np.random.Generator | None, prompts: bool) -> None:
        self.store = store
        self.idx: np.ndarray | None = None
        self.pick: dict[int, list[RunData]] = {}
        if rng is not None:
            # every draw consumes the generator in the same order: reproducible for a given seed
            for cell in store.cells:
                n = len(cell.runs)
                self.pick[id(cell)] = [cell.runs[i] for i in rng.integers(0, n, n)]
            if prompts and store.prompts is not None:
                p = len(store.prompts)
                self.idx = rng.integers(0, p, p)
        self.resampled = rng is not None
        self._cache: dict[tuple[str, str | None, str], float] = {}

    def runs(self, cell: Cell) -> list[RunData]:
        return self.pick.get(id(cell), cell.runs)

    def run_value(self, run: RunData, metric: str, stage: str | None = None) -> float:
        key = (run.relpath, stage, metric)
        if key not in self._cache:
            target = run.stages.get(stage) if stage else run
            self._cache[key] = math.nan if target is None else self._value(target, metric)
        return self._cache[key]

    def _value(self, run: RunData, metric: str) -> float:
        if metric.startswith(GAIN):
            base = metric[len(GAIN):]
            return self._value(run, base) - self._value(run, "baseline_" + base)
        if metric in PER_PROMPT and PER_PROMPT[metric][0] in run.arrays and self.store.prompts is not None:
            field_, scale = PER_PROMPT[metric]
            if metric == "length_controlled_winrate":
                from harness.evaluation.winrate import fit_length_controlled

                y, c, b = run._lc_arrays(self.idx)
                if len(y) < 2:
                    return math.nan
                return float(fit_length_controlled(y, c, b, l2=run.lc_l2()).winrate)
            vals = run.arrays[field_] if self.idx is None else run.arrays[field_][self.idx]
            vals = vals[np.isfinite(vals)]
            return float(vals.mean() * scale) if len(vals) else math.nan
        return run.scalars.get(metric, math.nan)

    def value(self, cell: Cell, metric: str, stage: str | None = None) -> float:
        vals = [self.run_value(r, metric, stage) for r in self.runs(cell)]
        vals = [v for v in vals if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan


# --------------------------------------------------------------------------- statistics


def _matches(params: dict[str, Any], at: dict[str, Any]) -> bool:
    for k, want in at.items():
        have = params.get(k)
        hv, wv = _number(have), _number(want)
        if math.isfinite(hv) and math.isfinite(wv):
            if not math.isclose(hv, wv, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif str(have) != str(want):
            return False
    return True


def _best(cells: list[Cell], draw: Draw, objective: str | None, direction: str) -> Cell | None:
    if not cells:
        return None
    if objective is None or len(cells) == 1:
        return cells[0]
    sign = 1.0 if direction == "maximize" else -1.0
    scored = [(draw.value(c, objective), i, c) for i, c in enumerate(cells)]
    finite = [s for s in scored if math.isfinite(s[0])]
    if not finite:
        return None
    # ties go to the earlier cell (store order), so selection is deterministic
    return max(finite, key=lambda s: (sign * s[0], -s[1]))[2]


def resolve_at(cells: list[Cell], at: dict[str, Any]) -> dict[str, Any]:
    """``at`` with ``max`` / ``min`` replaced by the largest / smallest value of that key among ``cells``
    (e.g. ``train.max_steps: max``: the longest training, whatever the budget's grid)."""
    out = dict(at)
    for k, want in at.items():
        if want in ("max", "min"):
            vals = [_number(c.params.get(k)) for c in cells]
            vals = [v for v in vals if math.isfinite(v)]
            out[k] = (max(vals) if want == "max" else min(vals)) if vals else math.nan
    return out


def candidates(store: StoreData, sel: Selector, draw: Draw) -> list[Cell]:
    arm = store.arm_cells(sel.arm)
    at = resolve_at(arm, sel.at)
    cells = [c for c in arm if _matches(c.params, at)]
    return [c for c in cells if all(b.holds(draw.value(c, m)) for m, b in sel.where.items())]


@dataclass
class Evaluation:
    """A statistic evaluated on one draw, and what it used."""

    value: float
    #: selector side -> the chosen cell (difference / value)
    chosen: dict[str, Cell] = field(default_factory=dict)
    #: (x, cell, y) per grid value (spread / trend) or per point (frontier: x_metric value)
    series: dict[str, list[tuple[float, Cell, float]]] = field(default_factory=dict)
    #: frontier: the anchor point used (x, y) per side
    anchors: dict[str, tuple[float, float]] = field(default_factory=dict)


def _grid(store: StoreData, sel: Selector, over: str, draw: Draw, objective: str | None, direction: str,
          metric: str, x_value: str | None = None) -> list[tuple[float, Cell, float]]:
    groups: dict[Any, list[Cell]] = {}
    for c in candidates(store, sel, draw):
        groups.setdefault(c.params.get(over), []).append(c)
    out = []
    for x, cells in groups.items():
        best = _best(cells, draw, objective, direction)
        if best is None:
            continue
        xv = draw.value(best, x_value) if x_value else _number(x)
        if math.isfinite(xv):
            out.append((xv, best, draw.value(best, sel.metric or metric, sel.stage)))
    return sorted(out, key=lambda t: t[0])


def frontier_fn(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto front (lower x, higher y) of ``points`` as increasing (x, y) arrays."""
    pts = sorted(points, key=lambda p: (p[0], -p[1]))
    xs: list[float] = []
    ys: list[float] = []
    best = -math.inf
    for x, y in pts:
        if y > best:
            xs.append(x)
            ys.append(y)
            best = y
    return np.array(xs), np.array(ys)


def front_at(fx: np.ndarray, fy: np.ndarray, x: np.ndarray | float) -> np.ndarray:
    """The front's value at ``x``: linear between its points, flat beyond its last one and (without
    an anchor) at its first point's value below it."""
    return np.interp(x, fx, fy, left=fy[0], right=fy[-1])


def _frontier(store: StoreData, st: Statistic, draw: Draw, objective: str | None,
              direction: str) -> Evaluation:
    assert st.a is not None and st.b is not None
    ev = Evaluation(math.nan)
    pts: dict[str, list[tuple[float, float]]] = {}
    for side, sel in (("a", st.a), ("b", st.b)):
        metric = sel.metric or st.metric
        series = []
        for c in candidates(store, sel, draw):
            x, y = draw.value(c, st.x_metric, sel.stage), draw.value(c, metric, sel.stage)
            if math.isfinite(x) and math.isfinite(y):
                series.append((x, c, y))
        ev.series[side] = series
        pts[side] = [(x, y) for x, _, y in series]
        if st.anchor:
            refs = [draw.value(c, "baseline_" + metric, sel.stage) for c in candidates(store, sel, draw)]
            refs = [r for r in refs if math.isfinite(r)]
            if refs:
                ev.anchors[side] = (0.0, float(np.mean(refs)))
                pts[side] = [ev.anchors[side], *pts[side]]
    if not ev.series.get("a") or not pts.get("b"):
        return ev
    fbx, fby = frontier_fn(pts["b"])
    if st.measure == "share":
        above = [y > float(front_at(fbx, fby, x)) for x, _, y in ev.series["a"]]
        ev.value = float(np.mean(above))
    else:
        fax, fay = frontier_fn(pts["a"])
        xmax = min(fax[-1], fbx[-1])
        xmin = max(min(fax[0], fbx[0]), 0.0) if st.anchor else max(fax[0], fbx[0])
        if xmax <= xmin:
            return ev
        # both fronts are piecewise linear: the trapezoid rule on the union of their breakpoints is exact
        grid = np.unique(np.concatenate([[xmin, xmax], fax, fbx]))
        grid = grid[(grid >= xmin) & (grid <= xmax)]
        gap = front_at(fax, fay, grid) - front_at(fbx, fby, grid)
        ev.value = float(np.trapezoid(gap, grid) / (xmax - xmin))
    return ev


def evaluate(store: StoreData, st: Statistic, draw: Draw, objective: str | None, direction: str) -> Evaluation:
    """The statistic on one draw (module docstring for the definitions)."""
    objective = st.objective or objective
    direction = st.direction or direction
    if st.kind == "frontier":
        return _frontier(store, st, draw, objective, direction)
    assert st.a is not None
    if st.kind in ("difference", "value"):
        ev = Evaluation(math.nan)
        vals = []
        for side, sel in (("a", st.a), ("b", st.b)):
            if sel is None:
                continue
            cell = _best(candidates(store, sel, draw), draw, objective, direction)
            if cell is None:
                return ev
            ev.chosen[side] = cell
            vals.append(draw.value(cell, sel.metric or st.metric, sel.stage))
        ev.value = vals[0] - vals[1] if st.kind == "difference" else vals[0]
        return ev
    assert st.over is not None
    series = _grid(store, st.a, st.over, draw, objective, direction, st.metric, st.x_value)
    ev = Evaluation(math.nan, series={"a": series})
    ys = np.array([y for _, _, y in series])
    xs = np.array([x for x, _, _ in series])
    ok = np.isfinite(ys) & (xs > 0 if st.log_x else np.isfinite(xs))
    if ok.sum() < 2:
        return ev
    if st.kind == "spread":
        ev.value = float(ys[ok].max() - ys[ok].min())
    else:
        x = np.log(xs[ok]) if st.log_x else xs[ok]
        ev.value = float(np.polyfit(x, ys[ok], 1)[0])
    return ev


# --------------------------------------------------------------------------- bootstrap


@dataclass
class CellSummary:
    label: str
    arm: str
    params: dict[str, Any]
    n_seeds: int
    value: float
    lo: float
    hi: float


@dataclass
class ClaimResult:
    claim: Claim
    value: float
    lo: float
    hi: float
    verdict: str
    resamples: int
    undefined: float
    #: what the interval varies: "seeds", "prompts"
    sources: list[str]
    notes: list[str]
    replicates: np.ndarray
    full: Evaluation
    #: per chosen / plotted cell: its own value and interval (same resamples)
    cells: dict[str, CellSummary]
    #: selector side -> share of resamples that chose the same configuration as the full data
    stability: dict[str, float]
    n_seeds: list[int]

    def numbers(self) -> dict[str, Any]:
        """What the report and the regeneration check compare."""
        return {"id": self.claim.id, "value": _r(self.value), "lo": _r(self.lo), "hi": _r(self.hi),
                "verdict": self.verdict, "resamples": self.resamples, "sources": self.sources,
                "n_seeds": self.n_seeds, "undefined": _r(self.undefined),
                "chosen": {s: c.label for s, c in self.full.chosen.items()},
                "stability": {s: _r(v) for s, v in self.stability.items()}}


def _r(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 10)


def _involved(ev: Evaluation) -> list[Cell]:
    cells = list(ev.chosen.values())
    for series in ev.series.values():
        cells += [c for _, c, _ in series]
    return cells


def _tracked(st: Statistic, full: Evaluation) -> list[tuple[str, Cell, str, str | None]]:
    """(label, cell, metric, stage) of every value the report shows beside the statistic."""
    out = []
    if st.kind in ("difference", "value"):
        for side, cell in full.chosen.items():
            sel = getattr(st, side)
            metric = sel.metric or st.metric
            extra = f" [{metric}{', stage ' + sel.stage if sel.stage else ''}]" \
                if metric != st.metric or sel.stage else ""
            out.append((f"{side}: {cell.label}{extra}", cell, metric, sel.stage))
        return out
    for side, series in full.series.items():
        sel = getattr(st, side)
        for _, cell, _ in series:
            out.append((cell.label, cell, sel.metric or st.metric, sel.stage))
    return out


def _claim_rng(spec: BootstrapSpec, claim_id: str) -> np.random.Generator:
    # one stream per claim, fixed by the claims file's seed and the claim's id
    return np.random.default_rng([spec.seed, zlib.crc32(claim_id.encode())])


def compute_claim(claim: Claim, store: StoreData, spec: BootstrapSpec) -> ClaimResult:
    """The claim's statistic on all the data, its bootstrap interval and the verdict."""
    st, agreement = claim.statistic, claim.agreement
    assert st is not None and agreement is not None
    objective, direction = store.objective, store.direction
    full = evaluate(store, st, Draw(store, None, False), objective, direction)
    involved = {id(c): c for c in _involved(full)}
    notes: list[str] = []
    if not math.isfinite(full.value):
        why = "no completed runs for the arms it compares" if not involved else \
            "the statistic is undefined on these runs (too few configurations or missing metric)"
        return ClaimResult(claim, math.nan, math.nan, math.nan, NO_DATA, 0, 1.0, [], [why], np.array([]), full, {},
                           {}, [])
    rng = _claim_rng(spec, claim.id)
    reps = np.full(spec.resamples, math.nan)
    tracked = _tracked(st, full)
    track_reps: list[list[float]] = [[] for _ in tracked]
    same: dict[str, int] = {s: 0 for s in full.chosen}
    for i in range(spec.resamples):
        draw = Draw(store, rng, spec.prompts)
        ev = evaluate(store, st, draw, objective, direction)
        reps[i] = ev.value
        for s, c in full.chosen.items():
            same[s] += ev.chosen.get(s) is c
        for j, (_, c, metric, stage) in enumerate(tracked):
            track_reps[j].append(draw.value(c, metric, stage))
    finite = reps[np.isfinite(reps)]
    undefined = 1.0 - len(finite) / spec.resamples
    alpha = 1.0 - spec.level
    lo, hi = (float(np.quantile(finite, alpha / 2)), float(np.quantile(finite, 1 - alpha / 2))) if len(finite) \
        else (math.nan, math.nan)
    sources = []
    n_seeds = sorted({len(c.runs) for c in involved.values()})
    if any(len(c.runs) > 1 for c in involved.values()):
        sources.append("seeds")
    metrics = {m.removeprefix(GAIN) for m in (st.metric, *(s.metric for s in (st.a, st.b) if s is not None and s.metric))}
    if spec.prompts and store.prompts is not None and any(
            m in PER_PROMPT and PER_PROMPT[m][0] in r.arrays for m in metrics for c in involved.values()
            for r in c.runs):
        sources.append("prompts")
    result = verdict(lo, hi, agreement)
    if not sources:
        notes.append("no interval: every configuration it uses has one seed and the metric has no per-prompt "
                     "values, so nothing is resampled")
        result = INCONCLUSIVE
    elif undefined > MAX_UNDEFINED:
        notes.append(f"the statistic is undefined in {undefined:.0%} of resamples (a configuration it needs "
                     "drops out of some resamples)")
        result = INCONCLUSIVE
    if "seeds" not in sources and sources:
        notes.append("one seed per configuration: the interval covers prompt sampling only, not training noise")
    cells: dict[str, CellSummary] = {}
    plain = Draw(store, None, False)
    for (label, c, metric, stage), vals_ in zip(tracked, track_reps):
        vals = np.array([v for v in vals_ if math.isfinite(v)])
        clo, chi = (float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))) if len(vals) \
            else (math.nan, math.nan)
        cells[label] = CellSummary(label, c.arm, c.params, len(c.runs), plain.value(c, metric, stage), clo, chi)
    stability = {s: same[s] / spec.resamples for s in same}
    return ClaimResult(claim, full.value, lo, hi, result, spec.resamples, undefined, sources, notes, reps, full,
                       cells, stability, n_seeds)
