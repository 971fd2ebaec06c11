"""From a claims file and a budget to the sweeps that test it: generated sweep specs, checks, cost estimates.

    harness reproduce simpo --budget quick      # writes runs/reproduce/simpo/<spec>/quick/sweep.yaml, then runs it
    harness worker runs/reproduce/simpo/simpo-vs-dpo/quick/sweep.yaml    # any number of workers join it
    harness reproduce --list                    # cost estimates from sweeps/claims/cpu-calibration.json
    harness reproduce --calibrate simpo         # measures that file's entries (tiny real runs, scaled)

An experiment's budget edits its sweep spec in a declared way (seeds, trials, steps, model,
deep-merged ``set``, dotted ``overrides``); the result is written, whole and self-contained
(the base spec inlined), as ``<runs>/<paper>/<spec name>/<budget>/sweep.yaml`` with its
``output_dir`` there, so the run store, the Optuna storage and the spec that made them sit
together and ``harness worker`` can join from any node that sees the directory.  Before anything
runs, every claim is checked against the loaded sweep: its arms exist, the grid keys it fixes
(``at``) or varies (``over``) are searched by that arm, and compared arms have equal budgets.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.core.config import ConfigError, merge_raw, parse_override, read_yaml, set_dotted
from harness.core.registry import did_you_mean
from harness.reproduce.claims import CLAIMS_DIR, Budget, Claim, ClaimsFile, Experiment, Selector
from harness.reproduce.prepare import prepare
from harness.sweeps.spec import Arm, Sweep, load_sweep

DEFAULT_RUNS = Path("runs") / "reproduce"
CALIBRATION = CLAIMS_DIR / "cpu-calibration.json"
#: steps of a calibration run (a pipeline arm runs twice, at this and six times this)
CALIBRATION_STEPS = 6


class BudgetUnavailable(ConfigError):
    """The experiment declares no such budget (the message says why, when the claims file does)."""


def run_dir(runs: str | Path, paper: str, sweep_name: str, budget: str) -> Path:
    return Path(runs).expanduser().absolute() / paper / sweep_name / budget


def deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` merged into ``into`` (mappings recursively, anything else replaced); keys stay literal."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), Mapping):
            into[k] = deep_merge(dict(into[k]), v)
        else:
            into[k] = copy.deepcopy(v)
    return into


def _set_path(raw: dict[str, Any], path: list[str], value: Any, where: str) -> None:
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def budget_of(cf: ClaimsFile, exp_name: str, budget: str) -> Budget:
    exp = cf.experiment(exp_name)
    if budget in exp.budgets:
        return exp.budgets[budget]
    why = exp.unavailable.get(budget) or f"it defines only {', '.join(exp.budgets) or 'none'}"
    raise BudgetUnavailable(f"{cf.key}: experiment {exp_name!r} has no {budget!r} budget: {why}")


def spec_name(exp: Experiment) -> str:
    raw = read_yaml(exp.spec_path)
    return str(raw.get("name") or exp.spec_path.stem)


def generated_raw(cf: ClaimsFile, exp_name: str, budget_name: str, out: Path,
                  prepared: Path | None = None) -> dict[str, Any]:
    """The sweep spec of one experiment at one budget, as a raw mapping (validated by ``load_sweep``)."""
    exp = cf.experiment(exp_name)
    budget = budget_of(cf, exp_name, budget_name)
    where = f"{cf.key}: experiments.{exp_name}.budgets.{budget_name}"
    raw = read_yaml(exp.spec_path)
    raw.setdefault("name", exp.spec_path.stem)
    if isinstance(raw.get("base"), str):  # a base given as a file, relative to the spec: inline it
        bp = Path(raw["base"])
        raw["base"] = read_yaml(bp if bp.is_absolute() else exp.spec_path.parent / bp)
    raw["base"] = merge_raw(raw.get("base") or {}, {})  # ``model: x`` -> ``model: {name_or_path: x}``
    if isinstance(raw.get("methods"), list) and (budget.set.get("methods") or prepared is not None):
        raw["methods"] = {m: {} for m in raw["methods"]}
    if budget.set:
        deep_merge(raw, budget.set)
        raw["base"] = merge_raw(raw.get("base") or {}, {})
    if budget.seeds is not None:
        raw["seeds"] = budget.seeds
    if budget.trials is not None:
        if (raw.get("sampler") or {}).get("kind") == "grid":
            raise ConfigError(f"{where}.trials: a grid's trials are its points; change the grid through `set`")
        raw["trials_per_method"] = budget.trials
    if budget.model is not None:
        raw["base"].setdefault("model", {})["name_or_path"] = budget.model
    if budget.steps is not None:
        for arm, entry in (raw.get("methods") or {}).items() if isinstance(raw.get("methods"), dict) else []:
            if "train.max_steps" in ((entry or {}).get("search_space") or {}):
                raise ConfigError(f"{where}.steps: arm {arm!r} searches train.max_steps; set its grid through `set`")
        raw["base"].setdefault("train", {})["max_steps"] = budget.steps
    for text in budget.overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    if prepared is not None:
        assert exp.prepare is not None
        for path in exp.prepare.target:
            _set_path(raw, list(path), str(prepared), f"{cf.key}: experiments.{exp_name}.prepare.target")
    raw["output_dir"] = str(out)
    return raw


@dataclass
class Planned:
    """One experiment at one budget, ready to run: its loaded sweep and generated spec file."""

    paper: str
    experiment: str
    budget: str
    sweep: Sweep
    spec_file: Path
    prepared: dict[str, Any] | None = None
    claims: list[Claim] = field(default_factory=list)


def plan_experiment(cf: ClaimsFile, exp_name: str, budget_name: str, runs: str | Path = DEFAULT_RUNS, *,
                    write: bool = True, check_runs: bool = True) -> Planned:
    """Prepare the experiment's data (if any), write its generated spec, load and check it.

    ``write=False`` validates only: the derived data file is made in a scratch directory that is
    removed afterwards, and no spec file is written."""
    exp = cf.experiment(exp_name)
    budget_of(cf, exp_name, budget_name)  # unavailable budgets fail first, with their reason
    out = run_dir(runs, cf.key, spec_name(exp), budget_name)
    if not write:  # validation only: the derived data is made in a scratch directory, nothing is kept
        with tempfile.TemporaryDirectory(prefix="reproduce-check-") as tmp:
            prepared_path = prepare(exp.prepare, Path(tmp))[0] if exp.prepare is not None else None
            sweep = load_sweep(None, raw=generated_raw(cf, exp_name, budget_name, out, prepared_path),
                               check_runs=check_runs)
        claims = [c for c in cf.active_claims() if c.experiment == exp_name]
        check_claims(cf, exp_name, sweep, claims)
        return Planned(cf.key, exp_name, budget_name, sweep, out / "sweep.yaml", None, claims)
    prepared_path, meta = prepare(exp.prepare, out / "data") if exp.prepare is not None else (None, None)
    raw = generated_raw(cf, exp_name, budget_name, out, prepared_path)
    spec_file = out / "sweep.yaml"
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# generated by `harness reproduce {cf.key} --budget {budget_name}` from {exp.spec}\n"
              f"# (claims: sweeps/claims/{cf.key}.yaml, experiment {exp_name}); do not edit: re-run that command.\n"
              f"# join from any node that sees this directory: harness worker {spec_file}\n")
    spec_file.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    sweep = load_sweep(spec_file, check_runs=check_runs)
    claims = [c for c in cf.active_claims() if c.experiment == exp_name]
    check_claims(cf, exp_name, sweep, claims)
    return Planned(cf.key, exp_name, budget_name, sweep, spec_file, meta, claims)


def searched_keys(arm: Arm) -> list[str]:
    if arm.grid is not None:
        return list(arm.grid[0]) if arm.grid else []
    return list(arm.space or {})


def _check_selector(sweep: Sweep, sel: Selector, where: str) -> Arm:
    labels = [a.label for a in sweep.arms]
    if sel.arm not in labels:
        raise ConfigError(f"{where}.arm: sweep {sweep.name!r} has no arm {sel.arm!r}"
                          f"{did_you_mean(sel.arm, labels)}; its arms: {', '.join(labels)}")
    arm = sweep.arm(sel.arm)
    keys = searched_keys(arm)
    for k in sel.at:
        if k not in keys:
            raise ConfigError(f"{where}.at: {k!r} is not searched by arm {arm.label!r}{did_you_mean(k, keys)}; "
                              f"it searches: {', '.join(keys) or 'nothing (declare an explicit search space)'}")
    return arm


def check_claims(cf: ClaimsFile, exp_name: str, sweep: Sweep, claims: list[Claim]) -> None:
    """Each claim against the sweep that tests it: arms, grid keys, equal budgets of compared arms."""
    for arm in sweep.arms:
        # Optuna 5's GridSampler reads a "grid_id" that enqueued grid points never get once a single
        # grid point is left unvisited, so a one-point grid fails its first trial (KeyError) in the
        # sweep worker: refuse it here, before anything runs, until harness.sweeps handles it
        if arm.grid is not None and len(arm.grid) == 1:
            raise ConfigError(f"{cf.key}: experiment {exp_name}: arm {arm.label!r} has a one-point grid, which "
                              "the grid sampler cannot run (KeyError 'grid_id'); give it two points")
    for c in claims:
        st = c.statistic
        assert st is not None
        where = f"{cf.key}: claim {c.id}: statistic"
        arms = [_check_selector(sweep, sel, f"{where}.{side}")
                for side, sel in (("a", st.a), ("b", st.b)) if sel is not None]
        if st.over is not None:
            keys = searched_keys(arms[0])
            if st.over not in keys:
                raise ConfigError(f"{where}.over: {st.over!r} is not searched by arm {arms[0].label!r}"
                                  f"{did_you_mean(st.over, keys)}; it searches: {', '.join(keys) or 'nothing'}")
        if len({a.budget for a in arms}) > 1:
            shown = ", ".join(f"{a.label}={a.budget}" for a in arms)
            raise ConfigError(f"{where}: compared arms have unequal budgets ({shown} trials); a comparison "
                              "needs equal budgets")


# --------------------------------------------------------------------------- cost


def load_calibration(path: str | Path = CALIBRATION) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def calibration_key(paper: str, experiment: str, arm: str, budget: str) -> str:
    return f"{paper}/{experiment}/{arm}@{budget}"


def trial_steps(sweep: Sweep, arm: Arm) -> list[int | None]:
    """Training steps of each of the arm's trials (grid points may set train.max_steps)."""
    base = merge_raw(sweep.base, arm.overrides)
    steps = (base.get("train") or {}).get("max_steps")
    if arm.grid is not None:
        return [int(v) if (v := p.get("train.max_steps", steps)) is not None else None for p in arm.grid]
    return [steps] * arm.budget


@dataclass
class Estimate:
    runs: int
    seconds: float | None
    missing: list[str] = field(default_factory=list)


def estimate(planned: Planned, calibration: Mapping[str, Any]) -> Estimate:
    """CPU seconds of the experiment's sweep, one trial at a time: per arm, trial and seed ``fixed +
    per_step * steps`` from the arm's calibration entry (measured by --calibrate on short real runs),
    plus the experiment's one-off cold-cache cost and the worker's imports."""
    entries = calibration.get("entries", {})
    cold = entries.get(experiment_key(planned), {}).get("cold_s", 0.0)
    total, runs, missing = float(cold) + float(calibration.get("imports_s", 0.0)), 0, []
    for arm in planned.sweep.arms:
        e = entries.get(calibration_key(planned.paper, planned.experiment, arm.label, planned.budget))
        n_seeds = len(planned.sweep.seeds)
        for steps in trial_steps(planned.sweep, arm):
            runs += n_seeds
            if e is None or steps is None:
                continue
            total += n_seeds * (e["fixed_s"] + e["per_step_s"] * steps)
        if e is None:
            missing.append(arm.label)
    return Estimate(runs, None if missing else total, missing)


def machine() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def first_params(arm: Arm) -> dict[str, Any]:
    """The arm's first grid point, or a seeded random draw from its search space."""
    if arm.grid:
        return dict(arm.grid[0])
    import optuna

    from harness.sweeps.spec import search_space_fn

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return dict(search_space_fn(arm)(study.ask()))


def calibrate(planned: Planned, scratch: Path, log: Any = print) -> dict[str, dict[str, Any]]:
    """Measure each arm at the budget's settings, ``train.max_steps`` cut to :data:`CALIBRATION_STEPS`:
    one real run separates the fixed cost from the cost per step (a pipeline records no train time of
    its own, so it runs twice, at 1x and 6x the steps, and the difference gives the step cost).

    A warm-up run comes first and is measured apart: the first run of an experiment also pays what
    later runs find in the caches (reference log-probs, tokenised data, the baseline's samples, a base
    model built on first use), which a sweep pays once.  Returns ``{arm key: {fixed_s, per_step_s,
    ...}, experiment key: {cold_s}}``."""
    from harness.core.config import resolve
    from harness.pipelines.run import run as execute
    from harness.sweeps.spec import trial_raw

    sw = planned.sweep
    counter = iter(range(10**6))

    def one(arm: Arm, params: dict[str, Any], steps: int) -> tuple[float, float | None]:
        k = next(counter)
        raw = trial_raw(sw, arm, {**params, **({"train.max_steps": steps} if "train.max_steps" in params else {})},
                        900 + k, sw.seeds[0])
        raw = merge_raw(raw, {"train.max_steps": steps, "output_dir": str(scratch / arm.label),
                              "name": f"calib-{k}-{steps}", "tracking.mode": "disabled"})
        raw.pop("tags", None)
        s = execute(resolve(raw)).summary()
        train = s.get("train_time_s")
        return float(s.get("wall_time_s") or 0.0), float(train) if train is not None else None

    out: dict[str, dict[str, Any]] = {}
    first = sw.arms[0]
    warm_wall, _ = one(first, first_params(first), CALIBRATION_STEPS)
    log(f"  warm-up ({first.label}): {CALIBRATION_STEPS} steps, {warm_wall:.1f}s")
    for arm in sw.arms:
        params = first_params(arm)
        key = calibration_key(planned.paper, planned.experiment, arm.label, planned.budget)
        w1, train = one(arm, params, CALIBRATION_STEPS)
        log(f"  {key}: {CALIBRATION_STEPS} steps, {w1:.1f}s")
        if train is not None:
            per_step, fixed = train / CALIBRATION_STEPS, w1 - train
        else:
            w2, _ = one(arm, params, 6 * CALIBRATION_STEPS)
            log(f"  {key}: {6 * CALIBRATION_STEPS} steps, {w2:.1f}s")
            per_step = max((w2 - w1) / (5 * CALIBRATION_STEPS), 0.0)
            fixed = w1 - per_step * CALIBRATION_STEPS
        out[key] = {"fixed_s": round(fixed, 3), "per_step_s": round(per_step, 5), "measured_steps": CALIBRATION_STEPS,
                    "params": dict(params), "runs": 1 if train is not None else 2}
        if arm is first:
            out[experiment_key(planned)] = {"cold_s": round(max(warm_wall - w1, 0.0), 3)}
    return out


def experiment_key(planned: Planned) -> str:
    return f"{planned.paper}/{planned.experiment}@{planned.budget}"


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what a sweep worker's fork server preloads."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import harness.sweeps.preload"], check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def save_calibration(entries: dict[str, dict[str, Any]], path: str | Path = CALIBRATION) -> Path:
    data = load_calibration(path)
    data.setdefault("entries", {}).update(entries)
    data["machine"] = machine()
    data["measured_at"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data["imports_s"] = import_seconds()
    data["how"] = ("harness reproduce --calibrate: per experiment a warm-up run (its extra time over the same run "
                   "warm is cold_s, paid once per experiment), then per arm one real run of the budget's first "
                   f"configuration cut to {CALIBRATION_STEPS} steps (a pipeline: {CALIBRATION_STEPS} and "
                   f"{6 * CALIBRATION_STEPS}); fixed_s = its wall time outside training (set-up, evaluation), "
                   "per_step_s = training time per optimizer step. An estimate is the sum over trials and seeds "
                   "of fixed_s + per_step_s x steps, one trial at a time, plus cold_s and the worker's imports "
                   "(imports_s). Measured on this machine under whatever else was running.")
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)
