"""Sweep commands of the ``harness`` CLI (registered by ``harness.cli.main``).

    harness sweep sweeps/quickstart.yaml [key=value ...] [--slots N | --devices 0,1]
    harness sweep status sweeps/quickstart.yaml [--json]
    harness worker sweeps/quickstart.yaml --devices 0,1,2,3      # join from another node
    harness dashboard sweeps/quickstart.yaml [--port 8080]

``key=value`` overrides edit the sweep spec (``trials_per_method=2``,
``base.train.max_steps=20``, ``storage=journal:/shared/sweep.log``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import typer
from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
err = Console(stderr=True, highlight=False)


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def _split(args: list[str]) -> tuple[str, list[str]]:
    specs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(specs) != 1:
        _fail(f"give exactly one sweep spec file, got {specs or 'none'}")
    return specs[0], overrides


def _load(args: list[str], check_runs: bool = True) -> Any:
    from harness.core.config import ConfigError
    from harness.sweeps.spec import load_sweep

    path, overrides = _split(args)
    try:
        return load_sweep(path, overrides, check_runs=check_runs)
    except ConfigError as e:
        _fail(str(e))


def _with_devices(sweep: Any, per_trial: int | None) -> Any:
    """This worker's devices per trial: a property of the node, not of the sweep's definition."""
    if per_trial is not None:
        sweep.spec.execution.gpus_per_trial = per_trial
    return sweep


def _sigterm_is_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _describe(sweep: Any) -> None:
    arms = ", ".join(f"{a.label}" + (f" ({a.method})" if a.method != a.label else "") for a in sweep.arms)
    budgets = {a.budget for a in sweep.arms}
    budget = f"{budgets.pop()} trials each" if len(budgets) == 1 else \
        "trials " + ", ".join(f"{a.label}={a.budget}" for a in sweep.arms) + " (unequal)"
    s = sweep.spec
    console.print(f"[bold]sweep {sweep.name}[/]: {arms}; {budget} x {len(sweep.seeds)} seed(s); "
                  f"sampler {s.sampler.kind} (seed {s.sampler.seed}), pruner {s.pruner.kind}; "
                  f"objective {s.objective.direction} {s.objective.metric}")
    console.print(f"storage {sweep.storage.display()}  runs {sweep.output_dir}", markup=False)


def _run_worker(sweep: Any, slots: int | None, devices: str | None, salt: int, max_trials: int | None) -> None:
    from harness.core.config import ConfigError
    from harness.sweeps.spec import device_slots
    from harness.sweeps.worker import Worker

    try:
        envs = device_slots(devices, slots, sweep.spec.execution.gpus_per_trial)
    except ConfigError as e:
        _fail(str(e))
    where = ", ".join(e.get("CUDA_VISIBLE_DEVICES") or "cpu" for e in envs)
    console.print(f"worker: {len(envs)} slot(s) ({where})", markup=False)
    _sigterm_is_interrupt()
    worker = Worker(sweep, envs, log=lambda m: console.print(m, markup=False), salt=salt, max_trials=max_trials)
    try:
        n = worker.run()
    except KeyboardInterrupt:
        err.print("interrupted: running trials were failed as 'interrupted' and re-queued; "
                  "run the same command again to resume")
        raise typer.Exit(130) from None
    except ConfigError as e:
        _fail(str(e))
    console.print(f"worker done: ran {n} trial(s)")


def run_sweep_here(sweep: Any, slots: int | None, devices: str | None, max_trials: int | None) -> None:
    """What ``harness sweep SPEC`` does (and the quickstart): describe, create the studies once,
    work through the trials here, then print the status table."""
    from harness.core.config import ConfigError
    from harness.sweeps.spec import sweep_status
    from harness.sweeps.storage import ensure_studies

    _describe(sweep)
    try:
        ensure_studies(sweep)
    except ConfigError as e:
        _fail(str(e))
    _run_worker(sweep, slots, devices, 0, max_trials)
    print_status(sweep_status(sweep))


def print_status(status: dict[str, Any]) -> None:
    """Per arm: trial counts, the best configuration (objective ± 95% CI over its seeds), mean
    overheads; split into panels that fit the terminal (readable at 80 columns)."""
    from harness.reporting.intervals import CI_LABEL, NONE, fmt, pm, t_quantile
    from harness.reporting.tables import Table
    from harness.reporting.terminal import print_table

    def secs(v: Any) -> str:
        return f"{v:.1f}s" if isinstance(v, (int, float)) else NONE

    headers = ["arm", "budget", "done", "running", "waiting", "pruned", "failed", "retried",
               f"best {CI_LABEL}", "best params", "to 1st step", "train", "after last", "(eval)", "import"]
    rows = []
    for a in status["arms"]:
        if not a.get("exists"):
            rows.append([a["arm"], str(a["budget"]), *[NONE] * 13])
            continue
        b = a.get("best")
        best, params = NONE, ""
        if b:
            n, std = b.get("n_seeds") or 1, b.get("std")
            # the sweep records the seeds' sample standard deviation: the CI is t * std / sqrt(n)
            half = t_quantile(n) * std / n ** 0.5 if n > 1 and isinstance(std, (int, float)) else float("nan")
            best = pm(b["value"], half)
            params = ", ".join(f"{k.split('.')[-1]}={fmt(v) if isinstance(v, float) else v}"
                               for k, v in b["params"].items())
            params = f"#{b['number']}: {params}"
        o = a["overhead"]
        rows.append([a["arm"] + (f" ({a['method']})" if a["method"] != a["arm"] else ""), str(a["budget"]),
                     str(a["complete"]), str(a["running"]), str(a["waiting"]), str(a["pruned"]), str(a["failed"]),
                     str(a["retried"]), best, params, secs(o.get("to_first_step_s")), secs(o.get("train_s")),
                     secs(o.get("after_last_step_s")), secs(o.get("eval_s")), secs(o.get("import_s"))])
    print_table(console, Table(headers, rows),
                title=f"sweep {status['sweep']}: {status['direction']} {status['objective']} "
                      f"({len(status['seeds'])} seed(s) per configuration)",
                wrap=("best params",), notes=[
                    f"best: the objective's mean over the seeds of the best trial, {CI_LABEL} over those seeds "
                    "(none with one seed)",
                    "per run means: 'to 1st step' = trial asked -> first optimizer step; 'train' = optimizer "
                    "steps; 'after last' = last step -> run finished, of which '(eval)' is evaluation; 'import' = "
                    "imports paid once per worker by its fork server (its first trial waits for them)"])
    for a in status["arms"]:
        for f in (a.get("failures") or [])[-5:]:
            tag = "retried" if f["retried"] else "failed"
            console.print(f"  {a['arm']} #{f['number']} {tag}: {f['reason']}", markup=False)
    console.print(f"storage {status['storage']}  runs {status['output_dir']}", markup=False)


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def sweep(
        args: list[str] = typer.Argument(None, help="SPEC.yaml and key=value overrides; 'status SPEC.yaml' shows progress"),
        slots: int | None = typer.Option(None, "--slots", help="CPU: trials at a time"),
        devices: str | None = typer.Option(None, "--devices", help="GPU ids, e.g. 0,1,2,3"),
        as_json: bool = typer.Option(False, "--json", help="status: print JSON"),
        max_trials: int | None = typer.Option(None, "--max-trials", help="stop after starting this many trials"),
        per_trial: int | None = typer.Option(None, "--devices-per-trial", min=1,
                                             help="devices per trial: GPUs, or CPU processes (default: the spec's)"),
    ) -> None:
        """Run a sweep here (validate, create its studies, work through its trials); resumes if re-run.

        `harness sweep status SPEC` shows per-method progress, best configurations and per-trial overhead."""
        args = list(args or [])
        if args and args[0] == "status":
            sw = _load(args[1:], check_runs=False)  # reading the study needs no run-spec checks
            from harness.sweeps.spec import sweep_status

            st = sweep_status(sw)
            if as_json:
                console.print_json(json.dumps(st, default=str))
            else:
                print_status(st)
            return
        run_sweep_here(_with_devices(_load(args), per_trial), slots, devices, max_trials)

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def worker(
        args: list[str] = typer.Argument(None, help="SPEC.yaml and key=value overrides"),
        slots: int | None = typer.Option(None, "--slots", help="CPU: trials at a time"),
        devices: str | None = typer.Option(None, "--devices", help="GPU ids, e.g. 0,1,2,3"),
        max_trials: int | None = typer.Option(None, "--max-trials", help="stop after starting this many trials"),
        per_trial: int | None = typer.Option(None, "--devices-per-trial", min=1,
                                             help="devices per trial: GPUs, or CPU processes (default: the spec's)"),
    ) -> None:
        """Join a sweep: pull trials from its shared studies, one per device slot.

        `--devices 0,1,2,3 --devices-per-trial 2` runs two trials at a time, each over two GPUs with
        accelerate (DDP, or FSDP from execution.accelerate_config); on CPU `--slots 1
        --devices-per-trial 2` runs each trial as two processes (torch.distributed, gloo)."""
        sw = _with_devices(_load(list(args or [])), per_trial)
        _describe(sw)
        _run_worker(sw, slots, devices, os.getpid(), max_trials)

    @app.command()
    def dashboard(
        spec: str = typer.Argument(..., help="SPEC.yaml"),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8080, "--port"),
    ) -> None:
        """Serve optuna-dashboard on the sweep's storage."""
        sw = _load([spec], check_runs=False)
        from harness.sweeps.spec import dashboard as serve

        console.print(f"optuna-dashboard on {sw.storage.display()}: http://{host}:{port}/")
        try:
            serve(sw, host=host, port=port)
        except RuntimeError as e:
            _fail(str(e))
