"""Head-to-head sweeps: a typed sweep spec, its Optuna storage and studies, search spaces, status.

    harness sweep sweeps/quickstart.yaml                    # validate, create the studies, run trials here
    harness worker sweeps/quickstart.yaml --slots 2         # another worker on this host (SQLite: one host)
    harness worker sweeps/qwen-ultrafeedback.yaml --devices 0,1   # on any node: its storage is ${SWEEP_DB}
    harness sweep status sweeps/quickstart.yaml             # per method: done / running / pruned / failed, best

A sweep spec names a base run spec, the methods ("arms") to compare, and how to search
each one.  Every arm gets its own Optuna study, ``<sweep name>/<arm>``, in one storage
(a SQLite file in the sweep's output directory by default, for workers of one host; a
PostgreSQL URL, or a ``journal:`` file on a shared filesystem, for many nodes: see
:mod:`harness.sweeps.storage`; ``storage: ${SWEEP_DB}`` takes the URL from the environment).
One Optuna trial is one configuration; it trains once per seed (``seeds``) and its value is the mean of the
objective over the seeds (the spread is kept in the trial's user attributes).

Everything a sweep will run is validated here before any trial starts: unknown keys
and wrong types (with did-you-mean), each arm's search space (sampled at its corners
and at random through a real in-memory Optuna study), and every resulting run spec
through :func:`harness.core.config.resolve`.  The workers live in
:mod:`harness.sweeps.worker`; one trial's process is :mod:`harness.sweeps.trial`.

Budget bookkeeping, shared by all workers through the storage only: a trial with no
``retry_of`` user attribute is *fresh* and occupies one of the arm's
``trials_per_method`` slots, by trial number; a fresh trial past the budget (two
workers raced for the last slot) is failed at once as ``surplus`` and never runs.  A
trial lost with its worker (heartbeat stopped) or interrupted by Ctrl-C is failed and
re-enqueued with ``retry_of``, inheriting its slot, so none is lost; finished trials
are never rerun.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import math
import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.core.config import (
    ConfigError,
    build,
    merge_raw,
    parse_override,
    read_yaml,
    resolve,
    set_dotted,
    to_dict,
)
from harness.core.registry import did_you_mean
from harness.sweeps.storage import StorageRef, expand_env, parse_storage

#: summary.json keys an objective may start with (the runner writes these)
SUMMARY_ROOTS = (
    "eval", "eval_loss_metrics", "final_metrics", "final_loss", "steps", "train_time_s", "wall_time_s",
    "setup_time_s", "teardown_time_s", "tokens", "tokens_per_s", "peak_memory_mb", "trainable_params",
    "total_params", "gpu_hours",
)
#: run-spec keys a sweep sets itself; a search space or override may not touch them
RESERVED_KEYS = ("method", "method.name", "seed", "name", "output_dir", "tags", "tracking.group", "tracking.job_type")

#: a running trial's lease counter, advanced by its worker every ``execution.heartbeat_s``
ATTR_LEASE = "harness:lease"
ATTR_WORKER = "harness:worker"

#: the derived trial timeout when the number of steps cannot be known before the data loads
UNKNOWN_STEPS_TIMEOUT_S = 24 * 3600.0


# --------------------------------------------------------------------------- spec


@dataclass
class ParamSpec:
    """One searched hyperparameter: a float/int range (linear or log) or a categorical list."""

    type: Literal["float", "int", "categorical"] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def validate(self) -> None:
        if self.type is None:
            self.type = "categorical" if self.choices is not None else "float"
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes choices, not low/high")
            for c in self.choices:
                if not (c is None or isinstance(c, (bool, int, float, str))):
                    raise ValueError(f"choice {c!r}: choices must be numbers, strings, booleans or null")
            return
        if self.choices is not None:
            raise ValueError(f"a {self.type} range takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs both low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        if self.type == "int":
            for name, v in (("low", self.low), ("high", self.high), ("step", self.step)):
                if v is not None and not float(v).is_integer():
                    raise ValueError(f"an int range needs an integer {name}, got {v}")

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self, where: str) -> list[Any]:
        """The values a grid sampler visits: the choices, or every step of a stepped range."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.step is None:
            raise ConfigError(f"{where}: the grid sampler needs a list of values or a range with a step")
        assert self.low is not None and self.high is not None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        vals = [self.low + i * self.step for i in range(n)]
        return [int(v) for v in vals] if self.type == "int" else [round(v, 12) for v in vals]


@dataclass
class ArmSpec:
    """One compared method: an adapter plus fixed overrides and (optionally) its own search space."""

    #: registered method name; default: the arm's key in ``methods``
    method: str | None = None
    #: fixed run-spec overrides for this arm (dotted keys or nested mappings), e.g. ``peft.kind: lora``
    overrides: dict[str, Any] = field(default_factory=dict)
    #: replaces the adapter's default search space: ``{"method.beta": {low: .., high: .., log: true}}``
    search_space: dict[str, Any] | None = None
    #: this arm's budget when it must differ from ``trials_per_method`` (unequal budgets are shown as such)
    trials: int | None = None


@dataclass
class SamplerSpec:
    kind: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    #: TPE: random trials before the model kicks in
    n_startup_trials: int = 4

    def validate(self) -> None:
        if self.n_startup_trials < 0:
            raise ValueError("n_startup_trials must be >= 0")


@dataclass
class PrunerSpec:
    kind: Literal["none", "median", "hyperband"] = "none"
    #: held-out metric reported every ``train.eval_every`` steps (keys of ``eval_loss_metrics``)
    metric: str = "loss"
    #: the metric's own direction; reported negated when it differs from the objective's
    direction: Literal["minimize", "maximize"] = "minimize"
    #: median: trials finished before any pruning; steps before a trial can be pruned
    n_startup_trials: int = 2
    n_warmup_steps: int = 0
    #: hyperband: smallest budget (steps) and the halving factor
    min_resource: int = 1
    reduction_factor: int = 3


@dataclass
class ObjectiveSpec:
    #: a path into the run's summary.json: ``eval.gold_reward_mean``, ``eval_loss_metrics.loss``, ``final_loss``
    metric: str = ""
    direction: Literal["maximize", "minimize"] = "maximize"

    def validate(self) -> None:
        if not self.metric:
            raise ValueError("objective.metric is required, e.g. eval.gold_reward_mean or eval_loss_metrics.loss")
        root = self.metric.split(".", 1)[0]
        if self.metric not in SUMMARY_ROOTS and root not in SUMMARY_ROOTS:
            raise ValueError(
                f"metric {self.metric!r}: {root!r} is not a summary section{did_you_mean(root, list(SUMMARY_ROOTS))}; "
                f"choose from: {', '.join(SUMMARY_ROOTS)}"
            )


@dataclass
class ExecutionSpec:
    """How trials run: heartbeats, retries, timeouts, devices."""

    #: a worker advances each running trial's lease counter this often (seconds)
    heartbeat_s: float = 15.0
    #: a running trial whose lease counter has not advanced for this long, on the observing worker's
    #: own clock, is failed and retried elsewhere (no two hosts' clocks are ever compared)
    grace_s: float = 90.0
    #: how many times a trial lost with its worker, or timed out, is retried
    max_retries: int = 2
    #: kill a trial process that runs longer than this (seconds), fail it as ``timeout`` and retry it;
    #: None: derived from the spec (:func:`trial_timeout`); for no practical limit give a large number
    trial_timeout_s: float | None = None
    #: the derived timeout's generous bound on one optimizer step (seconds)
    step_timeout_s: float = 60.0
    #: the derived timeout's allowance per run for everything but steps: loading (downloads
    #: included), tokenising, the reference pass and evaluation (seconds)
    run_overhead_s: float = 3600.0
    #: devices per trial (``--devices-per-trial``): GPUs, or CPU processes on a CPU slot; above 1 a
    #: trial is launched with ``accelerate launch`` (GPUs: DDP, or FSDP / DeepSpeed from
    #: ``accelerate_config``) or ``torch.distributed.run`` (CPU processes, gloo)
    gpus_per_trial: int = 1
    #: an ``accelerate config`` file for trials on several GPUs (FSDP, DeepSpeed); None: plain DDP
    accelerate_config: str | None = None
    #: how trial processes start: ``forkserver`` forks them from a process that imported torch & co.
    #: once (trials start in about a second); ``spawn`` starts a fresh interpreter each (seconds of
    #: imports per trial, nothing shared); ``auto``: forkserver for CPU slots, spawn for GPU slots
    #: (a fork must not inherit an initialised CUDA runtime, and GPU trials are long anyway)
    start: Literal["auto", "forkserver", "spawn"] = "auto"
    #: W&B mode of trial runs; None: each run's ``tracking.mode``
    tracking: Literal["auto", "online", "offline", "disabled"] | None = None

    def validate(self) -> None:
        if self.heartbeat_s <= 0 or self.grace_s <= self.heartbeat_s:
            raise ValueError(f"need 0 < heartbeat_s < grace_s, got heartbeat_s={self.heartbeat_s}, grace_s={self.grace_s}")
        if self.max_retries < 0 or self.gpus_per_trial < 1:
            raise ValueError("max_retries must be >= 0 and gpus_per_trial >= 1")
        if self.trial_timeout_s is not None and not self.trial_timeout_s > 0:
            raise ValueError(f"trial_timeout_s must be > 0, got {self.trial_timeout_s}")
        if not self.step_timeout_s > 0 or not self.run_overhead_s > 0:
            raise ValueError("step_timeout_s and run_overhead_s must be > 0")
        if self.accelerate_config is not None and not Path(self.accelerate_config).expanduser().is_file():
            raise ValueError(f"accelerate_config {self.accelerate_config!r}: no such file")


@dataclass
class SweepSpec:
    #: sweep name: study names are ``<name>/<arm>``; default: the spec file's stem
    name: str | None = None
    description: str = ""
    #: base run spec: a mapping like a run YAML, or a path to one (relative to the sweep file)
    base: dict[str, Any] | str = field(default_factory=dict)
    #: arms to compare: a list of method names, or a mapping arm -> ArmSpec (or null)
    methods: dict[str, Any] | list[str] = field(default_factory=dict)
    #: equal budget per arm; None with the grid sampler: the grid's size
    trials_per_method: int | None = None
    #: seeds per configuration: a count (0..n-1) or an explicit list
    seeds: int | list[int] = 1
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    #: None: ``sqlite:///<output_dir>/optuna.db``; ``postgresql+psycopg2://...``; ``journal:<path>``
    storage: str | None = None
    #: where trial runs go (``<output_dir>/<arm>/trial-NNNN-seedS``); default ``runs/<name>``
    output_dir: str | None = None
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)


@dataclass
class Arm:
    """A validated arm: what one study searches."""

    label: str
    method: str
    overrides: dict[str, Any]
    space: dict[str, ParamSpec] | None
    budget: int
    grid: list[dict[str, Any]] | None = None

    def study_name(self, sweep: str) -> str:
        return f"{sweep}/{self.label}"


@dataclass
class Sweep:
    """A loaded, validated sweep: the spec plus everything derived from it."""

    spec: SweepSpec
    name: str
    path: Path | None
    base: dict[str, Any]
    arms: list[Arm]
    seeds: list[int]
    output_dir: Path
    storage: StorageRef

    def arm(self, label: str) -> Arm:
        for a in self.arms:
            if a.label == label:
                return a
        raise KeyError(f"no arm {label!r}{did_you_mean(label, [a.label for a in self.arms])}")

    def study_name(self, arm: Arm) -> str:
        return arm.study_name(self.name)

    def run_dir(self, arm: Arm, number: int, seed: int) -> Path:
        return self.output_dir / arm.label / f"trial-{number:04d}-seed{seed}"

    def definition(self, arm: Arm) -> dict[str, Any]:
        """What makes an arm's study what it is; resuming with a different one is refused."""
        space = {k: to_dict(v) for k, v in (arm.space or {}).items()} if arm.space is not None else "adapter-default"
        return {"base": self.base, "method": arm.method, "overrides": arm.overrides, "search_space": space,
                "seeds": self.seeds, "objective": to_dict(self.spec.objective), "sampler": self.spec.sampler.kind}


def _flatten_overrides(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested override mappings -> dotted keys, so ``train: {lr: 1}`` sets one field, not the whole section."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten_overrides(v, key))
        else:
            out[key] = v
    return out


def _check_reserved(keys: list[str], where: str) -> None:
    for k in keys:
        if k in RESERVED_KEYS or k.startswith("tags."):
            raise ConfigError(f"{where}.{k}: the sweep sets {k!r} itself (seeds go in `seeds:`, methods in `methods:`)")


def _parse_space(raw: Any, where: str) -> dict[str, ParamSpec]:
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where}: expected a mapping of run-spec keys to ranges or lists, got {raw!r}")
    space: dict[str, ParamSpec] = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = {"type": "categorical", "choices": value}
        space[str(key)] = build(ParamSpec, value, f"{where}.{key}")
    return space


def load_raw(path: str | Path | None, raw: Mapping[str, Any] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    spec_raw = copy.deepcopy(dict(raw)) if raw is not None else read_yaml(path) if path is not None else {}
    for text in overrides or []:
        key, value = parse_override(text)
        set_dotted(spec_raw, key, value)
    return spec_raw


def load_sweep(path: str | Path | None = None, overrides: list[str] | None = None, *,
               raw: Mapping[str, Any] | None = None, check_runs: bool = True) -> Sweep:
    """Read and validate a sweep spec (file or mapping, plus ``key=value`` overrides).

    Every arm's search space is sampled at its low and high corners and at random, and
    each resulting run spec is resolved, so a bad key or value fails here, not in a trial."""
    where = str(path) if path is not None else "sweep spec"
    try:
        return _load(path, overrides, raw, check_runs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _load(path: str | Path | None, overrides: list[str] | None, raw: Mapping[str, Any] | None, check_runs: bool) -> Sweep:
    spec_raw = load_raw(path, raw, overrides)
    methods_raw = spec_raw.get("methods")
    spec = build(SweepSpec, {k: v for k, v in spec_raw.items() if k != "methods"}, "")
    # ${VAR} in the storage URL comes from the environment (credentials stay out of spec files);
    # spec.storage keeps the reference, the StorageRef the expanded URL
    storage_text = expand_env(spec.storage) if spec.storage else spec.storage
    name = spec.name or (Path(path).stem if path is not None else None)
    if not name:
        raise ConfigError("name: a sweep needs a name (or load it from a file, whose stem is the default)")
    if not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError(f"name: {name!r}: use letters, digits, '.', '_' and '-'")
    base_dir = Path(path).parent if path is not None else Path.cwd()
    if isinstance(spec.base, str):
        bp = Path(spec.base)
        base = read_yaml(bp if bp.is_absolute() else base_dir / bp)
    else:
        base = copy.deepcopy(spec.base)
    if base.get("method") is not None:
        raise ConfigError("base.method: list the methods to compare under `methods:`, not in the base spec")
    base.pop("method", None)
    for k in ("seed", "name", "output_dir"):
        if k in base:
            raise ConfigError(f"base.{k}: the sweep sets {k!r} for every trial; remove it from the base spec")

    # arms
    if methods_raw is None or methods_raw == [] or methods_raw == {}:
        raise ConfigError("methods: name at least one method to sweep, e.g. methods: [dpo, simpo]")
    if isinstance(methods_raw, list):
        if not all(isinstance(m, str) for m in methods_raw):
            raise ConfigError(f"methods: a list must hold method names, got {methods_raw!r}")
        if len(set(methods_raw)) != len(methods_raw):
            raise ConfigError("methods: a method is listed twice; give arms distinct names in a mapping")
        methods_raw = {m: None for m in methods_raw}
    if not isinstance(methods_raw, Mapping):
        raise ConfigError(f"methods: expected a list of names or a mapping, got {methods_raw!r}")
    seeds = list(range(spec.seeds)) if isinstance(spec.seeds, int) else list(spec.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: need at least one seed and no repeats, got {spec.seeds!r}")
    from harness.core.contract import METHODS, load_methods

    load_methods()
    arms: list[Arm] = []
    for label, entry_raw in methods_raw.items():
        label = str(label)
        where = f"methods.{label}"
        if not all(c.isalnum() or c in "._-" for c in label):
            raise ConfigError(f"{where}: arm names use letters, digits, '.', '_' and '-'")
        entry = build(ArmSpec, entry_raw or {}, where)
        method = entry.method or label
        if method not in METHODS:
            raise ConfigError(f"{where}: unknown method {method!r}{did_you_mean(method, METHODS.names())}; "
                              f"choose from: {', '.join(METHODS.names())}")
        fixed = _flatten_overrides(entry.overrides)
        _check_reserved(list(fixed), f"{where}.overrides")
        space = _parse_space(entry.search_space, f"{where}.search_space") if entry.search_space is not None else None
        if space is not None:
            _check_reserved(list(space), f"{where}.search_space")
        grid = None
        if spec.sampler.kind == "grid":
            if space is None:
                raise ConfigError(f"{where}.search_space: the grid sampler needs an explicit grid (lists of values) per method")
            keys = list(space)
            values = [space[k].grid_values(f"{where}.search_space.{k}") for k in keys]
            grid = [dict(zip(keys, combo)) for combo in itertools.product(*values)]
            budget = entry.trials or spec.trials_per_method or len(grid)
            if budget != len(grid):
                raise ConfigError(f"{where}: the grid has {len(grid)} points but the budget is {budget} trials; "
                                  "leave trials_per_method unset for grids")
        else:
            budget = entry.trials or spec.trials_per_method or 0
            if budget < 1:
                raise ConfigError("trials_per_method: set how many trials each method gets (equal budgets)")
        arms.append(Arm(label, method, fixed, space, budget, grid))
    out_dir = Path(spec.output_dir or Path("runs") / name).expanduser().absolute()
    sweep = Sweep(spec, name, Path(path) if path is not None else None, base, arms, seeds, out_dir,
                  parse_storage(storage_text, out_dir))
    if check_runs:
        for arm in arms:
            _check_arm(sweep, arm)
    return sweep


# --------------------------------------------------------------------------- search spaces and run specs


def search_space_fn(arm: Arm) -> Callable[[Any], dict[str, Any]]:
    """``trial -> {dotted key: value}``: the arm's own space, else its adapter's default."""
    if arm.space is not None:
        space = arm.space
        return lambda trial: {k: p.suggest(trial, k) for k, p in space.items()}
    from harness.core.contract import METHODS, load_methods

    load_methods()
    adapter = METHODS.get(arm.method)
    return adapter.search_space


def trial_raw(sweep: Sweep, arm: Arm, params: Mapping[str, Any], number: int, seed: int,
              seed_index: int = 0) -> dict[str, Any]:
    """The raw run spec of one seed of one trial (validated later by ``resolve``)."""
    sets: dict[str, Any] = {"method": arm.method, **arm.overrides, **params}
    raw = merge_raw(sweep.base, sets)
    raw["seed"] = seed
    raw["name"] = sweep.run_dir(arm, number, seed).name
    raw["output_dir"] = str(sweep.output_dir / arm.label)
    tags = raw.get("tags")
    raw["tags"] = {**(tags if isinstance(tags, dict) else {}), **sweep_tags(sweep, arm, number, seed_index)}
    tracking = raw.get("tracking")
    raw["tracking"] = {**(tracking if isinstance(tracking, dict) else {}), "group": sweep.name, "job_type": arm.label}
    return raw


def sweep_tags(sweep: Sweep, arm: Arm, number: int, seed_index: int) -> dict[str, Any]:
    return {"sweep": sweep.name, "method": arm.method, "arm": arm.label, "trial_number": number,
            "study_name": sweep.study_name(arm), "storage": sweep.storage.report_form, "seed_index": seed_index}


def summary_keys(sweep: Sweep, arm: Arm, number: int, seed_index: int) -> dict[str, Any]:
    """Keys each trial run's summary.json gets (``harness.reporting.results`` reads them)."""
    return {"sweep_name": sweep.name, "trial_number": number, "sweep_storage": sweep.storage.report_form,
            "study_name": sweep.study_name(arm), "sweep_objective": sweep.spec.objective.metric,
            "sweep_direction": sweep.spec.objective.direction, "sweep_arm": arm.label, "sweep_seed_index": seed_index}


def trial_timeout(ex: ExecutionSpec, runs: list[Any]) -> tuple[float, str]:
    """How long a trial of these run specs (one per seed) may run, and how that was decided.

    ``execution.trial_timeout_s`` when set; else, per run, ``run_overhead_s`` plus the run's
    optimizer steps times ``step_timeout_s``: steps are ``train.max_steps``, else
    ``epochs x ceil(data.max_samples / (batch_size x grad_accum))``; a run whose size is unknown
    before its data loads gets :data:`UNKNOWN_STEPS_TIMEOUT_S` instead.  A hung trial (a
    deadlocked collective, a stuck download) is killed then, however alive its worker is."""
    if ex.trial_timeout_s is not None:
        return float(ex.trial_timeout_s), "execution.trial_timeout_s"
    total = 0.0
    unknown = 0
    for spec in runs:
        t = spec.train
        steps = t.max_steps
        if steps is None and spec.data.max_samples:
            steps = t.epochs * math.ceil(spec.data.max_samples / max(t.batch_size * t.grad_accum, 1))
        if steps is None:
            unknown += 1
            total += UNKNOWN_STEPS_TIMEOUT_S
            continue
        total += ex.run_overhead_s + steps * ex.step_timeout_s
    how = (f"derived: per run {ex.run_overhead_s:.0f}s + steps x {ex.step_timeout_s:.0f}s "
           "(execution.run_overhead_s, step_timeout_s; or set execution.trial_timeout_s)")
    if unknown:
        how += (f"; {UNKNOWN_STEPS_TIMEOUT_S / 3600:.0f} h for each of {unknown} run(s) whose steps are unknown "
                "before the data loads (set train.max_steps or data.max_samples)")
    return total, how


def _probe_params(arm: Arm) -> list[dict[str, Any]]:
    """Parameter sets that exercise a search space: a random draw, the low corner, the high corner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if arm.grid is not None:
        return arm.grid
    fn = search_space_fn(arm)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    t = study.ask()
    first = fn(t)
    dists = t.distributions
    study.tell(t, 0.0)
    if not isinstance(first, Mapping):
        raise ConfigError(f"methods.{arm.label}: the search space returned {type(first).__name__}, not a mapping")
    sets = [dict(first)]
    for corner in ("low", "high"):
        fixed = {}
        for name, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                fixed[name] = d.choices[0 if corner == "low" else -1]
            elif isinstance(d, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)):
                fixed[name] = d.low if corner == "low" else d.high
        study.enqueue_trial(fixed)
        t = study.ask()
        sets.append(dict(fn(t)))
        study.tell(t, 0.0)
    return sets


def _check_arm(sweep: Sweep, arm: Arm) -> None:
    from harness.training.runner import SpecError, check_spec

    where = f"methods.{arm.label}"
    try:
        probes = _probe_params(arm)
    except ConfigError:
        raise
    except Exception as e:  # optuna rejects a distribution (e.g. step does not divide the range)
        raise ConfigError(f"{where}.search_space: {type(e).__name__}: {e}") from None
    for params in probes:
        _check_reserved(list(params), f"{where}.search_space")
        raw = trial_raw(sweep, arm, params, 0, sweep.seeds[0])
        try:
            spec = resolve(raw)
            check_spec(spec)
        except (ConfigError, SpecError) as e:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise ConfigError(f"{where}: the run spec for ({shown}) is invalid: {e}") from None
        obj = sweep.spec.objective.metric
        if obj.startswith("eval.") and not spec.eval.enabled:
            raise ConfigError(f"objective.metric {obj!r} needs evaluation, but {where} runs with eval.enabled=false")
        if obj.startswith("eval_loss_metrics") and not spec.train.eval_every:
            raise ConfigError(f"objective.metric {obj!r} needs periodic held-out eval: set train.eval_every in the base spec")
        if sweep.spec.pruner.kind != "none" and not spec.train.eval_every:
            raise ConfigError(f"pruner {sweep.spec.pruner.kind!r} prunes on held-out metrics every train.eval_every "
                              f"steps, but {where} has train.eval_every unset")


def lookup_metric(summary: Mapping[str, Any], path: str) -> Any:
    """``eval.gold_reward_mean`` / ``final_metrics.rewards/accuracies`` -> the value in a summary (KeyError if absent)."""
    if path in summary:
        return summary[path]
    for i, ch in enumerate(path):
        if ch == "." and path[:i] in summary and isinstance(summary[path[:i]], Mapping):
            try:
                return lookup_metric(summary[path[:i]], path[i + 1:])
            except KeyError:
                continue
    raise KeyError(path)


def make_sampler(sweep: Sweep, arm: Arm, salt: int = 0) -> Any:
    """The arm's sampler, seeded from the sweep's seed, the arm, and ``salt`` (the trial count at ask time)."""
    import optuna

    seed = int(hashlib.sha256(f"{sweep.spec.sampler.seed}/{arm.label}/{salt}".encode()).hexdigest()[:8], 16)
    kind = sweep.spec.sampler.kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.spec.sampler.n_startup_trials,
                                          constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    assert arm.grid is not None
    keys = list(arm.grid[0]) if arm.grid else []
    space = {k: list(dict.fromkeys(p[k] for p in arm.grid)) for k in keys}
    return optuna.samplers.GridSampler(space, seed=sweep.spec.sampler.seed)


def make_pruner(spec: PrunerSpec, max_steps: int | None) -> Any:
    import optuna

    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, max_resource=max_steps or "auto",
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- budget and status


@dataclass
class ArmState:
    """What an arm's study holds, in the terms of the sweep's budget."""

    budget: int
    fresh: list[int]
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    retried: int = 0
    surplus: int = 0
    running: int = 0
    waiting: int = 0
    #: failed trials whose retry was decided but never enqueued (their worker died in between);
    #: a worker's reaper enqueues it after a grace period, so the arm is not finished yet
    orphans: int = 0

    @property
    def free(self) -> int:
        """Budget slots no trial occupies yet."""
        return max(self.budget - len(self.fresh), 0)

    @property
    def finished(self) -> bool:
        return self.free == 0 and self.running == 0 and self.waiting == 0 and self.orphans == 0


def is_surplus(t: Any) -> bool:
    return bool(t.user_attrs.get("surplus"))


def orphaned_retries(trials: list[Any]) -> list[Any]:
    """Failed trials that want a retry which no trial holds (see :attr:`ArmState.orphans`)."""
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("retry_wanted")
            and not is_surplus(t) and t.number not in retried]


def duplicate_retry(trials: list[Any], trial: Any) -> bool:
    """Whether an earlier trial already retries what ``trial`` retries (two reapers enqueued one
    lost trial's retry): only the lowest-numbered retry of a trial runs."""
    of = trial.user_attrs.get("retry_of")
    return of is not None and any(t.user_attrs.get("retry_of") == of and t.number < trial.number and not is_surplus(t)
                                  for t in trials)


def arm_state(trials: list[Any], budget: int) -> ArmState:
    fresh = sorted(t.number for t in trials if "retry_of" not in t.user_attrs and not is_surplus(t))
    st = ArmState(budget, fresh, orphans=len(orphaned_retries(trials)))
    for t in trials:
        s = t.state.name
        if is_surplus(t):
            st.surplus += 1
        elif s == "COMPLETE":
            st.complete += 1
        elif s == "PRUNED":
            st.pruned += 1
        elif s == "FAIL":
            if t.user_attrs.get("retry_wanted"):
                st.retried += 1
            else:
                st.failed += 1
        elif s == "RUNNING":
            st.running += 1
        elif s == "WAITING":
            st.waiting += 1
    return st


def within_budget(trials: list[Any], number: int, budget: int) -> bool:
    """Whether fresh trial ``number`` holds one of the first ``budget`` slots (it loses a race otherwise)."""
    fresh = sorted(t.number for t in trials if "retry_of" not in t.user_attrs and not is_surplus(t))
    return number in fresh[:budget]


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def sweep_status(sweep: Sweep) -> dict[str, Any]:
    """Per arm: trial counts, the best configuration (mean and spread over seeds), overhead."""
    import optuna

    storage = sweep.storage.open()
    arms = []
    for arm in sweep.arms:
        try:
            study = optuna.load_study(study_name=sweep.study_name(arm), storage=storage)
        except KeyError:
            arms.append({"arm": arm.label, "method": arm.method, "budget": arm.budget, "exists": False})
            continue
        trials = study.get_trials(deepcopy=False)
        st = arm_state(trials, arm.budget)
        done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and not is_surplus(t)]
        values = [float(t.value) for t in done if t.value is not None]
        best = None
        if done:
            sign = 1.0 if sweep.spec.objective.direction == "maximize" else -1.0
            b = max(done, key=lambda t: sign * float(t.value or 0.0))
            best = {"number": b.number, "value": b.value, "std": b.user_attrs.get("value_std"),
                    "n_seeds": len(b.user_attrs.get("values", [])) or None, "params": dict(b.params)}
        over = [t.user_attrs.get("overhead", {}) for t in trials if isinstance(t.user_attrs.get("overhead"), dict)]
        overhead = {k: _mean([o.get(k) for o in over]) for k in
                    ("import_s", "to_first_step_s", "train_s", "after_last_step_s", "eval_s", "trial_wall_s")}
        failures = [{"number": t.number, "reason": t.user_attrs.get("fail_reason", "?"),
                     "retried": bool(t.user_attrs.get("retry_wanted"))}
                    for t in trials if t.state.name == "FAIL" and not is_surplus(t)]
        arms.append({"arm": arm.label, "method": arm.method, "exists": True, **dataclasses.asdict(st),
                     "free": st.free, "best": best, "overhead": overhead, "failures": failures,
                     "value_mean_of_completed": _mean(values),
                     "values_std_of_completed": statistics.pstdev(values) if len(values) > 1 else None})
    return {"sweep": sweep.name, "storage": sweep.storage.display(), "output_dir": str(sweep.output_dir),
            "objective": sweep.spec.objective.metric, "direction": sweep.spec.objective.direction,
            "seeds": sweep.seeds, "arms": arms}


def dashboard(sweep: Sweep, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on the sweep's storage (blocks)."""
    try:
        from optuna_dashboard import run_server
    except ImportError as e:
        raise RuntimeError("optuna-dashboard is not installed: pip install 'align-harness[dashboard]'") from e
    storage = sweep.storage.open()
    run_server(storage, host=host, port=port)


def device_slots(devices: str | None, slots: int | None, gpus_per_trial: int) -> list[dict[str, str]]:
    """Environment of each trial slot: ``--devices 0,1,2,3`` (grouped by ``gpus_per_trial``) or ``--slots N`` on CPU."""
    if devices is not None and slots is not None:
        raise ConfigError("give either --devices or --slots, not both")
    if devices is None and slots is None:
        try:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except ImportError:
            n = 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(n)]
        if n and ids:
            devices = ",".join(ids[:n])
        else:
            slots = 1
    if devices is not None:
        ids = [d.strip() for d in devices.split(",") if d.strip()]
        if not ids:
            raise ConfigError(f"--devices {devices!r}: name at least one device, e.g. --devices 0,1")
        if len(ids) % gpus_per_trial:
            raise ConfigError(f"--devices {devices}: {len(ids)} devices do not split into trials of "
                              f"{gpus_per_trial} GPUs (execution.gpus_per_trial)")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i:i + gpus_per_trial])} for i in range(0, len(ids), gpus_per_trial)]
    assert slots is not None
    if slots < 1:
        raise ConfigError(f"--slots {slots}: need at least one slot")
    # a slot's trial runs gpus_per_trial processes on CPU: the cores are shared by all of them
    threads = max(1, (os.cpu_count() or 1) // (slots * gpus_per_trial))
    env = {"CUDA_VISIBLE_DEVICES": ""}
    if "OMP_NUM_THREADS" not in os.environ:  # keep N CPU trials from oversubscribing the cores
        env["OMP_NUM_THREADS"] = str(threads)
    return [dict(env) for _ in range(slots)]
