"""Running any spec: a pipeline method's rounds, or one training run.

    harness run method=spin method.iterations=3     # the CLI and sweep trials call run()

:func:`run` is the one entry point above the runner: a method with ``pipeline(hp, ctx)``
runs its stages through :class:`harness.pipelines.engine.PipelineContext`; any other
method (and every train stage of a pipeline) runs through
:func:`harness.training.runner.execute`.  An unnamed pipeline run is named by the content
of its spec (``spin-3f2a9c1d``), so re-running the same command after a kill resumes it at
its first unfinished stage, and re-running a completed one returns it without writing.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

from harness.core.config import RunSpec, spec_to_dict
from harness.core.contract import METHODS, MethodAdapter, load_methods
from harness.pipelines.engine import PipelineContext, write_pipeline_summary
from harness.store.cache import content_key
from harness.store.runs import Run
from harness.training.loop import TrainHooks
from harness.training.runner import check_spec, ensure_spec_models, execute, resolve_model_path


def is_pipeline(adapter: MethodAdapter) -> bool:
    return callable(getattr(adapter, "pipeline", None))


def run(spec: RunSpec, hooks: TrainHooks | None = None, tracking: str | None = None) -> Run:
    load_methods()
    adapter = METHODS.get(spec.method_name)
    if not is_pipeline(adapter) or "stage" in spec.tags:
        return execute(spec, hooks, tracking)
    return run_pipeline(spec, adapter)


def pipeline_name(spec: RunSpec) -> str:
    raw = spec_to_dict(spec)
    for key in ("name", "output_dir", "tags", "tracking"):
        raw.pop(key, None)
    raw.get("train", {}).pop("progress", None)
    return f"{spec.method_name}-{content_key(raw, 8)}"


def run_pipeline(spec: RunSpec, adapter: Any) -> Run:
    t0 = time.perf_counter()
    check_spec(spec)
    ensure_spec_models(spec)
    name = spec.name or pipeline_name(spec)
    root = Path(spec.output_dir) / name
    if (root / "config.yaml").exists():
        run = Run(root)
        if run.status().get("status") == "completed":
            return run  # a finished pipeline is never reopened for writing
        if run.config().get("method", {}).get("name") != spec.method_name:
            raise ValueError(f"{root} holds a run of method {run.config().get('method', {}).get('name')!r}, "
                             f"not {spec.method_name!r}; pick another name=")
    else:
        run = Run.create(spec.output_dir, name, prefix=spec.method_name)
    run.write_config(spec_to_dict(spec))
    run.write_env()
    run.set_status("running", pid=os.getpid(), host=os.uname().nodename)
    ctx = PipelineContext(spec, run, resolve_model_path(spec))
    try:
        final = adapter.pipeline(spec.method.hp, ctx)
        write_pipeline_summary(ctx, final, t0)
        run.set_status("completed")
        return run
    except KeyboardInterrupt:
        run.set_status("interrupted")
        raise
    except BaseException as e:
        run.set_status("failed", error=f"{type(e).__name__}: {e}")
        (run.path / "error.txt").write_text(traceback.format_exc())
        raise
