"""Sweep workers: pull trials from the shared studies and run each in its own process, one per device slot.

    harness sweep sweeps/quickstart.yaml                        # creates the studies, then works here
    harness worker sweeps/qwen-ultrafeedback.yaml --devices 0,1,2,3   # more workers on any node
    harness worker sweeps/quickstart.yaml --slots 2             # CPU: two trials at a time

A :class:`Worker` runs one thread per slot.  Each slot picks the arm with the fewest
trials so far (arms advance together, so a partial sweep is still a fair one), asks
its study for a trial (a waiting retry or grid point first), samples the
configuration, writes a job file and hands it to a trial process
(:mod:`harness.sweeps.trial`) started with the slot's ``CUDA_VISIBLE_DEVICES``, through
``accelerate launch`` when a trial needs several GPUs.  CPU trials are forked from a
fork server that imported torch, transformers and the methods once, so a trial starts
training in about a second instead of paying the imports again; GPU trials start a
fresh interpreter (``execution.start``).  The worker turns the process's result (or its exit status) into
the trial's state: complete, pruned, or failed with the reason.

Leases: a worker advances a counter on each of its running trials every
``execution.heartbeat_s``; every worker's :class:`Reaper` watches the running trials of
others and declares one lost when its counter has not moved for ``execution.grace_s``,
timed on the reaper's own monotonic clock.  No wall-clock time crosses hosts, so a worker
whose clock is off by hours neither reaps a live trial nor keeps a dead one.  A lost trial
whose runs all completed before its worker died is completed from their summaries (its
value is kept, it never runs again); otherwise it is failed and re-enqueued (bounded by
``execution.max_retries``).  This is done here, uniformly for every storage, because
Optuna 5.0 has heartbeats only for RDB storages, not for journal files.  Marking a trial
finished is atomic in every storage (RDB: a row lock; journal: the losing writer's update is
rejected on replay), so exactly one worker enqueues its retry; should two retries of one
trial ever exist, only the lowest-numbered runs (:func:`harness.sweeps.spec.duplicate_retry`).
A worker that finds its own trial finished by someone else kills the trial's process.  Trial
processes die with their worker (a watchdog thread in each waits on the worker's pid).

Timeouts: a trial process that runs past its limit (``execution.trial_timeout_s``, else one
derived from its steps: :func:`harness.sweeps.spec.trial_timeout`) is killed, and the trial
failed as ``timeout`` and retried like a lost one: a hung trial under a live worker would
otherwise hold its slot forever.

Ctrl-C (or SIGTERM): running trial processes get SIGINT, their runs are marked
``interrupted``, the trials are failed as ``interrupted`` and re-enqueued, and the
worker exits; running ``harness sweep`` again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import resolve, to_dict
from harness.store.runs import Run, atomic_write_json
from harness.sweeps.spec import (
    ATTR_LEASE,
    ATTR_WORKER,
    Arm,
    Sweep,
    arm_state,
    duplicate_retry,
    lookup_metric,
    make_sampler,
    orphaned_retries,
    search_space_fn,
    summary_keys,
    trial_raw,
    trial_timeout,
    within_budget,
)
from harness.sweeps.storage import STORAGE_ENV, enqueue_retry, ensure_studies, transition_lock

#: runs the accelerate launcher so that it, too, dies with the worker (exec keeps the death signal)
_GUARDED_EXEC = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
                 "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def _free_port() -> int:
    """A free loopback port for a trial's process group (several trials may rendezvous at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tid(trial: Any) -> int:
    # Optuna keeps the storage id private; storage calls need it
    return int(trial._trial_id)


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


@dataclass
class Slot:
    index: int
    env: dict[str, str]


class TrialProcess:
    """A trial's process: forked from the worker's fork server, or a subprocess (spawn, accelerate)."""

    def __init__(self, mp: Any = None, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.mp = mp
        self.popen = popen

    @property
    def pid(self) -> int:
        return int(self.mp.pid if self.mp is not None else self.popen.pid)  # type: ignore[union-attr]

    def wait(self, timeout: float) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        if self.mp is not None:
            self.mp.join(timeout)
            return self.mp.exitcode
        assert self.popen is not None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def exited(self) -> bool:
        if self.mp is not None:
            return self.mp.exitcode is not None
        return self.popen is not None and self.popen.returncode is not None

    def signal(self, sig: int) -> None:
        if self.exited():  # its pid may belong to another process by now
            return
        with contextlib.suppress(ProcessLookupError):
            if self.popen is not None:  # its own session: reach every process of it (accelerate's ranks)
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


@dataclass
class Running:
    study_name: str
    trial_id: int
    number: int
    proc: TrialProcess | None = None
    started: float = field(default_factory=time.monotonic)
    #: the lease counter this worker last wrote (see the module docstring)
    lease: int = 1
    #: another worker finished this trial (it judged it lost): its process is killed
    superseded: bool = False
    #: this worker is recording the trial's end: no more lease writes
    finishing: bool = False


class Worker:
    """Runs trials of one sweep until every arm's budget is used and nothing is left running."""

    def __init__(self, sweep: Sweep, slot_envs: list[dict[str, str]], *, name: str | None = None,
                 log: Callable[[str], None] | None = None, salt: int = 0, max_trials: int | None = None) -> None:
        self.sweep = sweep
        self.slots = [Slot(i, env) for i, env in enumerate(slot_envs)]
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._log = log or (lambda m: print(m, flush=True))
        self.salt = salt
        self.max_trials = max_trials
        self.stop = threading.Event()
        self.force = threading.Event()
        self.lock = threading.RLock()
        self.done = threading.Event()
        self.running: dict[int, Running] = {}
        self.n_started = 0
        self.n_finished = 0
        self.interrupted = False
        self.errors: list[BaseException] = []
        self.ex = sweep.spec.execution
        self.workdir = sweep.output_dir / ".workers"
        self.reaper = Reaper(sweep)

    def log(self, msg: str) -> None:
        with self.lock:
            self._log(msg)

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        """Work until done (returns the number of trials this worker ran) or Ctrl-C (re-raised)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_studies(self.sweep)
        # a first look: what runs now is judged lost only if its lease stands still from here on
        self.reaper.reap(self.sweep.storage.open(), log=self.log)
        if any(self._forks(s) for s in self.slots):
            import multiprocessing
            from multiprocessing import forkserver

            # one process imports torch & co. once; every trial is forked from it
            os.environ["HARNESS_FORKSERVER_LOG"] = str(self.workdir / f"{self.name.replace(':', '-')}-forkserver.log")
            multiprocessing.get_context("forkserver").set_forkserver_preload(["harness.sweeps.preload"])
            forkserver.ensure_running()
        hb = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        hb.start()
        threads = [threading.Thread(target=self._slot_loop, args=(s,), name=f"slot-{s.index}", daemon=True)
                   for s in self.slots]
        for t in threads:
            t.start()
        try:
            _wait_all(threads)
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.set()
            self.log(f"stopping: interrupting {len(self.running)} running trial(s); Ctrl-C again to kill them")
            try:
                _wait_all(threads)
            except KeyboardInterrupt:
                self.force.set()
                _wait_all(threads, 30)
            raise
        finally:
            self.stop.set()
            self.done.set()
            hb.join(timeout=5)
        if self.errors:
            raise self.errors[0]
        return self.n_finished

    # ------------------------------------------------------------------ heartbeats and reaping

    def _heartbeat_loop(self) -> None:
        import optuna

        storage = self.sweep.storage.open()
        # beats go on while interrupted trials wind down, until every slot has finished
        while not self.done.wait(self.ex.heartbeat_s):
            with self.lock:
                mine = [r for r in self.running.values() if not r.finishing]
            for r in mine:
                r.lease += 1
                try:
                    storage.set_trial_system_attr(r.trial_id, ATTR_LEASE, r.lease)
                except optuna.exceptions.UpdateFinishedTrialError:
                    self._superseded(r)
                except Exception as e:  # a storage hiccup: the next beat tries again
                    self.log(f"warning: lease of trial #{r.number} not written: {type(e).__name__}: {e}")
            try:
                with self.lock:
                    ids = set(self.running)
                self.reaper.reap(storage, exclude=ids, log=self.log)
            except Exception as e:  # never let bookkeeping kill the heartbeat
                self.log(f"warning: reaping stale trials failed: {type(e).__name__}: {e}")

    def _superseded(self, r: Running) -> None:
        """Another worker finished our trial (it judged it lost): stop running it."""
        with self.lock:
            if r.finishing or r.superseded:
                return
            r.superseded = True
        self.log(f"[#{r.number} of {r.study_name}] was finished by another worker (lease judged lost); "
                 "stopping its process")
        if r.proc is not None:
            r.proc.kill()

    # ------------------------------------------------------------------ slots

    def _slot_loop(self, slot: Slot) -> None:
        try:
            storage = self.sweep.storage.open()
            idle_since: float | None = None
            while not self.stop.is_set():
                if self.max_trials is not None and self.n_started >= self.max_trials:
                    break
                asked = None
                with self.lock:
                    pick = self._pick(storage)
                    if isinstance(pick, Arm):
                        asked = self._ask(storage, pick)
                        if asked is None:
                            continue
                        self.n_started += 1
                if pick == "done":
                    break
                if pick == "wait":
                    if idle_since is None:
                        idle_since = time.time()
                        self.log("waiting: other workers' trials are still running (their failures get retried)")
                    self.stop.wait(min(self.ex.heartbeat_s, 5.0))
                    continue
                idle_since = None
                if isinstance(pick, Arm) and asked is not None:
                    self._run_trial(slot, storage, pick, *asked)
        except BaseException as e:  # surfaced by run()
            self.errors.append(e)
            self.stop.set()
            self.log(f"error in slot {slot.index}: {type(e).__name__}: {e}")

    def _pick(self, storage: Any) -> Arm | str:
        """The arm to run next, or 'wait' / 'done'.  Waiting retries and grid points go first, then the
        arm with the fewest trials so far, so arms advance together."""
        import optuna

        candidates: list[tuple[int, int, int]] = []
        others_running = False
        mine = {r.trial_id for r in self.running.values()}
        for i, arm in enumerate(self.sweep.arms):
            study = optuna.load_study(study_name=self.sweep.study_name(arm), storage=storage)
            trials = study.get_trials(deepcopy=False)
            st = arm_state(trials, arm.budget)
            # a lost trial's retry not yet enqueued (an orphan) is work a reaper will hand out soon
            if st.orphans or any(t.state.name == "RUNNING" and _tid(t) not in mine for t in trials):
                others_running = True
            if st.waiting or st.free:
                candidates.append((0 if st.waiting else 1, st.complete + st.pruned + st.failed + st.running, i))
        if candidates:
            return self.sweep.arms[min(candidates)[2]]
        return "wait" if others_running else "done"

    def _ask(self, storage: Any, arm: Arm) -> tuple[Any, Any, dict[str, Any], float] | None:
        import optuna

        t_ask = time.time()
        name = self.sweep.study_name(arm)
        n_now = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
        salt = n_now * 1009 + self.salt * 7919 + len(self.running)
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(self.sweep, arm, salt))
        with transition_lock(self.sweep.storage):
            trial = study.ask()
            tid = _tid(trial)
            self.running[tid] = Running(name, tid, trial.number)
            storage.set_trial_system_attr(tid, ATTR_LEASE, 1)
            storage.set_trial_system_attr(tid, ATTR_WORKER, self.name)
            trials = study.get_trials(deepcopy=False)
            if "retry_of" not in trial.user_attrs and not within_budget(trials, trial.number, arm.budget) \
                    or duplicate_retry(trials, trial):
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                del self.running[tid]
                return None
        try:
            params = search_space_fn(arm)(trial)
        except Exception as e:  # validated up front, so only a search space that depends on history
            trial.set_user_attr("fail_reason", f"search space: {type(e).__name__}: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            del self.running[tid]
            self.log(f"[{arm.label} #{trial.number}] failed: search space: {type(e).__name__}: {e}")
            return None
        trial.set_user_attr("method", arm.method)
        trial.set_user_attr("arm", arm.label)
        trial.set_user_attr("worker", self.name)
        return study, trial, dict(params), t_ask

    def _forks(self, slot: Slot) -> bool:
        """Whether this slot's trials are forked from the fork server (see ExecutionSpec.start)."""
        if self.ex.gpus_per_trial > 1 or self.ex.start == "spawn":
            return False
        return self.ex.start == "forkserver" or not slot.env.get("CUDA_VISIBLE_DEVICES")

    def _launch(self, slot: Slot, job_path: Path, log: Path) -> TrialProcess:
        g = self.ex.gpus_per_trial
        # the real storage URL (it may hold a password) travels in the environment, never in the job file
        env = {**slot.env, "PYTHONUNBUFFERED": "1", "HARNESS_WORKER_PID": str(os.getpid()),
               STORAGE_ENV: self.sweep.storage.url}
        if g == 1 and self._forks(slot):
            import multiprocessing

            from harness.sweeps.trial import forked_main

            proc = multiprocessing.get_context("forkserver").Process(
                target=forked_main, args=(str(job_path), env), name=f"trial-{job_path.stem}")
            proc.start()
            return TrialProcess(mp=proc)
        if g > 1 and slot.env.get("CUDA_VISIBLE_DEVICES"):
            config = ["--config_file", self.ex.accelerate_config] if self.ex.accelerate_config else ["--multi_gpu"]
            argv = [sys.executable, "-c", _GUARDED_EXEC, "-m", "accelerate.commands.launch", "--num_processes", str(g),
                    "--main_process_port", str(_free_port()), *config, "-m", "harness.sweeps.trial", "--job", str(job_path)]
        elif g > 1:  # CPU processes: torch's launcher (gloo); accelerate launches several processes only on GPUs
            argv = [sys.executable, "-c", _GUARDED_EXEC, "-m", "torch.distributed.run", "--nproc_per_node", str(g),
                    "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                    "-m", "harness.sweeps.trial", "--job", str(job_path)]
        else:
            argv = [sys.executable, "-m", "harness.sweeps.trial", "--job", str(job_path)]
        with open(log, "ab") as fh:
            return TrialProcess(popen=subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                                       stderr=subprocess.STDOUT, env={**os.environ, **env},
                                                       start_new_session=True))

    def _run_trial(self, slot: Slot, storage: Any, arm: Arm, study: Any, trial: Any, params: dict[str, Any],
                   t_ask: float) -> None:
        import optuna

        sw = self.sweep
        number, tid = trial.number, _tid(trial)
        jobs = sw.output_dir / arm.label / ".jobs"
        jobs.mkdir(parents=True, exist_ok=True)
        job_path = jobs / f"trial-{number:04d}.json"
        result_path = jobs / f"trial-{number:04d}.result.json"
        log_path = sw.output_dir / arm.label / f"trial-{number:04d}.log"
        runs = [trial_raw(sw, arm, params, number, seed, i) for i, seed in enumerate(sw.seeds)]
        run_dirs = [sw.run_dir(arm, number, seed) for seed in sw.seeds]
        max_steps = (runs[0].get("train") or {}).get("max_steps")
        limit, limit_how = trial_timeout(self.ex, [resolve(r) for r in runs])
        job = {
            "sweep": sw.name, "arm": arm.label, "method": arm.method, "study_name": sw.study_name(arm),
            "storage_kind": sw.storage.kind, "storage_display": sw.storage.display(), "trial_id": tid,
            "trial_number": number,
            "runs": runs, "objective": to_dict(sw.spec.objective), "direction": sw.spec.objective.direction,
            "pruner": to_dict(sw.spec.pruner), "max_steps": max_steps, "tracking": self.ex.tracking,
            "log": str(log_path), "result": str(result_path),
        }
        atomic_write_json(job_path, job)
        result_path.unlink(missing_ok=True)
        retry = f" (retry of #{trial.user_attrs['retry_of']})" if "retry_of" in trial.user_attrs else ""
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        devices = slot.env.get("CUDA_VISIBLE_DEVICES") or "cpu"
        self.log(f"[{arm.label} #{number}]{retry} start on {devices}: {shown}")
        proc = self._launch(slot, job_path, log_path)
        t_handoff = time.time()
        started = time.monotonic()  # durations on this process's clock: immune to wall-clock steps
        running = self.running[tid]
        running.proc = proc
        if running.superseded:  # judged lost while starting
            proc.kill()

        timed_out = interrupted = False
        sigint_at: float | None = None
        while True:
            rc = proc.wait(timeout=0.25)
            if rc is not None:
                break
            if self.force.is_set():
                proc.kill()
            elif self.stop.is_set() and sigint_at is None:
                interrupted = True
                sigint_at = time.monotonic()
                proc.signal(signal.SIGINT)
            elif sigint_at is not None and time.monotonic() - sigint_at > 30:
                proc.kill()
            if not timed_out and time.monotonic() - started > limit:
                timed_out = True
                proc.kill()
        result: dict[str, Any] = {}
        if result_path.exists():
            with contextlib.suppress(ValueError):
                result = json.loads(result_path.read_text())
        if result.get("state") is None:
            # killed after its runs completed (before it wrote the result): their values stand
            result = result_from_runs(sw, run_dirs) or result
        state = result.get("state")
        if state is None:
            if timed_out:
                reason = f"timed out after {limit:.0f}s ({limit_how})"
                state = "timeout"
            elif rc < 0:
                reason = f"trial process killed by {_signal_name(rc)}"
                if rc == -signal.SIGKILL and not interrupted:
                    reason += " (out of memory? the kernel's OOM killer sends SIGKILL)"
            else:
                reason = f"trial process exited with status {rc}"
            tail = _tail(log_path)
            state = state or ("interrupted" if interrupted else "fail")
            result = {"state": state, "reason": reason + (f"; log: {tail}" if tail else "")}
        overhead = dict(result.get("overhead") or {})
        overhead["dispatch_s"] = t_handoff - t_ask
        overhead["worker_wall_s"] = time.time() - t_ask
        if overhead.get("to_first_step_s") is not None:
            # the trial started when it was asked for: sampling and the job hand-off count too
            overhead["to_first_step_s"] += overhead["dispatch_s"]
        reason = result.get("reason", "")
        keep = {"overhead": overhead, "runs": [str(p) for p in run_dirs], "log": str(log_path)}
        with self.lock:
            running.finishing = True
        try:
            with transition_lock(sw.storage):
                self._tell(study, trial, state, result, reason, keep)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
            if isinstance(e, ValueError) and "Cannot tell a" not in str(e):
                raise
            self.log(f"[{arm.label} #{number}] was finished by another worker meanwhile (it judged the lease lost); "
                     f"its runs stay in {run_dirs[0].parent}, that worker's verdict counts")
        finally:
            with self.lock:
                self.running.pop(tid, None)
                self.n_finished += 1
        _mark_runs(run_dirs, sw, arm, number, state, reason)
        if state == "complete" and result.get("recovered"):
            self.log(f"[{arm.label} #{number}] complete (its runs finished before its process died): "
                     f"{sw.spec.objective.metric} = {result['value']:.4g}")
        elif state == "complete":
            std = result.get("value_std") or 0.0
            spread = f" ± {std:.4g}" if len(sw.seeds) > 1 else ""
            self.log(f"[{arm.label} #{number}] complete: {sw.spec.objective.metric} = {result['value']:.4g}{spread}  "
                     f"(to first step {_s(overhead.get('to_first_step_s'))}, train {_s(overhead.get('train_s'))}, "
                     f"after last step {_s(overhead.get('after_last_step_s'))})")
        else:
            self.log(f"[{arm.label} #{number}] {state}: {reason}")


    def _tell(self, study: Any, trial: Any, state: str, result: dict[str, Any], reason: str,
              keep: dict[str, Any]) -> None:
        """Record a finished trial: its overhead and runs, then its state (and a retry when interrupted)."""
        import optuna

        for k, v in keep.items():
            trial.set_user_attr(k, v)
        if state == "complete":
            if result.get("recovered"):
                trial.set_user_attr("recovered", result["recovered"])
            trial.set_user_attr("values", result["values"])
            trial.set_user_attr("value_std", result["value_std"])
            trial.set_user_attr("seeds", self.sweep.seeds)
            study.tell(trial, result["value"])
        elif state == "pruned":
            trial.set_user_attr("pruned_reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif state == "interrupted":
            trial.set_user_attr("fail_reason", reason or "interrupted (Ctrl-C)")
            trial.set_user_attr("retry_wanted", True)
            trial.set_user_attr("retry_reason", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            enqueue_retry(study, _frozen(study, trial.number))
        elif state == "timeout":  # retried like a lost trial, within execution.max_retries
            depth = int(trial.user_attrs.get("retry_depth", 0))
            retry = depth < self.ex.max_retries
            trial.set_user_attr("fail_reason", f"timeout: {reason}" + (
                "; retried" if retry else f"; not retried after {depth} retries"))
            if retry:
                trial.set_user_attr("retry_wanted", True)
                trial.set_user_attr("retry_reason", "timeout")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if retry:
                enqueue_retry(study, _frozen(study, trial.number))
        else:
            trial.set_user_attr("fail_reason", reason or "unknown failure")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _wait_all(threads: list[threading.Thread], timeout: float | None = None) -> None:
    """Wait for threads without Thread.join: a join interrupted by Ctrl-C marks a still-running
    thread as finished on Python < 3.13 (bpo-45274), and the worker would exit under it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while any(t.is_alive() for t in threads):
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(0.1)


def _frozen(study: Any, number: int) -> Any:
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise KeyError(number)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _s(v: Any) -> str:
    return f"{v:.1f}s" if isinstance(v, (int, float)) else "-"


def _mark_runs(run_dirs: list[Path], sweep: Sweep, arm: Arm, number: int, state: str, reason: str) -> None:
    """Give each run of the trial its sweep keys and a true status, even when its process died mid-run."""
    for i, d in enumerate(run_dirs):
        if not (d / "status.json").exists() and not (d / "config.yaml").exists():
            continue
        run = Run(d)
        with contextlib.suppress(Exception):
            run.update_summary(**summary_keys(sweep, arm, number, i))
            if run.status().get("status") == "running":
                if state == "interrupted":
                    run.set_status("interrupted", error=reason)
                else:
                    run.set_status("failed", error=reason or f"trial {state}")


def result_from_runs(sweep: Sweep, run_dirs: list[Path]) -> dict[str, Any] | None:
    """A trial's result read back from its runs when every seed's run completed (its process or
    worker died before reporting it), else None."""
    import math
    import statistics

    values: list[float] = []
    for d in run_dirs:
        run = Run(d)
        try:
            if run.status().get("status") != "completed":
                return None
            v = lookup_metric(run.summary(), sweep.spec.objective.metric)
        except (KeyError, ValueError, OSError):
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        values.append(float(v))
    if not values:
        return None
    return {"state": "complete", "values": values, "value": sum(values) / len(values),
            "value_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "recovered": "read from its completed runs: its process or worker died before reporting"}


class Reaper:
    """Finds trials whose worker is gone, without comparing clocks of different hosts.

    Each call looks at every running trial of the sweep (but ``exclude``: the caller's own) and
    remembers its lease counter and when, on this process's monotonic ``clock``, it last saw the
    counter change.  A trial whose counter stood still for more than ``execution.grace_s`` is lost:
    completed from its runs when they all finished, else failed and re-enqueued (within
    ``execution.max_retries``).  A failed trial that wants a retry nobody enqueued (its worker died
    between the two) gets one after the same grace.  Call :meth:`reap` periodically from one
    long-lived object: a first sighting only starts the clock.
    """

    def __init__(self, sweep: Sweep, clock: Callable[[], float] = time.monotonic) -> None:
        self.sweep = sweep
        self.clock = clock
        self._leases: dict[tuple[str, int], tuple[Any, float]] = {}
        self._orphans: dict[tuple[str, int], float] = {}

    def reap(self, storage: Any, exclude: set[int] | frozenset[int] = frozenset(),
             log: Callable[[str], None] | None = None) -> list[tuple[str, int]]:
        """One look; returns the (arm, trial number) of the trials declared lost now."""
        import optuna

        now = self.clock()
        grace = self.sweep.spec.execution.grace_s
        reaped: list[tuple[str, int]] = []
        running: set[tuple[str, int]] = set()
        orphans: set[tuple[str, int]] = set()
        for arm in self.sweep.arms:
            name = self.sweep.study_name(arm)
            try:
                study = optuna.load_study(study_name=name, storage=storage)
            except KeyError:
                continue
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state.name != "RUNNING" or _tid(t) in exclude:
                    continue
                key = (name, _tid(t))
                running.add(key)
                lease = t.system_attrs.get(ATTR_LEASE)
                seen = self._leases.get(key)
                if seen is None or seen[0] != lease:
                    self._leases[key] = (lease, now)
                elif now - seen[1] > grace and self._expire(storage, study, arm, t, now - seen[1], log):
                    reaped.append((arm.label, t.number))
            for t in orphaned_retries(trials):
                key = (name, _tid(t))
                orphans.add(key)
                first = self._orphans.setdefault(key, now)
                if now - first > grace:
                    with transition_lock(self.sweep.storage):
                        fresh = study.get_trials(deepcopy=False)  # another reaper may have done it meanwhile
                        if any(x.number == t.number for x in orphaned_retries(fresh)):
                            enqueue_retry(study, t)
                            if log:
                                log(f"[{arm.label} #{t.number}] its retry was never enqueued (its worker died); "
                                    "enqueued now")
                    orphans.discard(key)
        self._leases = {k: v for k, v in self._leases.items() if k in running}
        self._orphans = {k: v for k, v in self._orphans.items() if k in orphans}
        return reaped

    def _expire(self, storage: Any, study: Any, arm: Arm, t: Any, still_s: float,
                log: Callable[[str], None] | None) -> bool:
        import optuna

        sweep = self.sweep
        tid = _tid(t)
        runs = [Path(p) for p in t.user_attrs.get("runs", [])] or [sweep.run_dir(arm, t.number, s) for s in sweep.seeds]
        who = t.system_attrs.get(ATTR_WORKER, "an unknown worker")
        lost = f"worker {who} stopped advancing its lease ({still_s:.0f}s > grace {sweep.spec.execution.grace_s:.0f}s; " \
               "killed or lost)"
        result = result_from_runs(sweep, runs)
        depth = int(t.user_attrs.get("retry_depth", 0))
        retry = result is None and depth < sweep.spec.execution.max_retries
        with transition_lock(sweep.storage):
            try:
                if result is not None:
                    reason = f"{lost}; its runs had completed: value kept"
                    for k, v in (("values", result["values"]), ("value_std", result["value_std"]),
                                 ("seeds", sweep.seeds), ("runs", [str(p) for p in runs]),
                                 ("recovered", reason)):
                        storage.set_trial_user_attr(tid, k, v)
                    won = storage.set_trial_state_values(tid, optuna.trial.TrialState.COMPLETE,
                                                         values=[result["value"]])
                else:
                    reason = lost + ("; retried" if retry else f"; not retried after {depth} retries")
                    storage.set_trial_user_attr(tid, "fail_reason", reason)
                    if retry:
                        storage.set_trial_user_attr(tid, "retry_wanted", True)
                        storage.set_trial_user_attr(tid, "retry_reason", "lost worker")
                    won = storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
            except Exception:  # another worker finished it first, or its owner did
                return False
            if not won:
                return False
            if retry:
                enqueue_retry(study, _frozen(study, t.number))
        if result is None:
            _mark_runs(runs, sweep, arm, t.number, "fail", reason)
        else:
            for i, d in enumerate(runs):
                with contextlib.suppress(Exception):
                    Run(d).update_summary(**summary_keys(sweep, arm, t.number, i))
        if log:
            log(f"[{arm.label} #{t.number}] {'complete' if result is not None else 'failed'}: {reason}")
        return True
