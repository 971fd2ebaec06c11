"""``harness worlds``: the registered worlds with their splits, scorers, lm-eval tasks and base models.

    harness worlds                        # one block per world
    harness worlds build toy --model tiny # build a world's data and a base model now
"""

from __future__ import annotations

import math

import typer


def _range(low: float, high: float) -> str:
    def f(v: float) -> str:
        return "-inf" if v == -math.inf else "inf" if v == math.inf else f"{v:g}"

    return f"[{f(low)}, {f(high)}]"


def register(app: typer.Typer) -> None:
    worlds_app = typer.Typer(help="Built-in benchmarks: splits, gold scorers, lm-eval tasks, base models.")

    @worlds_app.callback(invoke_without_command=True)
    def worlds(ctx: typer.Context) -> None:
        """List registered worlds (built-in and from installed packages)."""
        if ctx.invoked_subcommand is not None:
            return
        from rich.table import Table

        from harness.cli.main import console
        from harness.worlds.base import WORLDS, get_world, load_worlds

        load_worlds()
        for name in WORLDS.names():
            w = get_world(name)  # lazy: listing reads declarations and builds no data
            console.print(f"[bold]{name}[/]  {w.description}", highlight=False)
            table = Table(show_header=False, box=None, pad_edge=False)
            for split, doc in w.splits().items():
                table.add_row(f"split {split}", doc)
            gold_scorer = w.gold_scorer()
            for sc in w.scorers().values():
                gold = " (gold)" if gold_scorer is not None and sc.name == gold_scorer.name else ""
                table.add_row(f"scorer {sc.name}{gold}", f"{_range(sc.low, sc.high)} {sc.description}")
            for bm_name, bm in w.base_models.items():
                default = " (default)" if bm_name == w.default_base else ""
                table.add_row(f"model {name}:{bm_name}{default}", bm.description)
            console.print(table)
            console.print()

    @worlds_app.command("build")
    def build(
        name: str = typer.Argument(..., help="world name"),
        model: list[str] = typer.Option(None, "--model", help="base model(s) to build; default: the world's default"),
    ) -> None:
        """Build a world's data, tokenizer and base model(s) now (otherwise built on first use)."""
        from harness.cli.main import console, fail
        from harness.training.runner import ensure_base_model
        from harness.worlds.base import WorldError, get_world

        try:
            world = get_world(name)
            sizes = list(model or [world.default_base])
            for size in sizes:
                if size not in world.base_models:
                    raise WorldError(f"world {name!r} has no base model {size!r}; choose from: {', '.join(world.base_models)}")
        except WorldError as e:
            fail(str(e))
        console.print(f"{name}: data and tokenizer in {world.root}", highlight=False)
        for size in sizes:
            console.print(f"{name}:{size}: {ensure_base_model(world, size)}", highlight=False)

    app.add_typer(worlds_app, name="worlds")
