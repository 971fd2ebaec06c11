"""The ``harness`` command line.

    harness methods
    harness run method=dpo
    harness run my_run.yaml train.lr=5e-6 method.beta=0.05 seed=3

Optional command groups live in their own modules (``harness.cli_sweep``,
``harness.cli_eval``, ``harness.cli_report``); each exposes ``register(app)``.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark harness for LLM training and alignment methods.")
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

EXTENSIONS = ("harness.cli_sweep", "harness.cli_eval", "harness.cli_report")


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False)
    raise typer.Exit(code)


@app.command()
def methods() -> None:
    """List registered methods: paper, data kind, reference model, default hyperparameters."""
    from harness.methods_api import METHODS, hp_defaults, load_methods

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
    """Train one run (then evaluate it) and write runs/<name>/."""
    from harness.config import ConfigError, load_spec
    from harness.runner import SpecError, execute
    from harness.store import RunExistsError

    path, overrides = split_spec_args(args or [])
    try:
        spec = load_spec(path, overrides)
    except ConfigError as e:
        fail(str(e))
    try:
        r = execute(spec)
    except (SpecError, RunExistsError, ConfigError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted; the run is marked 'interrupted'", 130)
    except Exception as e:  # the run dir keeps the traceback
        name = type(e).__module__ + "." + type(e).__name__ if type(e).__module__ != "builtins" else type(e).__name__
        fail(f"{name}: {e}", 1)
    s = r.summary()
    console.print(f"[green]completed[/] {r.path}")
    ev = s.get("eval", {})
    shown = {k: ev[k] for k in ("gold_reward_mean", "kl_mean", "win_rate", "length_controlled_winrate") if k in ev}
    console.print(
        f"loss {s.get('final_loss'):.4f}  tokens/s {s.get('tokens_per_s', 0):,.0f}  wall {s.get('wall_time_s', 0):.1f}s"
        + "".join(f"  {k} {v:.3f}" for k, v in shown.items() if isinstance(v, (int, float)))
    )


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
    sys.exit(main())
