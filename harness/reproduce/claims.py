"""Claims files: what a paper claims, the sweep that tests it, the statistic compared and what counts as agreement.

    harness reproduce --list                      # every claims file in sweeps/claims/, loaded by this module
    python -c "from harness.reproduce.claims import load_claims; print(load_claims('sweeps/claims/simpo.yaml'))"

One YAML file per paper, ``sweeps/claims/<paper>.yaml`` (the file's stem is the paper's key on
the command line).  Everything is typed and read with the project's strict loader
(:func:`harness.core.config.build`): an unknown key, a wrong type or an unknown statistic kind
is an error that names the key and, where it can, what was meant.  Adding a claim is writing
YAML: no code changes.  The schema, top down::

    paper:      {title, authors, arxiv, url}
    status:     active | pending          # pending: listed by --list with `reason`, never run
    reason:     why a pending paper is pending
    bootstrap:  {resamples: 2000, seed: 0, level: 0.95, prompts: true}
    experiments:                          # name -> one use of a sweep spec
      <name>:
        spec: sweeps/<file>.yaml          # an existing sweep spec (validated by harness.sweeps.spec.load_sweep)
        description: ...
        prepare: {kind: relabel_pairs, world, split, flip_fraction, max_rows, seed, target}   # optional
        budgets:                          # tiny (tests) | quick (CPU laptop) | full (GPU node, hub models)
          <budget>: {seeds, trials, steps, model, set, overrides, hardware, network, gpu_hours, note}
        unavailable: {<budget>: why}      # budgets that cannot exist for this experiment, with the reason
    claims:
      - id: short-id
        claim: the paper's claim in words
        source: figure / table / section of the paper
        paper_numbers: the paper's numbers (or "qualitative: ..." when it gives none)
        deviation: how our setting differs from the paper's
        experiment: <name>
        statistic:
          kind: difference | spread | trend | value | frontier
          metric: gold_reward_mean            # a results-table column (harness.reporting.results)
          a: {arm, at: {key: value}, where: {metric: {min, max}}, metric, stage}
          b: {...}                            # difference: a - b; frontier: a over b's frontier
          over: method.beta                   # spread / trend: the grid key
          log_x: false                        # trend: slope against log(x)
          x_value: null                       # trend: x is this metric of each grid point (total_params for model names)
          x_metric: kl_mean                   # frontier: the x axis
          measure: share | area               # frontier
          anchor: true                        # frontier: both frontiers start at (0, the reference's value)
          objective: null                     # selection metric (default: the sweep's objective)
          direction: null                     # its direction (default: the sweep's)
        agreement: {direction: greater | less | at_least | at_most | within, threshold, low, high}

Hyperparameters searched live in the sweep spec and the budget's overrides, both declared here
before anything runs, with equal budgets across the compared arms (checked at load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.core.config import ConfigError, build, read_yaml
from harness.core.registry import did_you_mean

#: the checkout this package belongs to: claims files and sweep specs are found relative to it
ROOT = Path(__file__).resolve().parents[2]
CLAIMS_DIR = ROOT / "sweeps" / "claims"
BUDGETS = ("tiny", "quick", "full")
KINDS = ("difference", "spread", "trend", "value", "frontier")

#: eval metrics (results-table columns, harness.reporting.results) a statistic may compare
KNOWN_METRICS = (
    "gold_reward_mean", "baseline_gold_reward_mean", "win_rate", "length_controlled_winrate",
    "discrete_win_rate", "avg_length", "kl_mean", "kl_per_token", "rm_score_mean", "baseline_rm_score_mean",
    "rm_accuracy", "rm_margin_mean", "final_loss", "trainable_params", "total_params", "trainable_share",
    "wall_time_s", "steps",
)
#: prefixes of flattened summary sections (any key below them is accepted); ``rounds/<round>/<key>``: a
#: pipeline's per-round numbers (its summary's ``rounds`` list, read by harness.reproduce.stats)
METRIC_PREFIXES = ("final_metrics/", "eval_loss_metrics/", "last/", "lm_eval/", "judges/", "gold_reward_by_group/",
                   "baseline_gold_reward_by_group/", "rounds/")
#: ``gain/<metric>``: a run's metric minus its ``baseline_<metric>`` (what the evaluation measured for the
#: starting model on the same prompts), e.g. the gain of instruction tuning over each run's untuned base
GAIN = "gain/"


def check_metric(name: str, where: str) -> None:
    """A statistic's metric must be a known results-table column (typos are named with a hint)."""
    if name.startswith(GAIN):
        base = name[len(GAIN):]
        check_metric(base, where)
        try:
            check_metric("baseline_" + base, where)
        except ConfigError:
            raise ConfigError(f"{where}: {name!r}: {base!r} has no baseline_{base} column to subtract") from None
        return
    if name in KNOWN_METRICS or name.startswith(METRIC_PREFIXES):
        return
    raise ConfigError(f"{where}: unknown metric {name!r}{did_you_mean(name, list(KNOWN_METRICS))}; use one of "
                      f"{', '.join(KNOWN_METRICS)} or a column under {', '.join(METRIC_PREFIXES)}")


# --------------------------------------------------------------------------- schema


@dataclass
class PaperRef:
    title: str = ""
    authors: str = ""
    #: arXiv id, e.g. 2405.14734 ("" when the paper has none)
    arxiv: str = ""
    url: str = ""

    def validate(self) -> None:
        if not self.title or not self.authors:
            raise ValueError("paper.title and paper.authors are required")


@dataclass
class BootstrapSpec:
    """How intervals are computed (harness.reproduce.stats): resamples, the generator's seed, the level."""

    resamples: int = 2000
    seed: int = 0
    level: float = 0.95
    #: resample eval prompts inside each run where per-prompt values exist (the second level)
    prompts: bool = True

    def validate(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {self.resamples}")
        if not 0.5 < self.level < 1.0:
            raise ValueError(f"level must be in (0.5, 1), got {self.level}")


@dataclass
class Budget:
    """One budget of an experiment: what it changes in the sweep spec (declared before running)."""

    #: the sweep's ``seeds`` (a count or a list)
    seeds: int | list[int] | None = None
    #: the sweep's ``trials_per_method`` (non-grid samplers)
    trials: int | None = None
    #: ``base.train.max_steps`` (an arm that searches train.max_steps sets it through ``set``)
    steps: int | None = None
    #: ``base.model.name_or_path`` (a hub id for ``full``)
    model: str | None = None
    #: mapping deep-merged into the sweep spec (search-space keys stay literal: ``{"train.lr": [..]}``)
    set: dict[str, Any] = field(default_factory=dict)
    #: ``key=value`` overrides as ``harness sweep SPEC key=value`` takes them (dotted keys)
    overrides: list[str] = field(default_factory=list)
    #: where it is meant to run: ``gpu`` budgets are refused on a machine without CUDA
    hardware: Literal["cpu", "gpu"] = "cpu"
    #: needs the hub (models / datasets downloaded): validated offline, run where there is network
    network: bool = False
    #: declared (not measured) GPU-hours of a GPU budget, shown by --list
    gpu_hours: float | None = None
    #: metrics read under another name on this budget: hub data has no gold scorer, so a full
    #: budget reads ``gold_reward_mean`` as ``rm_score_mean`` (its judge's reward model)
    metrics: dict[str, str] = field(default_factory=dict)
    #: claim id -> the agreement rule on this budget (a tolerance in the remapped metric's units)
    agreements: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def validate(self) -> None:
        for name in ("trials", "steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        for o in self.overrides:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not of the form key=value")


@dataclass
class PrepareSpec:
    """A derived data file made before the sweep (kept beside its runs), e.g. noisy or noise-free labels."""

    #: ``relabel_pairs``: a built-in world's preference pairs relabelled by its gold scorer (ties
    #: dropped), then ``flip_fraction`` of them flipped at random: label noise of a known rate
    kind: Literal["relabel_pairs"] = "relabel_pairs"
    #: the built-in world (``harness worlds``) whose split is relabelled
    world: str = ""
    split: str = "paired"
    flip_fraction: float = 0.0
    max_rows: int | None = None
    seed: int = 0
    #: where the file's path goes in the sweep spec: key paths, e.g. [[base, data, source]] or
    #: [[methods, offline, overrides, data.source]] (a list of names, so dotted keys stay whole)
    target: list[list[str]] = field(default_factory=list)

    def validate(self) -> None:
        if not self.world:
            raise ValueError("world is required (a built-in world with a gold scorer)")
        if not 0.0 <= self.flip_fraction < 0.5:
            raise ValueError(f"flip_fraction must be in [0, 0.5), got {self.flip_fraction}")
        if not self.target or any(not path for path in self.target):
            raise ValueError("target: name at least one key path, e.g. [[base, data, source]]")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")


@dataclass
class Experiment:
    """One use of a sweep spec: the spec, an optional derived data file, and its budgets."""

    #: sweep spec, relative to the checkout (``sweeps/lora-rank.yaml``)
    spec: str = ""
    description: str = ""
    prepare: PrepareSpec | None = None
    #: budget name -> Budget (built by :func:`load_claims`)
    budgets: dict[str, Any] = field(default_factory=dict)
    #: budget name -> why this experiment has none (shown by --list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.spec:
            raise ValueError("spec is required (a sweep spec such as sweeps/lora-rank.yaml)")

    @property
    def spec_path(self) -> Path:
        p = Path(self.spec)
        return p if p.is_absolute() else ROOT / p


@dataclass
class Bounds:
    min: float | None = None
    max: float | None = None

    def validate(self) -> None:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")

    def holds(self, v: float) -> bool:
        return math.isfinite(v) and (self.min is None or v >= self.min) and (self.max is None or v <= self.max)


@dataclass
class Selector:
    """Which configuration of which arm: the arm's best by the objective among those matching
    ``at`` (fixed grid values) and ``where`` (bounds on a configuration's mean metric)."""

    arm: str = ""
    #: grid values the configuration must have (keys of the arm's search space); ``max`` / ``min``: the
    #: largest / smallest value the arm ran (``train.max_steps: max`` is the longest training at any budget)
    at: dict[str, Any] = field(default_factory=dict)
    #: metric -> {min, max}: only configurations whose mean metric lies within (e.g. kl_mean <= 5)
    where: dict[str, Any] = field(default_factory=dict)
    #: this side's metric when it differs from the statistic's (e.g. baseline_gold_reward_mean)
    metric: str | None = None
    #: a pipeline stage's run (``stages/<stage>`` of the trial), e.g. the RLHF chain's ``reward``
    stage: str | None = None

    def validate(self) -> None:
        if not self.arm:
            raise ValueError("arm is required")
        self.where = {str(m): build(Bounds, b, f"where.{m}") for m, b in self.where.items()}


@dataclass
class Statistic:
    kind: Literal["difference", "spread", "trend", "value", "frontier"] = "difference"
    metric: str = ""
    a: Selector | None = None
    b: Selector | None = None
    over: str | None = None
    log_x: bool = False
    #: trend: each grid point's x is this metric of its chosen configuration (its mean over seeds), not the
    #: grid value: ``total_params`` places a grid of model names at their sizes
    x_value: str | None = None
    x_metric: str = "kl_mean"
    measure: Literal["share", "area"] = "share"
    anchor: bool = True
    objective: str | None = None
    direction: Literal["maximize", "minimize"] | None = None

    def validate(self) -> None:
        if not self.metric:
            raise ValueError("metric is required (a results-table column, e.g. gold_reward_mean)")
        need = {"difference": ("a", "b"), "spread": ("a", "over"), "trend": ("a", "over"), "value": ("a",),
                "frontier": ("a", "b")}[self.kind]
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.kind} statistic needs {name!r}")
        unused = {"b": self.kind not in ("difference", "frontier"), "over": self.kind not in ("spread", "trend")}
        for name, bad in unused.items():
            if bad and getattr(self, name) is not None:
                raise ValueError(f"{name!r} has no meaning for a {self.kind} statistic")
        if self.x_value is not None and self.kind != "trend":
            raise ValueError(f"'x_value' has no meaning for a {self.kind} statistic (trend only)")


@dataclass
class Agreement:
    """What counts as agreeing with the paper, decided on the statistic's interval (harness.reproduce.stats.verdict)."""

    #: greater / less: strictly beyond the threshold; at_least / at_most: not beyond it the
    #: wrong way (non-inferiority); within: inside [low, high] (equivalence)
    direction: Literal["greater", "less", "at_least", "at_most", "within"] = "greater"
    threshold: float | None = None
    low: float | None = None
    high: float | None = None

    def validate(self) -> None:
        if self.direction == "within":
            if self.low is None or self.high is None:
                raise ValueError("direction 'within' needs low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is above high ({self.high})")
            if self.threshold is not None:
                raise ValueError("direction 'within' takes low/high, not threshold")
        else:
            if self.threshold is None:
                raise ValueError(f"direction {self.direction!r} needs a threshold")
            if self.low is not None or self.high is not None:
                raise ValueError(f"direction {self.direction!r} takes threshold, not low/high")

    def words(self) -> str:
        """The rule as a short formula: ``> 0``, ``>= -0.1``, ``in [-0.1, 0.1]``."""
        if self.direction == "within":
            return f"in [{self.low:g}, {self.high:g}]"
        sym = {"greater": ">", "less": "<", "at_least": ">=", "at_most": "<="}[self.direction]
        return f"{sym} {self.threshold:g}"


@dataclass
class Claim:
    id: str = ""
    claim: str = ""
    #: figure / table / section of the paper
    source: str = ""
    #: the paper's numbers, or "qualitative: ..." when it gives none
    paper_numbers: str = ""
    #: how our setting differs from the paper's
    deviation: str = ""
    #: the experiment that tests it (pending papers may leave it empty)
    experiment: str = ""
    statistic: Statistic | None = None
    agreement: Agreement | None = None

    def validate(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_" for c in self.id):
            raise ValueError(f"id {self.id!r}: use letters, digits, '-' and '_'")
        if not self.claim or not self.source:
            raise ValueError("claim and source are required")


@dataclass
class ClaimsFile:
    paper: PaperRef = field(default_factory=PaperRef)
    status: Literal["active", "pending"] = "active"
    reason: str = ""
    bootstrap: BootstrapSpec = field(default_factory=BootstrapSpec)
    #: experiment name -> Experiment (built by :func:`load_claims`)
    experiments: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    #: the paper's key (the file's stem) and the file, set by :func:`load_claims` (not keys of the file)
    key: str = field(default="", init=False)
    path: Path | None = field(default=None, init=False)

    def experiment(self, name: str) -> Experiment:
        return self.experiments[name]

    def active_claims(self) -> list[Claim]:
        return self.claims if self.status == "active" else []


# --------------------------------------------------------------------------- loading


def _prebuilt(cls: type, raw: Any, key: str, where: str) -> None:
    """Build ``raw[key]`` as ``cls`` in place, so its errors name the key: an optional dataclass field
    (``X | None``) is otherwise reported by the core loader as "expected X | null", without the cause."""
    if isinstance(raw, dict) and isinstance(raw.get(key), dict):
        raw[key] = build(cls, raw[key], f"{where}.{key}")


def build_claim(raw: Any, where: str = "claim") -> Claim:
    """One claim from its mapping, every nested section's errors naming their key."""
    if isinstance(raw, dict):
        raw = dict(raw)
        if isinstance(raw.get("statistic"), dict):
            stat = dict(raw["statistic"])
            for side in ("a", "b"):
                _prebuilt(Selector, stat, side, f"{where}.statistic")
            raw["statistic"] = stat
        _prebuilt(Statistic, raw, "statistic", where)
        _prebuilt(Agreement, raw, "agreement", where)
    return build(Claim, raw, where)


def _build_map(cls: type, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of names to sections, got {raw!r}")
    return {str(k): build(cls, v, f"{where}.{k}") for k, v in raw.items()}


def _check_selector(sel: Selector, where: str) -> None:
    if sel.metric is not None:
        check_metric(sel.metric, f"{where}.metric")
    for m in sel.where:
        check_metric(m, f"{where}.where")


def load_claims(path: str | Path) -> ClaimsFile:
    """Read and check one claims file; the error names the file and the key."""
    p = Path(path)
    try:
        return _load(p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _load(p: Path) -> ClaimsFile:
    raw = read_yaml(p)
    if isinstance(raw.get("claims"), list):
        raw["claims"] = [build_claim(c, f"claims[{i}]") for i, c in enumerate(raw["claims"])]
    if isinstance(raw.get("experiments"), dict):
        raw["experiments"] = {k: dict(v) if isinstance(v, dict) else v for k, v in raw["experiments"].items()}
        for name, exp in raw["experiments"].items():
            _prebuilt(PrepareSpec, exp, "prepare", f"experiments.{name}")
    cf = build(ClaimsFile, raw)
    cf.key, cf.path = p.stem, p
    if not all(c.isalnum() or c in "-_" for c in cf.key):
        raise ConfigError(f"file name {p.name!r}: the paper's key uses letters, digits, '-' and '_'")
    cf.experiments = _build_map(Experiment, raw.get("experiments"), "experiments")
    for name, exp in cf.experiments.items():
        exp.budgets = _build_map(Budget, exp.budgets, f"experiments.{name}.budgets")
        for bname, b in exp.budgets.items():
            where = f"experiments.{name}.budgets.{bname}"
            for src, dst in b.metrics.items():
                check_metric(str(src), f"{where}.metrics")
                check_metric(str(dst), f"{where}.metrics.{src}")
            b.agreements = {str(k): build(Agreement, v, f"{where}.agreements.{k}") for k, v in b.agreements.items()}
        for b in [*exp.budgets, *exp.unavailable]:
            if b not in BUDGETS:
                raise ConfigError(f"experiments.{name}: unknown budget {b!r}{did_you_mean(b, list(BUDGETS))}; "
                                  f"budgets are {', '.join(BUDGETS)}")
        both = set(exp.budgets) & set(exp.unavailable)
        if both:
            raise ConfigError(f"experiments.{name}: budget {sorted(both)[0]!r} is both defined and unavailable")
    if cf.status == "pending":
        if not cf.reason:
            raise ConfigError("reason: a pending paper says why it is pending")
    elif not cf.claims:
        raise ConfigError("claims: an active paper needs at least one claim (or status: pending and a reason)")
    seen: set[str] = set()
    for i, c in enumerate(cf.claims):
        where = f"claims[{i}] ({c.id})"
        if c.id in seen:
            raise ConfigError(f"{where}: id {c.id!r} is used twice")
        seen.add(c.id)
        if cf.status == "pending" and not c.experiment:
            continue
        if not c.experiment:
            raise ConfigError(f"{where}.experiment: name the experiment that tests the claim")
        if c.experiment not in cf.experiments:
            raise ConfigError(f"{where}.experiment: unknown experiment {c.experiment!r}"
                              f"{did_you_mean(c.experiment, list(cf.experiments))}; defined: "
                              f"{', '.join(cf.experiments) or 'none'}")
        if c.statistic is None or c.agreement is None:
            raise ConfigError(f"{where}: statistic and agreement are required")
        check_metric(c.statistic.metric, f"{where}.statistic.metric")
        if c.statistic.kind == "frontier":
            check_metric(c.statistic.x_metric, f"{where}.statistic.x_metric")
        if c.statistic.x_value is not None:
            check_metric(c.statistic.x_value, f"{where}.statistic.x_value")
        for side in ("a", "b"):
            sel = getattr(c.statistic, side)
            if sel is not None:
                _check_selector(sel, f"{where}.statistic.{side}")
    for name, exp in cf.experiments.items():
        users = {c.id for c in cf.claims if c.experiment == name}
        for bname, b in exp.budgets.items():
            for cid in b.agreements:
                if cid not in users:
                    raise ConfigError(f"experiments.{name}.budgets.{bname}.agreements: no claim {cid!r} uses "
                                      f"experiment {name!r}{did_you_mean(cid, sorted(users))}")
    return cf


def for_budget(claim: Claim, budget: Budget) -> Claim:
    """The claim as computed on ``budget``: its metrics renamed by ``budget.metrics`` and its rule
    replaced by ``budget.agreements[claim.id]`` when the budget declares one."""
    st = claim.statistic
    if st is None:
        return claim

    def m(name: str) -> str:
        return budget.metrics.get(name, name)

    def m_opt(name: str | None) -> str | None:
        return m(name) if name is not None else None

    def sel(s: Selector | None) -> Selector | None:
        if s is None:
            return None
        return replace(s, metric=m_opt(s.metric), where={m(k): v for k, v in s.where.items()})

    stat = replace(st, metric=m(st.metric) or st.metric, x_metric=m(st.x_metric) or st.x_metric,
                   x_value=m_opt(st.x_value), a=sel(st.a),
                   b=sel(st.b), objective=m_opt(st.objective))
    return replace(claim, statistic=stat, agreement=budget.agreements.get(claim.id, claim.agreement))


def claims_files(directory: str | Path = CLAIMS_DIR) -> list[Path]:
    return sorted(Path(directory).glob("*.yaml"))


def load_all(directory: str | Path = CLAIMS_DIR) -> dict[str, ClaimsFile]:
    """Every claims file of ``directory``, by paper key."""
    return {p.stem: load_claims(p) for p in claims_files(directory)}


def find_paper(name: str, directory: str | Path = CLAIMS_DIR) -> ClaimsFile:
    paths = {p.stem: p for p in claims_files(directory)}
    if name not in paths:
        raise ConfigError(f"no claims file for paper {name!r}{did_you_mean(name, list(paths))}; "
                          f"papers: {', '.join(paths) or 'none'} (in {directory})")
    return load_claims(paths[name])
