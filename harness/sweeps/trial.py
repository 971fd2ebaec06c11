"""One sweep trial in its own process: train every seed of one configuration, report to Optuna, write a result.

Started by a sweep worker (:mod:`harness.sweeps.worker`), never by hand:

    forked from the worker's fork server: harness.sweeps.trial.forked_main(job_path, env)
    python -m harness.sweeps.trial --job JOB.json  # a fresh interpreter (also under ``accelerate launch -m``)

A job file holds the resolved raw run spec of each seed, the study and trial ids (for
pruning reports) and where to write the result; the storage URL, which may hold a password,
comes through the environment (``HARNESS_SWEEP_STORAGE``), never the job file.  The result file says ``complete``
(objective per seed, mean, spread), ``pruned``, ``fail`` (with the reason: an
exception, a non-finite loss, out of memory) or ``interrupted``; the worker turns it
into the trial's state.  A crash that leaves no result file (the OOM killer, a
segfault) is reported by the worker from the exit status.  Running in a separate
process is what lets an out-of-memory error or a crash take down one trial only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from harness.sweeps.bootstrap import preload_imports, redirect_output

_T_PROCESS = time.time()


def _write_json(path: str | Path, obj: Any) -> None:
    from harness.store.runs import atomic_write_json

    atomic_write_json(path, obj)


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _fail_reason(e: BaseException) -> str:
    import torch

    from harness.training.loop import NonFiniteLoss

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(e, NonFiniteLoss):
        return f"non-finite loss: {e}"
    if oom and isinstance(e, oom):
        return f"out of memory: {str(e).splitlines()[0] if str(e) else 'CUDA OOM'}"
    if isinstance(e, MemoryError):
        return "out of memory (host)"
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]


class _Reporter:
    """Reports the first seed's held-out metric to the trial and asks the pruner (rank 0 decides)."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        p = job["pruner"]
        self.metric = p["metric"]
        # intermediate values live in the study's direction: a metric of the other sense is negated
        self.flip = p["direction"] != job["direction"]
        self.trial = None
        self.last: tuple[int, float] | None = None
        self.warned = False
        if p["kind"] != "none" and _rank() == 0:
            import optuna

            from harness.core.config import build
            from harness.sweeps.spec import PrunerSpec, make_pruner
            from harness.sweeps.storage import STORAGE_ENV, StorageRef

            # the URL comes from the worker through the environment: job files never hold credentials
            storage = StorageRef(job["storage_kind"], os.environ[STORAGE_ENV]).open()
            pruner = make_pruner(build(PrunerSpec, p, "pruner"), job.get("max_steps"))
            study = optuna.load_study(study_name=job["study_name"], storage=storage, pruner=pruner)
            self.trial = optuna.trial.Trial(study, job["trial_id"])

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        import optuna

        if self.job["pruner"]["kind"] == "none":
            return
        prune = False
        if _rank() == 0 and self.trial is not None:
            if self.metric in metrics:
                value = float(metrics[self.metric])
                value = -value if self.flip else value
                if math.isfinite(value):
                    self.trial.report(value, step)
                    self.last = (step, value)
                    prune = self.trial.should_prune()
            elif not self.warned:
                # e.g. kto has no pairs, so no rewards/accuracies: its trials are simply never pruned
                print(f"warning: pruner.metric {self.metric!r} is not a held-out metric of this method "
                      f"(has: {', '.join(sorted(metrics))}); this trial will not be pruned", flush=True)
                self.warned = True
        if _world() > 1:  # every process must stop together: rank 0 decides
            from accelerate.utils import broadcast_object_list

            prune = bool(broadcast_object_list([prune])[0])
        if prune:
            raise optuna.TrialPruned(f"pruned at step {step} on {self.metric}")


def run_job(job: dict[str, Any], t_trial_start: float, import_s: float) -> dict[str, Any]:
    from harness.core.config import resolve
    from harness.pipelines.run import run as execute
    from harness.sweeps.spec import lookup_metric
    from harness.training.loop import TrainHooks

    reporter = _Reporter(job)
    values: list[float] = []
    runs: list[str] = []
    first_step: list[float] = []
    after_last: list[float] = []
    train_s: list[float] = []
    eval_s: list[float] = []
    setup_s: list[float] = []
    save_s: list[float] = []
    eval_parts: list[dict[str, float]] = []
    result: dict[str, Any] = {"state": "fail", "import_s": import_s}
    t_run = t_trial_start
    try:
        for i, raw in enumerate(job["runs"]):
            spec = resolve(raw)
            marks: dict[str, float] = {}

            def mark_first_step(m: dict[str, float] = marks) -> None:
                m.setdefault("first", time.time())

            hooks = TrainHooks(on_eval=reporter.on_eval if i == 0 else None, on_first_step=mark_first_step)
            runs.append(str(Path(spec.output_dir) / str(spec.name)))
            run = execute(spec, hooks=hooks, tracking=job.get("tracking"))
            t_end = time.time()
            s = run.summary()
            if "first" in marks:
                first_step.append(marks["first"] - t_run)
            train_s.append(float(s.get("train_time_s") or 0.0))
            ev = s.get("eval")
            timing = ev.get("timing_s") if isinstance(ev, dict) else None
            if isinstance(timing, dict) and isinstance(timing.get("total"), (int, float)):
                eval_s.append(float(timing["total"]))
                eval_parts.append({k: float(v) for k, v in timing.items() if k != "total"})
            after_last.append(float(s.get("teardown_time_s") or 0.0))
            setup_s.append(float(s.get("setup_time_s") or 0.0))
            # after the last step the runner saves, then evaluates: the rest of its teardown is saving
            save_s.append(after_last[-1] - (eval_s[-1] if len(eval_s) == len(after_last) else 0.0))
            t_run = t_end
            metric = job["objective"]["metric"]
            try:
                v = lookup_metric(s, metric)
            except KeyError:
                have = ", ".join(sorted(k for k in s if not isinstance(s[k], dict)))
                sections = ", ".join(f"{k}.{{{', '.join(sorted(s[k]))}}}" for k in s if isinstance(s[k], dict))
                raise KeyError(f"objective metric {metric!r} is not in {runs[-1]}/summary.json (has: {have}; {sections})") from None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"objective metric {metric!r} is {v!r} in {runs[-1]}/summary.json")
            values.append(float(v))
        result.update(state="complete", values=values, value=sum(values) / len(values),
                      value_std=statistics.stdev(values) if len(values) > 1 else 0.0)
    except KeyboardInterrupt:
        result.update(state="interrupted", reason="interrupted (Ctrl-C)")
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":
            result.update(state="pruned", reason=str(e), pruned_at=reporter.last)
        else:
            result.update(state="fail", reason=_fail_reason(e), traceback=traceback.format_exc()[-4000:])
            traceback.print_exc()
    result.update(runs=runs, seeds_done=len(values))

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    parts = sorted({k for p in eval_parts for k in p})
    result["overhead"] = {"import_s": import_s, "to_first_step_s": mean(first_step), "train_s": mean(train_s),
                          "after_last_step_s": mean(after_last), "eval_s": mean(eval_s),
                          # the run's own set-up (spec checks, data, model load, reference pass) and
                          # saving, and each evaluation part (harness.evaluation.evaluate's timing_s)
                          "run_setup_s": mean(setup_s), "save_s": mean(save_s),
                          "eval_parts_s": {k: mean([p.get(k, 0.0) for p in eval_parts]) for k in parts},
                          "trial_wall_s": time.time() - t_trial_start}
    return result


def _watch_worker() -> None:
    """SIGKILL this process when the worker that runs it dies, so no trial outlives its worker.

    A forked trial's parent is the fork server, which outlives the worker while trials run, so
    the parent-death signal would not do: a thread waits on the worker's pid (a pidfd on Linux)."""
    pid = int(os.environ.get("HARNESS_WORKER_PID", "0") or 0)
    if pid <= 0:
        return

    def watch() -> None:
        import select
        import signal

        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                time.sleep(1.0)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
        os.kill(os.getpid(), signal.SIGKILL)

    import threading

    threading.Thread(target=watch, name="worker-watchdog", daemon=True).start()


def _run_file(job_path: str, t_start: float, import_s: float) -> int:
    job = json.loads(Path(job_path).read_text())
    if _rank() == 0:
        redirect_output(job.get("log"))
    print(f"[trial {job['trial_number']} of {job['study_name']}] pid {os.getpid()} "
          f"devices={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}", flush=True)
    result = run_job(job, t_start, import_s)
    if _rank() == 0:
        _write_json(job["result"], result)
    print(f"[trial {job['trial_number']}] {result['state']} {result.get('reason', '')}", flush=True)
    return {"complete": 0, "pruned": 0, "interrupted": 130}.get(result["state"], 1)


def forked_main(job_path: str, env: dict[str, str]) -> None:
    """Entry of a trial forked from the worker's fork server (imports already paid there)."""
    t_start = time.time()
    redirect_output(json.loads(Path(job_path).read_text()).get("log"))
    os.environ.update(env)  # before anything touches CUDA: the fork server never initialises it
    _watch_worker()
    if env.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    from harness.sweeps import preload as sweep_preload

    if sweep_preload.CUDA_INITIALIZED and env.get("CUDA_VISIBLE_DEVICES"):
        raise RuntimeError("the fork server initialised CUDA while importing, so forked trials cannot use the GPU; "
                           "set execution.start=spawn")
    sys.exit(_run_file(job_path, t_start, sweep_preload.IMPORT_S))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _watch_worker()
    if "--job" not in argv:
        print("usage: python -m harness.sweeps.trial --job JOB.json", file=sys.stderr)
        return 2
    job_path = argv[argv.index("--job") + 1]
    try:
        preload_imports()
    except KeyboardInterrupt:
        return 130
    return _run_file(job_path, _T_PROCESS, time.time() - _T_PROCESS)


if __name__ == "__main__":
    sys.exit(main())
