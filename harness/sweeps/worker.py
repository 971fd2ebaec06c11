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

Heartbeats: a worker writes a timestamp on each of its running trials every
``execution.heartbeat_s``; every worker also looks for running trials whose heartbeat
is older than ``execution.grace_s`` (their worker was killed), fails them, and
re-enqueues them so another worker runs them again.  This is done here, uniformly for
every storage, because Optuna 5.0 has heartbeats only for RDB storages, not for
journal files.  Marking a trial failed is atomic in every storage (RDB: a row lock;
journal: the losing writer's update is rejected on replay), so exactly one worker
enqueues its retry.  Trial processes die with their worker (a watchdog thread in each waits
on the worker's pid).

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

from harness.core.config import to_dict
from harness.store.runs import Run, atomic_write_json
from harness.sweeps.spec import (
    ATTR_HEARTBEAT,
    ATTR_WORKER,
    Arm,
    Sweep,
    arm_state,
    make_sampler,
    search_space_fn,
    summary_keys,
    trial_raw,
    within_budget,
)
from harness.sweeps.storage import enqueue_retry, ensure_studies, transition_lock

#: runs the accelerate launcher so that it, too, dies with the worker (exec keeps the death signal)
_GUARDED_EXEC = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
                 "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


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

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


@dataclass
class Running:
    study_name: str
    trial_id: int
    number: int
    proc: TrialProcess | None = None
    started: float = field(default_factory=time.time)


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

    def log(self, msg: str) -> None:
        with self.lock:
            self._log(msg)

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        """Work until done (returns the number of trials this worker ran) or Ctrl-C (re-raised)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ensure_studies(self.sweep)
        reap_stale(self.sweep, self.sweep.storage.open(), log=self.log)
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
        storage = self.sweep.storage.open()
        last_reap = 0.0
        # beats go on while interrupted trials wind down, until every slot has finished
        while not self.done.wait(self.ex.heartbeat_s):
            with self.lock:
                ids = list(self.running)
            for tid in ids:
                with contextlib.suppress(Exception):  # finished meanwhile
                    storage.set_trial_system_attr(tid, ATTR_HEARTBEAT, time.time())
            if time.time() - last_reap >= self.ex.heartbeat_s:
                last_reap = time.time()
                try:
                    reap_stale(self.sweep, storage, exclude=set(ids), log=self.log)
                except Exception as e:  # never let bookkeeping kill the heartbeat
                    self.log(f"warning: reaping stale trials failed: {type(e).__name__}: {e}")

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
            if any(t.state.name == "RUNNING" and _tid(t) not in mine for t in trials):
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
            storage.set_trial_system_attr(tid, ATTR_HEARTBEAT, time.time())
            storage.set_trial_system_attr(tid, ATTR_WORKER, self.name)
            self.running[tid] = Running(name, tid, trial.number)
            if "retry_of" not in trial.user_attrs and not within_budget(study.get_trials(deepcopy=False), trial.number,
                                                                        arm.budget):
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
        env = {**slot.env, "PYTHONUNBUFFERED": "1", "HARNESS_WORKER_PID": str(os.getpid())}
        if g == 1 and self._forks(slot):
            import multiprocessing

            from harness.sweeps.trial import forked_main

            proc = multiprocessing.get_context("forkserver").Process(
                target=forked_main, args=(str(job_path), env), name=f"trial-{job_path.stem}")
            proc.start()
            return TrialProcess(mp=proc)
        if g > 1:
            argv = [sys.executable, "-c", _GUARDED_EXEC, "-m", "accelerate.commands.launch", "--num_processes", str(g),
                    "--multi_gpu", "-m", "harness.sweeps.trial", "--job", str(job_path)]
        else:
            argv = [sys.executable, "-m", "harness.sweeps.trial", "--job", str(job_path)]
        with open(log, "ab") as fh:
            return TrialProcess(popen=subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                                       stderr=subprocess.STDOUT, env={**os.environ, **env}))

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
        job = {
            "sweep": sw.name, "arm": arm.label, "method": arm.method, "study_name": sw.study_name(arm),
            "storage": sw.storage.url, "storage_kind": sw.storage.kind, "trial_id": tid, "trial_number": number,
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
        self.running[tid].proc = proc

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
                sigint_at = time.time()
                proc.signal(signal.SIGINT)
            elif sigint_at is not None and time.time() - sigint_at > 30:
                proc.kill()
            if (self.ex.trial_timeout_s is not None and not timed_out
                    and time.time() - t_handoff > self.ex.trial_timeout_s):
                timed_out = True
                proc.kill()
        result: dict[str, Any] = {}
        if result_path.exists():
            with contextlib.suppress(ValueError):
                result = json.loads(result_path.read_text())
        state = result.get("state")
        if state is None:
            if timed_out:
                reason = f"timed out after {self.ex.trial_timeout_s:.0f}s (execution.trial_timeout_s)"
            elif rc < 0:
                reason = f"trial process killed by {_signal_name(rc)}"
                if rc == -signal.SIGKILL and not interrupted:
                    reason += " (out of memory? the kernel's OOM killer sends SIGKILL)"
            else:
                reason = f"trial process exited with status {rc}"
            tail = _tail(log_path)
            result = {"state": "interrupted" if interrupted else "fail",
                      "reason": reason + (f"; log: {tail}" if tail else "")}
            state = result["state"]
        overhead = dict(result.get("overhead") or {})
        overhead["dispatch_s"] = t_handoff - t_ask
        overhead["worker_wall_s"] = time.time() - t_ask
        if overhead.get("to_first_step_s") is not None:
            # the trial started when it was asked for: sampling and the job hand-off count too
            overhead["to_first_step_s"] += overhead["dispatch_s"]
        reason = result.get("reason", "")
        keep = {"overhead": overhead, "runs": [str(p) for p in run_dirs], "log": str(log_path)}
        try:
            with transition_lock(sw.storage):
                self._tell(study, trial, state, result, reason, keep)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
            if isinstance(e, ValueError) and "Cannot tell a" not in str(e):
                raise
            self.log(f"[{arm.label} #{number}] was failed by another worker meanwhile (heartbeat too late?); "
                     f"its runs stay in {run_dirs[0].parent}, the retry counts")
        finally:
            with self.lock:
                self.running.pop(tid, None)
                self.n_finished += 1
        _mark_runs(run_dirs, sw, arm, number, state, reason)
        if state == "complete":
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


def reap_stale(sweep: Sweep, storage: Any, exclude: set[int] = frozenset(),  # type: ignore[assignment]
               log: Callable[[str], None] | None = None, now: float | None = None) -> list[tuple[str, int]]:
    """Fail running trials whose worker stopped sending heartbeats; re-enqueue them (bounded retries)."""
    import optuna

    now = time.time() if now is None else now
    grace = sweep.spec.execution.grace_s
    reaped = []
    for arm in sweep.arms:
        name = sweep.study_name(arm)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            tid = _tid(t)
            if tid in exclude:
                continue
            beat = t.system_attrs.get(ATTR_HEARTBEAT)
            if beat is None and t.datetime_start is not None:  # asked, but its worker died before a heartbeat
                beat = t.datetime_start.timestamp()
            if beat is None or now - float(beat) <= grace:
                continue
            who = t.system_attrs.get(ATTR_WORKER, "an unknown worker")
            depth = int(t.user_attrs.get("retry_depth", 0))
            retry = depth < sweep.spec.execution.max_retries
            reason = (f"worker {who} stopped sending heartbeats ({now - float(beat):.0f}s > grace {grace:.0f}s; "
                      f"killed or lost)" + ("; retried" if retry else f"; not retried after {depth} retries"))
            with transition_lock(sweep.storage):
                try:
                    storage.set_trial_user_attr(tid, "fail_reason", reason)
                    if retry:
                        storage.set_trial_user_attr(tid, "retry_wanted", True)
                        storage.set_trial_user_attr(tid, "retry_reason", "lost worker")
                    won = storage.set_trial_state_values(tid, optuna.trial.TrialState.FAIL)
                except Exception:  # another worker failed it first, or its owner finished it
                    continue
                if not won:
                    continue
                if retry:
                    enqueue_retry(study, _frozen(study, t.number))
            runs = [Path(p) for p in t.user_attrs.get("runs", [])] or [
                sweep.run_dir(arm, t.number, s) for s in sweep.seeds]
            _mark_runs(runs, sweep, arm, t.number, "fail", reason)
            reaped.append((arm.label, t.number))
            if log:
                log(f"[{arm.label} #{t.number}] failed: {reason}")
    return reaped
