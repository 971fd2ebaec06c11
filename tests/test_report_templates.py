"""The report templates: read from ``reports/templates/`` in a checkout, shipped inside a wheel as
``harness/reporting/templates/`` and read from there once installed.

    .venv/bin/pytest tests/test_report_templates.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from harness.reporting import templates
from harness.reporting.render import Section
from harness.reporting.tables import Table

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "reports" / "templates"


def test_checkout_reads_reports_templates() -> None:
    assert Path(templates.template_source()) == TEMPLATES
    # a copy inside the package would shadow reports/templates/ and hide edits made there
    assert not (ROOT / "harness" / "reporting" / "templates").exists()
    for name in ("report.html.j2", "report.md.j2", "section.html.j2", "macros.html.j2", "report.css"):
        assert (TEMPLATES / name).is_file(), name


def test_html_is_escaped_and_undefined_names_fail() -> None:
    import jinja2

    sec = Section("<b>x</b>", text=["a < b"], tables=[Table(["h"], [["1 ± 2"]], ["k'"], id="t")],
                  notes=["n & m"])
    page = templates.render("report.html.j2", title="T<", meta="m", sections=[sec])
    assert "<h2>&lt;b&gt;x&lt;/b&gt;</h2>" in page and "<p>a &lt; b</p>" in page and "n &amp; m" in page
    assert "<td>1&nbsp;±&nbsp;2</td>" in page and "data-key='k&#39;'" in page and "<title>T&lt;</title>" in page
    assert "border-collapse" in page  # the CSS is inlined
    md = templates.render("report.md.j2", title="T", meta="m", sections=[Section("S", tables=[
        Table(["a|b"], [["x\ny"]])])])
    assert "| a\\|b |\n|---|\n| x y |" in md
    with pytest.raises(jinja2.UndefinedError):
        templates.render("report.html.j2", title="T", sections=[])  # no meta
    with pytest.raises(jinja2.TemplateNotFound):
        templates.render("../pyproject.toml")


def test_source_without_templates_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(templates, "_checkout_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="report templates are missing"):
        templates.template_source()


def test_wheel_ships_the_templates_and_installed_package_reads_them(tmp_path: Path) -> None:
    # --no-build-isolation builds with this environment's setuptools (torch depends on it): no network
    pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools in this environment")
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in ("harness", "methods", "reports"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(src)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("align_harness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*") if p.is_file()}
    assert shipped and {f"harness/reporting/templates/{n}" for n in shipped} <= names
    assert not any(n.startswith("reports/") for n in names)  # no top-level "reports" package in site-packages

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    probe = textwrap.dedent("""
        import harness, sys
        from harness.reporting.templates import render, template_source
        from harness.reporting.tables import Table
        from harness.reporting.render import Section
        sec = Section("S", tables=[Table(["h"], [["1 ± 2"]], id="t")])
        page = render("report.html.j2", title="T", meta="m", sections=[sec])
        assert "<td>1&nbsp;±&nbsp;2</td>" in page and "border-collapse" in page, page
        print(harness.__file__)
        print(template_source())
    """)
    # the installed copy only: the source checkout must not be importable from here
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(tmp_path), "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    module, source = out.stdout.split()
    assert module.startswith(str(target)) and source == str(target / "harness" / "reporting" / "templates")
