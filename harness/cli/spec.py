"""``harness spec``: every key a run spec accepts, with its type, default, allowed range and
what it does, so nobody has to read the code to write a spec.

    harness spec                  # every section (model, data, peft, train, eval, tracking, top level)
    harness spec train eval       # only these sections
    harness spec method=dpo       # a method's own hyperparameters (method.<key>=...)

Everything shown comes from the spec classes themselves (``harness.core.config.describe``):
the ranges are the ones ``harness run`` enforces, the docs are the fields' ``#:`` comments.
Lines fit 80 columns (``--width`` changes that).
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import typing
from typing import Any

import typer

#: the sections of a run spec, in the order a spec file usually has them ("" = top-level keys)
SECTIONS = ("model", "data", "method", "peft", "train", "eval", "reward", "tracking", "")


def _value(v: Any) -> str:
    """A default as it is written in a spec (true, null, "toy", 0.0001)."""
    return json.dumps(v)


def _plain(doc: str) -> str:
    return doc.replace("``", "`")


def _key_lines(items: list[Any], width: int) -> list[str]:
    """Two or more lines per key: ``key  type = default  range``, then the doc, indented."""
    out: list[str] = []
    for k in items:
        head = f"{k.key}  {k.type} = {_value(k.default)}" + (f"  range {k.range}" if k.range else "")
        out += textwrap.wrap(head, width, initial_indent="  ", subsequent_indent="        ")
        if k.doc:
            out += textwrap.wrap(_plain(k.doc), width, initial_indent="      ", subsequent_indent="      ")
    return out


def render_sections(names: list[str], width: int = 80) -> str:
    """The help text of the named run-spec sections (all when ``names`` is empty)."""
    from harness.core.config import RunSpec, describe, section_doc
    from harness.core.contract import METHODS, load_methods

    load_methods()
    hints = typing.get_type_hints(RunSpec)
    fields = {f.name: f for f in dataclasses.fields(RunSpec)}
    wanted = list(names) or list(SECTIONS)
    out: list[str] = []
    for name in wanted:
        if name == "method":
            out.append("method: the training objective and its hyperparameters")
            out += textwrap.wrap(
                f"method.name (or method=NAME)  one of: {', '.join(METHODS.names())}", width,
                initial_indent="  ", subsequent_indent="        ")
            out += textwrap.wrap("each method's own keys (method.beta=...): harness spec method=NAME", width,
                                 initial_indent="      ", subsequent_indent="      ")
        elif name == "":
            top = [k for k in describe(RunSpec) if "." not in k.key and k.key != "method"]
            out.append("top level: keys outside any section")
            out += _key_lines(top, width)
        else:
            cls = hints[name]
            out += textwrap.wrap(f"{name}: {_plain(section_doc(cls)) or fields[name].name}", width)
            out += _key_lines(describe(cls, name), width)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render_method(name: str, width: int = 80) -> str:
    """The help text of one method's hyperparameters (``method.<key>``)."""
    from harness.core.config import describe
    from harness.core.contract import METHODS, load_methods

    load_methods()
    adapter = METHODS.get(name)
    out = textwrap.wrap(f"method={adapter.name}: {adapter.paper.authors}, {adapter.paper.title} ({adapter.paper.ref})", width)
    out += textwrap.wrap(
        f"data: {adapter.data_kind.value}; reference model: {'yes' if adapter.needs_reference else 'no'}", width,
        initial_indent="  ")
    keys = describe(adapter.config_cls, "method")
    out += _key_lines(keys, width) if keys else ["  (no hyperparameters of its own; see harness spec train)"]
    return "\n".join(out) + "\n"


def register(app: typer.Typer) -> None:
    @app.command(name="spec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def spec_command(
        args: list[str] = typer.Argument(None, help="section names (model data peft train eval tracking), or method=NAME"),
        width: int = typer.Option(80, "--width", min=40, help="wrap lines at this many columns"),
    ) -> None:
        """Every run-spec key: type, default, allowed range and what it does (method=NAME: a method's keys)."""
        from harness.cli.main import fail
        from harness.core.contract import METHODS, load_methods
        from harness.core.registry import RegistryError, did_you_mean

        load_methods()
        names: list[str] = []
        methods: list[str] = []
        for a in args or []:
            key, eq, value = a.partition("=")
            if eq and key in ("method", "method.name"):
                methods.append(value)
            elif not eq and a in SECTIONS and a:
                names.append(a)
            elif not eq and a in METHODS:
                methods.append(a)
            else:
                choices = [s for s in SECTIONS if s]
                fail(f"harness spec: {a!r} is neither a section ({', '.join(choices)}) nor method=NAME"
                     f"{did_you_mean(a, choices + METHODS.names())}")
        parts = []
        if names or not methods:
            parts.append(render_sections(names, width))
        for m in methods:
            try:
                parts.append(render_method(m, width))
            except RegistryError as e:
                fail(f"method: {e}")
        typer.echo("\n".join(parts), nl=False)
