"""Developer tasks.

    nox -s tests        # the test suite (what CI runs)
    nox -s lint         # ruff (undefined names on)
    nox -s typecheck    # mypy
    nox -s bench        # speed/memory benchmarks vs TRL (prints ratios; not a test)
    nox -s bench -- sft sweep   # a subset: dpo, vocab, sft, sweep, grpo (options after --: see benchmarks/README.md)

torch is installed first from a pinned CPU build (TORCH_SPEC, default torch==2.13.0) so
the package's looser ``torch>=2.4`` range installs nothing more; GPU users set
TORCH_SPEC to their CUDA build or install the project into their own environment.
"""

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def install(session: nox.Session, extras: str = "test") -> None:
    session.install(TORCH_SPEC)
    session.install("-e", f".[{extras}]")
    # a dependency must never swap the pinned torch for another build
    session.run("python", "-c", f"import torch, sys; v = torch.__version__; print('torch', v); "
                f"sys.exit(0 if v.split('+')[0] == '{TORCH_SPEC.split('==')[-1]}' or '==' not in '{TORCH_SPEC}' else 1)")


@nox.session
def tests(session: nox.Session) -> None:
    install(session)
    session.run("pytest", "-q", *session.posargs, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "harness", "methods", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    install(session, "dev")
    session.run("mypy", "harness", "methods")


BENCHMARKS = {"dpo": "benchmarks/bench_dpo.py", "vocab": "benchmarks/bench_dpo_vocab.py",
              "sft": "benchmarks/bench_sft_packing.py", "sweep": "benchmarks/bench_sweep_overhead.py",
              "grpo": "benchmarks/bench_grpo.py"}


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark in turn (or those named: ``nox -s bench -- dpo sft``; other arguments go to
    each script, e.g. ``-- dpo --quick``).  Each prints its ratios and the machine's load average."""
    install(session)
    names = [a for a in session.posargs if a in BENCHMARKS] or list(BENCHMARKS)
    extra = [a for a in session.posargs if a not in BENCHMARKS]
    for name in names:
        session.run("python", BENCHMARKS[name], *extra, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
