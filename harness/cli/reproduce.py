"""``harness reproduce``: run what a paper's claims need, compute each claim with a bootstrap interval, write the report.

    harness reproduce --list                     # papers, claims, the specs that test them, expected CPU/GPU time
    harness reproduce simpo                      # runs what is missing (resumable), then writes reports/simpo.md
    harness reproduce all --budget quick         # every active paper at its CPU budget
    harness reproduce simpo --report-only        # the report again, from the stores (no training)
    harness reproduce simpo --calibrate          # measure the CPU cost of its quick budget (tiny real runs)
    harness worker runs/reproduce/simpo/simpo-vs-dpo/quick/sweep.yaml   # more workers join a running one

Claims files live in ``sweeps/claims/`` (schema: ``harness.reproduce.claims``); runs go under
``runs/reproduce/<paper>/<spec>/<budget>/`` (``--runs DIR``); reports to the checkout's
``reports/`` (``--reports DIR``).  Registered by ``harness.cli.main`` (``EXTENSIONS``).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", markup=True)
    raise typer.Exit(code)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not calibrated"
    return f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"


def _list(papers: dict[str, Any], runs: Path) -> None:
    from harness.core.config import ConfigError
    from harness.reporting.tables import Table
    from harness.reporting.terminal import print_table
    from harness.reproduce.claims import BUDGETS
    from harness.reproduce.plan import estimate, load_calibration, plan_experiment

    calibration = load_calibration()
    rows, pending = [], []
    total_quick: float | None = 0.0
    for key, cf in papers.items():
        if cf.status == "pending":
            pending.append(f"{key} ({cf.paper.title}): pending: {cf.reason}")
            for c in cf.claims:
                rows.append([key, c.id, c.claim, c.source, "pending", "", "", ""])
            continue
        plans: dict[tuple[str, str], Any] = {}
        for c in cf.active_claims():
            exp = cf.experiment(c.experiment)
            cells = {}
            for budget in BUDGETS:
                if budget in exp.unavailable:
                    cells[budget] = f"none: {exp.unavailable[budget]}"
                    continue
                if budget not in exp.budgets:
                    cells[budget] = "none"
                    continue
                if (c.experiment, budget) not in plans:
                    try:
                        plans[(c.experiment, budget)] = plan_experiment(cf, c.experiment, budget, runs, write=False,
                                                                        check_runs=False)
                    except ConfigError as e:
                        plans[(c.experiment, budget)] = e
                p = plans[(c.experiment, budget)]
                if isinstance(p, ConfigError):
                    cells[budget] = f"invalid: {p}"
                    continue
                b = exp.budgets[budget]
                est = estimate(p, calibration)
                runs_seeds = f"{est.runs} runs ({len(p.sweep.seeds)} seeds)"
                if b.hardware == "gpu":
                    gh = f"{b.gpu_hours:g} GPU-h declared" if b.gpu_hours is not None else "GPU"
                    cells[budget] = f"{runs_seeds}, {gh}" + (", network" if b.network else "")
                else:
                    cells[budget] = f"{runs_seeds}, CPU {_minutes(est.seconds)}"
            rows.append([key, c.id, c.claim, c.source, f"{c.statistic.kind}: {exp.spec}",
                         cells["tiny"], cells["quick"], cells["full"]])
        for (_, budget), p in plans.items():
            if budget == "quick" and not isinstance(p, ConfigError) and total_quick is not None:
                quick = estimate(p, calibration)
                total_quick = None if quick.seconds is None else total_quick + quick.seconds
    table = Table(["paper", "claim", "what it says", "paper's figure/table", "statistic: spec", "tiny (tests)",
                   "quick (CPU)", "full (GPU node)"], rows)
    print_table(console, table, title="harness reproduce: claims", keys=2,
                wrap=("what it says", "paper's figure/table", "statistic: spec", "tiny (tests)", "quick (CPU)",
                      "full (GPU node)"),
                notes=[*pending,
                       "CPU estimates: sweeps/claims/cpu-calibration.json (harness reproduce --calibrate), one trial at "
                       f"a time on {calibration.get('machine', {}).get('cpus', '?')} cores of "
                       f"{calibration.get('machine', {}).get('host', 'an unknown machine')}; an experiment used by "
                       "several claims runs once. All quick budgets: "
                       + (_minutes(total_quick) if total_quick is not None else "some not calibrated"),
                       "GPU-hours of full budgets are declared in the claims files, not measured."])


def _papers(name: str | None) -> dict[str, Any]:
    from harness.core.config import ConfigError
    from harness.reproduce.claims import find_paper, load_all

    try:
        if name in (None, "all"):
            return load_all()
        return {name: find_paper(name)}
    except ConfigError as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


def _gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def register(app: typer.Typer) -> None:
    @app.command()
    def reproduce(
        paper: str = typer.Argument(None, help="a paper's key (sweeps/claims/<paper>.yaml) or 'all'"),
        list_: bool = typer.Option(False, "--list", help="papers, claims, specs and expected time; runs nothing"),
        budget: str = typer.Option("quick", "--budget", help="tiny (tests) | quick (CPU laptop) | full (GPU node)"),
        runs: Path = typer.Option(Path("runs") / "reproduce", "--runs", help="root of the reproduction stores"),
        reports: Path = typer.Option(None, "--reports", help="where reports go (default: the checkout's reports/)"),
        slots: int = typer.Option(None, "--slots", help="CPU: trials at a time"),
        devices: str = typer.Option(None, "--devices", help="GPU ids, e.g. 0,1,2,3"),
        report_only: bool = typer.Option(False, "--report-only", help="no training: the report from the stores"),
        calibrate: bool = typer.Option(False, "--calibrate", help="measure CPU cost per arm (tiny real runs)"),
    ) -> None:
        """Reproduce a paper's claims: run the sweeps that test them, compute each statistic with a
        two-level bootstrap interval, decide agrees / disagrees / inconclusive, write reports/<paper>.md."""
        from harness.core.config import ConfigError
        from harness.reproduce.claims import BUDGETS, ROOT

        if list_:
            _list(_papers(paper), runs)
            return
        if paper is None:
            _fail("name a paper (or 'all'); `harness reproduce --list` shows them")
        if budget not in BUDGETS:
            _fail(f"--budget {budget!r}: choose from {', '.join(BUDGETS)}")
        papers = _papers(paper)
        out_dir = reports if reports is not None else ROOT / "reports"
        if calibrate:
            _calibrate(papers, budget, runs)
            return
        failed = False
        for key, cf in papers.items():
            if cf.status == "pending":
                console.print(f"{key}: pending ({cf.reason}); skipped", markup=False)
                continue
            try:
                _one(cf, budget, runs, out_dir, slots, devices, report_only)
            except ConfigError as e:
                if paper != "all":
                    _fail(str(e))
                console.print(f"{key}: skipped: {e}", markup=False)
                failed = True
        if failed:
            console.print("some papers were skipped (above)", markup=False)


def _one(cf: Any, budget: str, runs: Path, out_dir: Path, slots: int | None, devices: str | None,
         report_only: bool) -> None:
    from harness.reproduce.engine import compute, existing_plan, plan_paper
    from harness.reproduce.plan import budget_of
    from harness.reproduce.report import write_report

    t0 = time.perf_counter()
    needed = list(dict.fromkeys(c.experiment for c in cf.active_claims()))
    for e in needed:
        b = budget_of(cf, e, budget)  # a missing budget fails before anything runs
        if b.hardware == "gpu" and not report_only and not _gpu() and devices is None:
            from harness.core.config import ConfigError

            raise ConfigError(f"{cf.key}/{e}: the {budget!r} budget is for a GPU node and this machine has no CUDA "
                              "device (use --budget quick on a CPU, or --report-only)")
    command = "harness reproduce " + " ".join(shlex.quote(a) for a in [cf.key, "--budget", budget, "--runs", str(runs)])
    if report_only:
        planned = existing_plan(cf, budget, runs)
    else:
        from harness.cli.sweep import run_sweep_here

        planned = plan_paper(cf, budget, runs)
        for p in planned:
            console.print(f"[bold]{cf.key}/{p.experiment}[/] ({budget}): {p.spec_file}", markup=True)
            run_sweep_here(p.sweep, slots, devices, None)
    console.print(f"{cf.key}: computing {sum(len(p.claims) for p in planned)} claim(s) "
                  f"({cf.bootstrap.resamples} bootstrap resamples each)", markup=False)
    results = compute(cf, planned)
    md = write_report(cf, results, out_dir, command=command, budget=budget,
                      elapsed_s=None if report_only else time.perf_counter() - t0)
    for er in results:
        for r in er.results:
            from harness.reproduce.report import interval_text

            console.print(f"  {r.claim.id}: {interval_text(r.value, r.lo, r.hi)} -> {r.verdict}", markup=False)
    console.print(f"report: {md}\n        {md.with_suffix('.html')}", markup=False)


def _calibrate(papers: dict[str, Any], budget: str, runs: Path) -> None:
    import tempfile

    from harness.core.config import ConfigError
    from harness.reproduce.engine import experiments_needed
    from harness.reproduce.plan import calibrate, plan_experiment, save_calibration

    entries: dict[str, Any] = {}
    for key, cf in papers.items():
        if cf.status != "active":
            continue
        for e in experiments_needed(cf):
            exp = cf.experiment(e)
            if budget in exp.budgets and exp.budgets[budget].hardware == "gpu" and not _gpu():
                console.print(f"{key}/{e}: skipped: a GPU budget", markup=False)
                continue
            console.print(f"{key}/{e}:", markup=False)
            with tempfile.TemporaryDirectory(prefix="calib-") as tmp:
                try:  # a scratch store: the calibration runs need the real derived data file
                    p = plan_experiment(cf, e, budget, Path(tmp) / "store")
                except ConfigError as ex:
                    console.print(f"  skipped: {ex}", markup=False)
                    continue
                entries.update(calibrate(p, Path(tmp) / "runs", log=lambda m: console.print(m, markup=False)))
    path = save_calibration(entries)
    console.print(f"calibration: {len(entries)} arm(s) measured -> {path}", markup=False)
