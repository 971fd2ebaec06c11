"""Imported once by a sweep worker's fork server (``multiprocessing`` forkserver preload), so that
every trial forked from it starts with torch, transformers, the runner and the methods already
imported instead of paying several seconds of imports per trial.

    python -c "import harness.sweeps.preload as p; print(p.IMPORT_S)"   # what a trial saves

Nothing here may start a thread or initialise CUDA: the fork server forks trials from this state.
"""

from __future__ import annotations

import os
import time

_t0 = time.time()

from harness.sweeps.bootstrap import preload_imports, redirect_output  # noqa: E402

# import-time chatter (library warnings) goes to the worker's log, not the user's terminal
redirect_output(os.environ.get("HARNESS_FORKSERVER_LOG"))
preload_imports()

#: seconds the imports took (reported as the trials' ``import_s``, paid once per worker)
IMPORT_S = time.time() - _t0


def _cuda_initialized() -> bool:
    import torch

    return bool(torch.cuda.is_initialized())


#: a fork of a process with an initialised CUDA runtime cannot use the GPU; forked trials check this
CUDA_INITIALIZED = _cuda_initialized()
