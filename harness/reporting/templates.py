"""Where the report templates are, and the Jinja2 environment that renders them.

    python -c "from harness.reporting.templates import template_source; print(template_source())"
    harness report runs/quickstart       # renders reports/templates/report.html.j2 and report.md.j2

The templates live in the checkout's top-level ``reports/templates/`` (the design card's
``reports/`` folder).  A wheel cannot ship a folder outside its packages, so the build copies
them into the package as ``harness/reporting/templates/`` (``setup.py``'s ``build_py``);
an installed package reads that copy through :mod:`importlib.resources`, a checkout or an
editable install reads ``reports/templates/`` itself, so an edited template shows at once.
"""

from __future__ import annotations

import base64
import importlib.resources
from functools import cache
from pathlib import Path
from typing import Any

#: the file every template folder must hold: how a candidate folder is recognised
MARKER = "report.html.j2"


def _checkout_dir() -> Path | None:
    """``<checkout>/reports/templates`` when this package is imported from a source checkout.

    The folder must sit next to the project's own ``pyproject.toml``, so that a ``reports/``
    folder another distribution installed beside ``harness/`` in site-packages is never taken.
    """
    root = Path(__file__).resolve().parents[2]
    candidate = root / "reports" / "templates"
    pyproject = root / "pyproject.toml"
    if (candidate / MARKER).is_file() and pyproject.is_file() and 'name = "align-harness"' in pyproject.read_text():
        return candidate
    return None


def template_source() -> Any:
    """The folder the templates are read from: a :class:`pathlib.Path` in a checkout or a
    plain install, an :mod:`importlib.resources` Traversable for a zipped install."""
    # the packaged copy exists only in a built distribution (the checkout has none: tests check it)
    packaged = importlib.resources.files("harness.reporting") / "templates"
    if (packaged / MARKER).is_file():
        return packaged
    checkout = _checkout_dir()
    if checkout is not None:
        return checkout
    raise FileNotFoundError(
        "the report templates are missing: neither harness/reporting/templates/ (an installed wheel) nor "
        "reports/templates/ next to the package (a checkout) holds " + MARKER + "; reinstall align-harness")


def _cell_html(value: Any) -> Any:
    """A table cell, escaped; ``mean ± ci`` never breaks across lines."""
    from markupsafe import Markup, escape

    return Markup(str(escape(str(value))).replace(" ± ", "&nbsp;±&nbsp;"))


def _cell_md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@cache
def environment() -> Any:
    """The Jinja2 environment over :func:`template_source`: HTML templates (``*.html.j2``) are
    autoescaped, an undefined name is an error rather than an empty string."""
    import jinja2

    root = template_source()

    def load(name: str) -> str:
        node = root
        for part in name.split("/"):
            if part in ("", ".", ".."):
                raise jinja2.TemplateNotFound(name)
            node = node / part
        if not node.is_file():
            raise jinja2.TemplateNotFound(name)
        return node.read_text(encoding="utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=lambda name: name is not None and ".html" in name,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(cell_html=_cell_html, cell_md=_cell_md, b64=_b64)
    return env


def render(name: str, **context: Any) -> str:
    """Render the template ``name`` (a path below the templates folder) with ``context``."""
    return environment().get_template(name).render(**context)
