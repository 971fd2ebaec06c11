"""Chaos: four sweep workers on one PostgreSQL study while workers and trial processes are SIGKILLed.

    .venv/bin/pytest tests/test_sweep_chaos.py -q

Four ``harness worker SPEC --slots 1`` processes (one thread each) share a PostgreSQL storage.
Their trials train ``toy:tiny`` for a few steps with evaluation off.  A seeded RNG picks, a few
seconds apart, a running trial's process to kill (as the OOM killer would) or the worker that
owns a running trial (as a lost node would), and a killed worker is started again at once.
Afterwards:

- the sweep finished (every worker exited 0 within a hard deadline) with every arm's budget used;
- every trial that completed is kept: its run directory is ``completed`` and holds the value
  Optuna has, and every completed run directory belongs to a COMPLETE trial;
- no configuration ran twice to completion (completed runs per trial and per configuration);
- the faults happened: trials were lost with their worker and handled (retried, or completed
  from their runs when those had finished).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from pg_server import postgres_server

from harness.store.runs import Run
from harness.sweeps.spec import arm_state, load_sweep
from harness.sweeps.storage import ensure_studies

pytestmark = pytest.mark.slow

SEED = 20261202
N_WORKERS = 4
#: seconds the whole chaos run may take before the test fails (liveness, not speed)
HARD_DEADLINE_S = 420
#: what gets killed, in an order the RNG shuffles
FAULTS = ["worker", "worker", "trial", "trial"]
#: fault k waits until this many trials have finished, so the faults spread over the whole sweep
SPREAD = [0, 1, 2, 3]
#: seconds a worker fault waits for a trial whose run completed but is not reported yet
PATIENCE_S = 5.0

BASE = {
    "model": "toy:tiny",
    "data": {"max_samples": 48},
    "train": {"max_steps": 40, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "progress": False},
    "eval": {"enabled": False},
    "tracking": {"mode": "disabled"},
}


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server("chaos") as url:
        yield url


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _ancestors(pid: int) -> list[int]:
    """pid's parent, grandparent, ... (a forked trial's parent is its worker's fork server)."""
    out: list[int] = []
    while pid > 1 and len(out) < 10:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        out.append(pid)
    return out


def _finished_trials(out: Path) -> int:
    n = 0
    for status in out.glob("*/trial-*/status.json"):
        try:
            n += json.loads(status.read_text()).get("status") != "running"
        except (OSError, ValueError):
            continue
    return n


def _running_trials(out: Path, statuses: tuple[str, ...] = ("running",)) -> list[tuple[Path, int]]:
    """(run dir, trial pid) of every trial process alive now whose run has one of ``statuses``:
    ``running`` (loading, training, saving), or ``completed`` (its process is about to report)."""
    found = []
    for status in sorted(out.glob("*/trial-*/status.json")):
        try:
            st = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        if st.get("status") in statuses and _alive(int(st["pid"])):
            found.append((status.parent, int(st["pid"])))
    return found


class Workers:
    """The worker processes, each slot restarted after a kill; every incarnation logs to its own file."""

    def __init__(self, spec: Path, logs: Path) -> None:
        self.spec = spec
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.incarnations = [0] * N_WORKERS
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(self, slot: int) -> subprocess.Popen[bytes]:
        self.incarnations[slot] += 1
        log = self.logs / f"worker{slot}-{self.incarnations[slot]}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "worker", str(self.spec), "--slots", "1"],
                                    stdout=fh, stderr=subprocess.STDOUT, env=self.env)
        if slot < len(self.procs):
            self.procs[slot] = proc
        else:
            self.procs.append(proc)
        return proc

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(self.logs.glob("*.log")))

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _chaos(workers: Workers, out: Path, rng: random.Random) -> list[str]:
    """Start the workers, inject the faults, wait for the sweep to finish; returns what was done."""
    done: list[str] = []
    faults = list(FAULTS)
    rng.shuffle(faults)
    for slot in range(N_WORKERS):
        workers.start(slot)
    deadline = time.monotonic() + HARD_DEADLINE_S
    looks = Counter()  # how often a fault was due, with and without a running trial to aim at
    next_fault = time.monotonic() + rng.uniform(1.0, 3.0)
    due_since: float | None = None
    while any(p.poll() is None for p in workers.procs):
        if time.monotonic() > deadline:
            raise AssertionError(f"the sweep did not finish within {HARD_DEADLINE_S}s after faults {done}; "
                                 f"worker logs:\n{workers.tails()}")
        if faults and time.monotonic() >= next_fault and _finished_trials(out) >= SPREAD[len(done)]:
            # a worker whose trial's run just completed, before it told Optuna, is the hardest moment to
            # lose it (the value must be kept, the configuration never run again): a worker fault waits
            # a few seconds for such a moment before it takes any running trial's worker
            due_since = due_since or time.monotonic()
            finishing = _running_trials(out, ("completed",)) if faults[0] == "worker" else []
            running = _running_trials(out)
            # patience only while trials enough run that one will still be there to aim at afterwards
            if faults[0] == "worker" and len(running) >= 2 and time.monotonic() < due_since + PATIENCE_S:
                running = []
            looks[bool(running or finishing)] += 1
            if running or finishing:
                d, pid = rng.choice(finishing or running)
                what = f"{d.parent.name}/{d.name}"
                if faults[0] == "trial":
                    os.kill(pid, signal.SIGKILL)  # as the OOM killer would
                    done.append(f"killed trial process of {what}")
                    faults.pop(0)
                else:
                    up = _ancestors(pid)
                    slot = next((i for i, p in enumerate(workers.procs) if p.pid in up and p.poll() is None), None)
                    if slot is not None:
                        workers.procs[slot].kill()  # SIGKILL: no cleanup of any kind, as a lost node
                        workers.procs[slot].wait()
                        done.append(f"killed worker {slot} {'reporting' if finishing else 'running'} {what}")
                        workers.start(slot)
                        faults.pop(0)
                next_fault = time.monotonic() + rng.uniform(0.5, 1.5)  # SPREAD spaces them; this only staggers
                due_since = None
        time.sleep(0.02 if due_since else 0.1)  # a run's completed-but-unreported moment is short
    bad = [(i, p.returncode) for i, p in enumerate(workers.procs) if p.returncode != 0]
    assert not bad, f"workers exited with errors {bad}:\n{workers.tails()}"
    assert not faults, (f"the sweep finished before every fault was injected (done: {done}; looked for running "
                        f"trials {looks[True] + looks[False]} times, found some {looks[True]} times); make trials longer")
    return done


def test_killed_workers_and_trials_lose_no_completed_trial_and_run_none_twice(
        tmp_path: Path, tiny_base: Path, postgres_url: str) -> None:
    raw = {"name": "chaos", "base": BASE, "methods": ["dpo", "simpo"], "trials_per_method": 8,
           "sampler": {"kind": "random", "seed": 0},
           "objective": {"metric": "final_loss", "direction": "minimize"},
           "output_dir": str(tmp_path / "out"), "storage": postgres_url,
           "execution": {"heartbeat_s": 0.5, "grace_s": 8, "max_retries": 3, "trial_timeout_s": 300}}
    spec = tmp_path / "chaos.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    sw = load_sweep(spec)
    ensure_studies(sw)  # once, before the workers start (creation would race otherwise)
    (tmp_path / "logs").mkdir()
    workers = Workers(spec, tmp_path / "logs")
    t0 = time.monotonic()
    try:
        faults = _chaos(workers, sw.output_dir, random.Random(SEED))
    finally:
        workers.kill_all()
    print(f"chaos run: {time.monotonic() - t0:.0f}s; faults: {faults}")

    storage = sw.storage.open()
    completed_runs = 0
    lost_and_handled = 0
    for arm in sw.arms:
        trials = optuna.load_study(study_name=sw.study_name(arm), storage=storage).get_trials()
        st = arm_state(trials, arm.budget)
        assert st.finished and st.free == 0, (arm.label, st, workers.tails())
        by_number = {t.number: t for t in trials}
        # every trial that completed is kept: its run and its value
        for t in trials:
            if t.state == TrialState.COMPLETE:
                run = Run(sw.run_dir(arm, t.number, sw.seeds[0]))
                assert run.status()["status"] == "completed", (t.number, run.status())
                assert run.summary()["final_loss"] == pytest.approx(t.value)
            if t.user_attrs.get("retry_reason") == "lost worker" or "its runs had completed" in str(
                    t.user_attrs.get("recovered", "")):
                lost_and_handled += 1
            if t.state == TrialState.FAIL and not t.user_attrs.get("surplus"):
                assert t.user_attrs.get("fail_reason"), t.user_attrs
        # ... and every completed run belongs to a COMPLETE trial: none finished unrecorded
        done_dirs = [d for d in sorted((sw.output_dir / arm.label).glob("trial-*-seed*"))
                     if Run(d).status().get("status") == "completed"]
        completed_runs += len(done_dirs)
        numbers = [int(d.name.split("-")[1]) for d in done_dirs]
        assert all(by_number[n].state == TrialState.COMPLETE for n in numbers), \
            [(n, by_number[n].state, by_number[n].user_attrs) for n in numbers]
        # no configuration ran twice to completion (a retry copies its original's parameters)
        per_trial = Counter(numbers)
        per_config = Counter(json.dumps(by_number[n].params, sort_keys=True) for n in numbers)
        assert max(per_trial.values(), default=1) == 1 and max(per_config.values(), default=1) == 1, per_config
    assert completed_runs >= 1
    assert lost_and_handled >= 1, f"no trial was lost with a killed worker ({faults}): the test exercised nothing"
    assert sum(f.startswith("killed worker") for f in faults) == 2 and sum(f.startswith("killed trial") for f in faults) == 2
