"""What ``harness reproduce`` does for one paper, minus running the sweeps (the CLI runs them with
``harness.cli.sweep.run_sweep_here``): plan the experiments its claims need at a budget, then
compute every claim from the stores and write the report.

    harness reproduce simpo --budget quick      # plan -> run sweeps (resumable) -> compute -> report
    harness reproduce simpo --report-only       # compute -> report, from the stores already there
"""

from __future__ import annotations

from pathlib import Path

from harness.core.config import ConfigError
from harness.reproduce.claims import ClaimsFile, for_budget
from harness.reproduce.plan import (
    DEFAULT_RUNS,
    Planned,
    check_claims,
    plan_experiment,
    run_dir,
    searched_keys,
    spec_name,
)
from harness.reproduce.report import ExperimentResult
from harness.reproduce.stats import compute_claim, load_store, objective_column
from harness.sweeps.spec import load_sweep


def experiments_needed(cf: ClaimsFile) -> list[str]:
    """The experiments the paper's active claims use, in claims order."""
    return list(dict.fromkeys(c.experiment for c in cf.active_claims()))


def plan_paper(cf: ClaimsFile, budget: str, runs: str | Path = DEFAULT_RUNS) -> list[Planned]:
    """Prepare data and write the generated spec of every experiment the paper's claims need."""
    if cf.status != "active":
        raise ConfigError(f"{cf.key} is pending: {cf.reason}")
    return [plan_experiment(cf, e, budget, runs) for e in experiments_needed(cf)]


def existing_plan(cf: ClaimsFile, budget: str, runs: str | Path = DEFAULT_RUNS) -> list[Planned]:
    """The experiments as they were run: the generated specs found in the stores (for --report-only)."""
    out = []
    for e in experiments_needed(cf):
        spec_file = run_dir(runs, cf.key, spec_name(cf.experiment(e)), budget) / "sweep.yaml"
        if not spec_file.exists():
            raise ConfigError(f"no store for {cf.key}/{e} at budget {budget!r}: {spec_file} does not exist "
                              f"(run `harness reproduce {cf.key} --budget {budget}` first, or give --runs)")
        sweep = load_sweep(spec_file, check_runs=False)
        claims = [c for c in cf.active_claims() if c.experiment == e]
        check_claims(cf, e, sweep, claims)
        out.append(Planned(cf.key, e, budget, sweep, spec_file, _prepared_meta(spec_file.parent), claims))
    return out


def _prepared_meta(root: Path) -> dict | None:
    import json

    metas = sorted((root / "data").glob("*.json")) if (root / "data").is_dir() else []
    return json.loads(metas[0].read_text()) if metas else None


def compute(cf: ClaimsFile, planned: list[Planned]) -> list[ExperimentResult]:
    """Every claim's statistic, interval and verdict, from the stores of ``planned``."""
    out = []
    for p in planned:
        sw = p.sweep
        searched = {a.label: searched_keys(a) for a in sw.arms}
        store = load_store(sw.output_dir, searched, objective_column(sw.spec.objective.metric),
                           sw.spec.objective.direction) if sw.output_dir.exists() else None
        if store is None:
            raise ConfigError(f"{cf.key}/{p.experiment}: the store {sw.output_dir} does not exist")
        budget = cf.experiment(p.experiment).budgets.get(p.budget)
        claims = [for_budget(c, budget) if budget is not None else c for c in p.claims]
        out.append(ExperimentResult(p, store, [compute_claim(c, store, cf.bootstrap) for c in claims]))
    return out
