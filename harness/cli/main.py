"""The ``harness`` command line.

    harness methods
    harness run method=dpo
    harness run my_run.yaml train.lr=5e-6 method.beta=0.05 seed=3

Optional command groups live in their own modules (``harness.cli.sweep``,
``harness.cli.eval``, ``harness.cli.report``, ``harness.cli.spec``); each exposes ``register(app)``.

Exit codes: 0 done; 2 the spec, the data or a named model/dataset is unusable (one short
message naming the key, file or row, never a traceback; nothing trained); 1 the run
failed while training (its ``runs/<name>/error.txt`` keeps the traceback); 130 / 143
interrupted by Ctrl-C / SIGTERM (the run is marked ``interrupted``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark harness for LLM training and alignment methods.")
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

EXTENSIONS = ("harness.cli.sweep", "harness.cli.eval", "harness.cli.report", "harness.cli.worlds", "harness.cli.spec",
              "harness.cli.reproduce")


def fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # messages quote user text ("org/data[train]", "[q_proj, v_proj]"): never read it as markup
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    raise typer.Exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "the spec, the data or a named source is unusable": exit 2, no traceback.
    ConfigError covers the run spec, harness.data's DataError and the runner's SpecError."""
    from harness.core.config import ConfigError
    from harness.evaluation.evaluate import EvalError
    from harness.evaluation.lmeval import LMEvalError
    from harness.store.runs import RunExistsError
    from harness.worlds.base import WorldError

    return (ConfigError, EvalError, LMEvalError, WorldError, RunExistsError)


def _num(value: object, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


@app.command()
def methods() -> None:
    """List registered methods: paper, data kind, reference model, default hyperparameters."""
    from harness.core.contract import METHODS, hp_defaults, load_methods

    load_methods()
    table = Table(title="methods")
    for col in ("name", "paper", "reference", "data kind", "needs ref. model", "defaults"):
        table.add_column(col)
    for name in METHODS.names():
        a = METHODS.get(name)
        defaults = ", ".join(f"{k}={v}" for k, v in hp_defaults(a).items()) or "-"
        table.add_row(name, f"{a.paper.authors}: {a.paper.title}", a.paper.ref, a.data_kind.value, "yes" if a.needs_reference else "no", defaults)
    console.print(table)


def split_spec_args(args: list[str]) -> tuple[str | None, list[str]]:
    path = None
    overrides = []
    for a in args:
        if "=" not in a and (a.endswith((".yaml", ".yml")) or os.path.exists(a)):
            if path is not None:
                fail(f"two spec files given: {path} and {a}")
            path = a
        else:
            overrides.append(a)
    return path, overrides


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(args: list[str] = typer.Argument(None, help="[SPEC.yaml] key=value ...")) -> None:
    """Train one run (then evaluate it) and write runs/<name>/.

    Every key with its type, default and allowed range: `harness spec`; a method's
    hyperparameters: `harness spec method=NAME`.
    """
    from harness.core.config import load_spec
    from harness.pipelines.run import run as execute
    from harness.training.runner import Terminated

    path, overrides = split_spec_args(args or [])
    errors = user_errors()
    try:
        spec = load_spec(path, overrides)
        r = execute(spec)
    except errors as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        how, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        fail(f"{how}; the run is marked 'interrupted' and keeps its checkpoints", code)
    except Exception as e:  # the run dir keeps the traceback
        name = type(e).__module__ + "." + type(e).__name__ if type(e).__module__ != "builtins" else type(e).__name__
        fail(f"{name}: {e}", 1)
    s = r.summary()
    console.print(f"[green]completed[/] {r.path}")
    for rnd in s.get("rounds", []):  # a pipeline: one line per round
        rnd_eval = rnd.get("eval", {})
        console.print(f"  round {rnd['round']} ({rnd.get('stage')}): " + "  ".join(
            f"{k} {rnd_eval[k]:.3f}" for k in ("gold_reward_mean", "win_rate")
            if isinstance(rnd_eval.get(k), (int, float))),
            highlight=False)
    if s.get("pipeline"):
        return
    ev = s.get("eval", {})
    shown = {k: ev[k] for k in ("gold_reward_mean", "kl_mean", "win_rate", "length_controlled_winrate") if k in ev}
    console.print(
        f"loss {_num(s.get('final_loss'), '.4f')}  tokens/s {_num(s.get('tokens_per_s'), ',.0f')}  "
        f"wall {_num(s.get('wall_time_s'), '.1f')}s"
        + "".join(f"  {k} {v:.3f}" for k, v in shown.items() if isinstance(v, (int, float)))
    )
    by_group = ev.get("gold_reward_by_group") or {}
    if by_group:
        # worlds with groups (task clusters, held-out clusters): the headline is per group, against the start
        base_by = ev.get("baseline_gold_reward_by_group") or {}

        def num(v: object) -> str:
            return f"{v:.3f}" if isinstance(v, (int, float)) and v == v else "-"

        table = Table(title=f"held-out gold reward by group ({ev.get('n_prompts', '?')} prompts)", title_justify="left")
        for col in ("group", "model", "base", "delta"):
            table.add_column(col, justify="left" if col == "group" else "right")
        # summary.json sorts its keys: the coarse groups (no "/") first, then the finer ones (per cluster)
        for g, v in sorted(by_group.items(), key=lambda kv: ("/" in kv[0], kv[0])):
            b = base_by.get(g)
            delta = v - b if isinstance(v, (int, float)) and isinstance(b, (int, float)) else None
            table.add_row(g, num(v), num(b), f"{delta:+.3f}" if delta is not None and delta == delta else "-")
        console.print(table)


QUICKSTART_SPEC = Path(__file__).resolve().parents[2] / "sweeps" / "quickstart.yaml"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def quickstart(
    args: list[str] = typer.Argument(None, help="key=value overrides of sweeps/quickstart.yaml"),
    slots: int = typer.Option(1, "--slots", help="trials at a time (CPU)"),
) -> None:
    """The README's main job: toy world + SFT base, a five-method sweep, evaluation, report.

    Re-running resumes the sweep (finished trials are kept) and rewrites the report.
    """
    import time

    from harness.cli.sweep import run_sweep_here
    from harness.core.config import ConfigError, RunSpec
    from harness.reporting.report import write_report
    from harness.store.cache import cache_root
    from harness.sweeps.spec import load_sweep
    from harness.training.runner import ensure_model

    t0 = time.perf_counter()
    if not QUICKSTART_SPEC.exists():
        fail(f"{QUICKSTART_SPEC} not found: run the quickstart from a checkout of align-harness")
    try:
        sw = load_sweep(QUICKSTART_SPEC, list(args or []))
    except ConfigError as e:
        fail(str(e))
    from harness.core.config import merge_raw

    base = merge_raw(sw.base, {})
    # a built-in world's base model (the data world's default when the spec names none)
    model = str(base.get("model", {}).get("name_or_path") or base.get("data", {}).get("source") or RunSpec().data.source)
    console.print(f"[bold]1/3[/] world and SFT base ({model}): built once, then cached in {cache_root()}")
    path = ensure_model(model)
    console.print(f"    base model: {path}  ({time.perf_counter() - t0:.0f}s)", highlight=False)
    console.print("[bold]2/3[/] sweep: every method tuned with the same budget, each trial trained and evaluated")
    run_sweep_here(sw, slots, None, None)
    console.print("[bold]3/3[/] report")
    html = write_report(sw.output_dir)
    console.print(f"report: {html}\n        {html.with_name('index.md')}", highlight=False)
    console.print(f"quickstart wall time: {time.perf_counter() - t0:.0f}s")


def _register_extensions() -> None:
    for mod in EXTENSIONS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(app)


_register_extensions()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
