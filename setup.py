"""Build hook: ship the report templates, which live in the top-level ``reports/templates/``
(the design card's ``reports/`` folder), inside the wheel as ``harness/reporting/templates/``.

    pip install .            # or: pip wheel --no-deps -w dist .

Everything else about the package is declared in ``pyproject.toml``.  setuptools only packs
files that sit inside a package, and ``packages.find`` ignores ``package-dir`` entries, so the
copy is made here; ``harness.reporting.templates`` reads the copy in an installed package and
``reports/templates/`` itself in a checkout or an editable install (which never copies).
``tests/test_report_templates.py`` builds a wheel and checks the copy is complete.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "reports" / "templates"


class BuildWithTemplates(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads reports/templates/ in place
        if not (TEMPLATES / "report.html.j2").is_file():
            raise FileNotFoundError(f"{TEMPLATES} holds no report.html.j2: the report templates are missing")
        dest = Path(self.build_lib) / "harness" / "reporting" / "templates"
        shutil.rmtree(dest, ignore_errors=True)  # a template removed from reports/ must not linger in build/
        shutil.copytree(TEMPLATES, dest)


setup(cmdclass={"build_py": BuildWithTemplates})
