"""What a trial process does before its job: import everything a run needs, send output to its log.

Shared by the fork server's preload (:mod:`harness.sweeps.preload`) and fresh trial
interpreters (:mod:`harness.sweeps.trial`).
"""

from __future__ import annotations

import os
import sys


def preload_imports() -> None:
    """Import what every trial needs (the fork server runs this once; forked trials inherit it)."""
    import optuna  # noqa: F401

    import harness.pipelines.run  # noqa: F401  (torch, accelerate, the store, the runner, the methods)
    from harness.core.contract import load_methods

    load_methods()
    try:  # transformers imports lazily: touch what a run will use
        import transformers

        for name in ("AutoModelForCausalLM", "AutoTokenizer", "get_scheduler"):
            getattr(transformers, name)
        import accelerate  # noqa: F401
        import peft  # noqa: F401
    except Exception:
        pass
    try:
        import harness.data.load  # noqa: F401
        import harness.evaluation.evaluate  # noqa: F401
    except Exception:
        pass


def redirect_output(path: str | None) -> None:
    """Send this process's stdout and stderr (Python's and C's) to ``path``."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
