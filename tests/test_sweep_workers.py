"""Sweeps end to end with real trials (tiny toy-world runs of a few steps) in real worker processes:
two workers on one journal file and on a PostgreSQL server started here, a worker killed with
SIGKILL mid-trial, Ctrl-C and resume, failing trials, grid coverage, workers whose clocks are hours
off, a hung trial's default timeout, and a storage URL from the environment that no record repeats.

    .venv/bin/pytest tests/test_sweep_workers.py -q
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from pg_server import postgres_server

from harness.store.runs import Run
from harness.sweeps.spec import load_sweep

pytestmark = pytest.mark.slow

BASE = {
    "model": "toy:tiny",
    "data": {"max_samples": 48},
    "train": {"max_steps": 2, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "progress": False},
    "eval": {"enabled": False},
    "tracking": {"mode": "disabled"},
}


def write_spec(tmp_path: Path, name: str = "s", **over: Any) -> Path:
    raw = {"name": name, "base": BASE, "methods": ["dpo", "simpo"], "trials_per_method": 2,
           "objective": {"metric": "final_loss", "direction": "minimize"},
           "output_dir": str(tmp_path / "out"), "storage": f"journal:{tmp_path / 'sweep.log'}",
           "execution": {"heartbeat_s": 1, "grace_s": 30}}
    raw.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


#: runs the CLI with this process's wall clock (time.time) shifted by argv[1] seconds: a host whose clock is off
_SKEWED = ("import sys, time; _real = time.time; _skew = float(sys.argv.pop(1)); time.time = lambda: _real() + _skew; "
           "from harness.cli.main import main; main()")


def harness(args: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None,
            clock_skew_s: float | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    entry = ["-m", "harness.cli.main"] if clock_skew_s is None else ["-c", _SKEWED, str(clock_skew_s)]
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, *entry, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"timed out; log:\n{log.read_text()[-3000:]}") from None


def all_trials(spec: Path) -> dict[str, list[Any]]:
    sw = load_sweep(spec, check_runs=False)
    storage = sw.storage.open()
    return {a.label: optuna.load_study(study_name=sw.study_name(a), storage=storage).get_trials() for a in sw.arms}


def wait_for(cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log: Path | None = None) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n"
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")


def run_status(run_dir: Path) -> dict[str, Any]:
    try:
        return Run(run_dir).status()
    except ValueError:  # caught mid-write
        return {}


def training(run_dir: Path) -> int | None:
    """The pid of the trial process once it is training (its first metrics are logged)."""
    st = run_status(run_dir)
    if st.get("status") == "running" and (run_dir / "metrics.jsonl").exists():
        return int(st["pid"])
    return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def starts(log: Path) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^\[(\S+) #(\d+)\](?: \(retry of #\d+\))? start",
                                                                log.read_text(), re.M)]


def check_sweep_complete(spec: Path, logs: list[Path]) -> None:
    """Every arm used its budget with completed trials; no trial ran twice; runs are tagged."""
    sw = load_sweep(spec, check_runs=False)
    trials = all_trials(spec)
    started = Counter(s for log in logs for s in starts(log))
    assert all(n == 1 for n in started.values()), f"a trial started twice: {started}"
    for arm in sw.arms:
        ts = [t for t in trials[arm.label] if not t.user_attrs.get("surplus")]
        assert [t.state for t in ts] == [TrialState.COMPLETE] * arm.budget, [(t.number, t.state, t.user_attrs) for t in ts]
        assert {(arm.label, t.number) for t in ts} <= set(started)
        for t in ts:
            run = Run(sw.run_dir(arm, t.number, sw.seeds[0]))
            assert run.status()["status"] == "completed"
            s = run.summary()
            assert s["final_loss"] == pytest.approx(t.value)
            assert (s["study_name"], s["trial_number"], s["sweep_name"]) == (sw.study_name(arm), t.number, sw.name)
            assert s["sweep_storage"] == sw.storage.report_form
            ov = t.user_attrs["overhead"]
            assert ov["to_first_step_s"] > 0 and ov["after_last_step_s"] >= 0 and ov["train_s"] > 0
        # surplus trials (lost races for the last slot) never ran
        for t in trials[arm.label]:
            if t.user_attrs.get("surplus"):
                assert not sw.run_dir(arm, t.number, sw.seeds[0]).exists()
    dirs = sorted(str(p.relative_to(sw.output_dir)) for p in sw.output_dir.glob("*/trial-*") if p.is_dir())
    assert len(dirs) == len(set(dirs)) == sum(a.budget for a in sw.arms)


def two_workers(tmp_path: Path, spec: Path) -> None:
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [harness(["worker", str(spec), "--slots", "1"], log) for log in logs]
    for proc, log in zip(procs, logs):
        assert finish(proc, log) == 0, log.read_text()[-3000:]
    check_sweep_complete(spec, logs)
    assert all(starts(log) for log in logs), "both workers should have run trials"


# --------------------------------------------------------------------------- shared storages


def test_two_workers_share_a_journal_file(tmp_path: Path, tiny_base: Path) -> None:
    two_workers(tmp_path, write_spec(tmp_path))


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on a loopback port (Debian's postgresql binaries)."""
    with postgres_server() as url:
        yield url


def test_two_workers_share_a_postgres_server(tmp_path: Path, tiny_base: Path, postgres_url: str) -> None:
    two_workers(tmp_path, write_spec(tmp_path, name="pg", storage=postgres_url))


# --------------------------------------------------------------------------- faults


def test_killed_trial_and_killed_worker(tmp_path: Path, tiny_base: Path) -> None:
    """A trial process killed (as by the OOM killer) fails that trial only; a worker killed with SIGKILL
    mid-trial takes its trial process with it, and the trial is failed by heartbeat and retried."""
    spec = write_spec(tmp_path, methods=["dpo"], trials_per_method=3,
                      base={**BASE, "train": {**BASE["train"], "max_steps": 100}},
                      execution={"heartbeat_s": 1, "grace_s": 4})
    sw = load_sweep(spec, check_runs=False)
    arm = sw.arms[0]
    log_a = tmp_path / "a.log"
    a = harness(["worker", str(spec), "--slots", "1"], log_a)
    try:
        pid0 = wait_for(lambda: training(sw.run_dir(arm, 0, 0)), 120, "trial 0 training", a, log_a)
        os.kill(pid0, signal.SIGKILL)
        pid1 = wait_for(lambda: training(sw.run_dir(arm, 1, 0)), 120, "trial 1 training", a, log_a)
        a.kill()  # SIGKILL: no cleanup of any kind in the worker
        a.wait()
        wait_for(lambda: not alive(pid1), 20, "the killed worker's trial process to die")
    finally:
        if a.poll() is None:
            a.kill()
    log_b = tmp_path / "b.log"
    b = harness(["sweep", str(spec)], log_b)
    assert finish(b, log_b) == 0, log_b.read_text()[-3000:]
    ts = all_trials(spec)["dpo"]
    t0, t1 = ts[0], ts[1]
    assert t0.state == TrialState.FAIL and "killed by SIGKILL" in t0.user_attrs["fail_reason"]
    assert not t0.user_attrs.get("retry_wanted")  # a crashed trial is a result, not retried
    assert t1.state == TrialState.FAIL and "stopped advancing its lease" in t1.user_attrs["fail_reason"]
    retries = [t for t in ts if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == t1.params
    assert [t.state for t in ts].count(TrialState.COMPLETE) == 2  # the retry and the third slot
    assert len(ts) == 4
    assert Run(sw.run_dir(arm, 0, 0)).status()["status"] == "failed"
    assert Run(sw.run_dir(arm, 1, 0)).status()["status"] == "failed"
    status = subprocess.run([sys.executable, "-m", "harness.cli.main", "sweep", "status", str(spec)],
                            capture_output=True, text=True, check=True).stdout
    assert "killed by SIGKILL" in status and "stopped advancing its lease" in status


def test_ctrl_c_stops_cleanly_and_the_sweep_resumes(tmp_path: Path, tiny_base: Path) -> None:
    spec = write_spec(tmp_path, methods=["dpo"], trials_per_method=3,
                      base={**BASE, "train": {**BASE["train"], "max_steps": 100}})
    sw = load_sweep(spec, check_runs=False)
    arm = sw.arms[0]
    log1 = tmp_path / "first.log"
    first = harness(["sweep", str(spec)], log1)
    wait_for(lambda: training(sw.run_dir(arm, 1, 0)), 180, "trial 1 training", first, log1)
    done0 = sw.run_dir(arm, 0, 0) / "summary.json"
    assert Run(done0.parent).status()["status"] == "completed"
    mtime0 = done0.stat().st_mtime_ns
    first.send_signal(signal.SIGINT)
    assert finish(first, log1, 60) == 130, log1.read_text()[-3000:]
    ts = all_trials(spec)["dpo"]
    assert ts[1].state == TrialState.FAIL and ts[1].user_attrs["retry_reason"] == "interrupted"
    assert Run(sw.run_dir(arm, 1, 0)).status()["status"] == "interrupted"
    assert [t.user_attrs.get("retry_of") for t in ts if t.state == TrialState.WAITING] == [1]

    log2 = tmp_path / "second.log"
    assert finish(harness(["sweep", str(spec)], log2), log2) == 0, log2.read_text()[-3000:]
    ts = all_trials(spec)["dpo"]
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and done[0].number == 0
    assert done0.stat().st_mtime_ns == mtime0  # the finished trial was not run again
    assert 0 not in [n for _, n in starts(log2)]
    assert {t.user_attrs.get("retry_of") for t in done} == {None, 1}


def test_failing_trials_do_not_stop_a_grid_sweep(tmp_path: Path, tiny_base: Path) -> None:
    """Grid over lr x batch size, two seeds each: one configuration trains, the others fail (NaN loss from
    lr=1e30, a batch larger than the data); every grid point runs exactly once (two slots popping the grid from
    the default SQLite storage) and each failure keeps its reason."""
    from harness.core.contract import DataKind
    from harness.worlds.base import get_world

    # a file of 48 pairs: unlike data.max_samples=48, the spec does not tell its size, so the batch
    # larger than the data fails in the trial (sweep validation refuses what the spec alone shows)
    pairs = get_world("toy").data_path(DataKind.PAIRED).read_text().splitlines()[:48]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(line + "\n" for line in pairs))
    spec = write_spec(
        tmp_path, name="grid", methods={"dpo": {"search_space": {"train.lr": [1.0e-4, 1.0e30],
                                                                 "train.batch_size": [4, 100000]}}},
        trials_per_method=None, sampler={"kind": "grid", "seed": 3}, seeds=[0, 1],
        storage=None,  # the default: a SQLite file in the output dir, here shared by two slots
        base={**BASE, "data": {"source": str(data)}, "train": {**BASE["train"], "max_steps": 4, "max_grad_norm": 0.0}})
    log = tmp_path / "grid.log"
    assert finish(harness(["sweep", str(spec), "--slots", "2"], log), log) == 0, log.read_text()[-3000:]
    ts = all_trials(spec)["dpo"]
    assert len(ts) == 4
    assert sorted((t.params["train.lr"], t.params["train.batch_size"]) for t in ts) == \
        sorted((lr, bs) for lr in (1e-4, 1e30) for bs in (4, 100000))
    by = {(t.params["train.lr"], t.params["train.batch_size"]): t for t in ts}
    ok = by[(1e-4, 4)]
    assert ok.state == TrialState.COMPLETE
    sw = load_sweep(spec, check_runs=False)
    # two seeds: the trial's value is their mean, the spread is kept
    losses = [Run(sw.run_dir(sw.arms[0], ok.number, seed)).summary()["final_loss"] for seed in (0, 1)]
    assert ok.user_attrs["values"] == pytest.approx(losses) and ok.value == pytest.approx(sum(losses) / 2)
    assert ok.user_attrs["value_std"] == pytest.approx(abs(losses[0] - losses[1]) / 2 ** 0.5)
    assert by[(1e30, 4)].state == TrialState.FAIL
    assert by[(1e30, 4)].user_attrs["fail_reason"].startswith("non-finite loss")
    for lr in (1e-4, 1e30):
        assert "fewer than one optimizer step" in by[(lr, 100000)].user_attrs["fail_reason"]
    failed = Run(sw.run_dir(sw.arms[0], by[(1e30, 4)].number, 0))
    assert failed.status()["status"] == "failed" and failed.summary()["study_name"] == "grid/dpo"
    assert len(starts(log)) == 4


def test_median_pruner_stops_a_lagging_trial(tmp_path: Path, tiny_base: Path) -> None:
    """The pruner sees held-out metrics every train.eval_every steps.  The pruned metric (reward margins,
    maximised) runs against the objective's direction (loss, minimised), so it is reported negated.  A policy
    that does not move (lr=1e-9) keeps margins at 0; lr=3e-3 overshoots and drives held-out margins below 0,
    so the second trial is worse than the first's median at its first report and is pruned there.
    Trials run as fresh interpreters here (execution.start=spawn, what GPU slots use)."""
    spec = write_spec(
        tmp_path, name="prune", methods={"dpo": {"search_space": {"train.lr": [3.0e-3, 1.0e-9]}}},
        trials_per_method=None, sampler={"kind": "grid", "seed": 1},  # seed 1: lr=1e-9 runs first
        pruner={"kind": "median", "metric": "rewards/margins", "direction": "maximize", "n_startup_trials": 1},
        execution={"start": "spawn"},  # a fresh interpreter per trial, as GPU slots use
        base={**BASE, "data": {"max_samples": 160}, "train": {**BASE["train"], "max_steps": 8, "eval_every": 2}})
    log = tmp_path / "prune.log"
    assert finish(harness(["sweep", str(spec)], log), log) == 0, log.read_text()[-3000:]
    first, second = all_trials(spec)["dpo"]
    assert first.params["train.lr"] == 1e-9 and first.state == TrialState.COMPLETE
    assert sorted(first.intermediate_values) == [2, 4, 6, 8]
    assert all(abs(v) < 1e-3 for v in first.intermediate_values.values())
    assert second.state == TrialState.PRUNED, second.user_attrs
    assert second.user_attrs["pruned_reason"].startswith("pruned at step 2")
    sw = load_sweep(spec, check_runs=False)
    run = Run(sw.run_dir(sw.arms[0], second.number, 0))
    assert run.status()["status"] == "pruned"
    margin = next(r["eval/rewards/margins"] for r in run.metrics() if "eval/rewards/margins" in r)
    assert second.intermediate_values == {2: pytest.approx(-margin)}


# --------------------------------------------------------------------------- clocks, hung trials, credentials


def test_a_worker_whose_clock_is_hours_off_neither_reaps_live_trials_nor_keeps_dead_ones(
        tmp_path: Path, tiny_base: Path) -> None:
    """Worker A trains trial 0.  Worker B, its wall clock 3 hours ahead, joins and watches it for more
    than the grace period: the trial stays running (a reaper comparing A's timestamps with its own clock
    would call it 3 hours stale).  Then A is killed; worker C, its clock 3 hours behind, still declares
    the trial lost after the grace period (comparing clocks, it would wait 3 hours)."""
    spec = write_spec(tmp_path, methods=["dpo"], trials_per_method=1,
                      base={**BASE, "train": {**BASE["train"], "max_steps": 100000}},
                      execution={"heartbeat_s": 0.5, "grace_s": 3, "trial_timeout_s": 3600})
    sw = load_sweep(spec, check_runs=False)
    arm = sw.arms[0]
    logs = {k: tmp_path / f"{k}.log" for k in "abc"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["a"] = harness(["worker", str(spec), "--slots", "1"], logs["a"])
        pid0 = wait_for(lambda: training(sw.run_dir(arm, 0, 0)), 120, "trial 0 training", procs["a"], logs["a"])
        procs["b"] = harness(["worker", str(spec), "--slots", "1"], logs["b"], clock_skew_s=3 * 3600)
        wait_for(lambda: "waiting:" in logs["b"].read_text(), 120, "worker B to join and wait", procs["b"], logs["b"])
        deadline = time.monotonic() + 2 * 3 + 1  # B reaps every 0.5 s: more than two grace periods of looking
        while time.monotonic() < deadline:
            assert all_trials(spec)["dpo"][0].state == TrialState.RUNNING, logs["b"].read_text()[-2000:]
            time.sleep(0.5)
        assert alive(pid0)
        procs["b"].kill()
        procs["b"].wait()
        procs["a"].kill()  # SIGKILL: the trial process follows it
        procs["a"].wait()
        wait_for(lambda: not alive(pid0), 20, "worker A's trial process to die")
        procs["c"] = harness(["worker", str(spec), "--slots", "1"], logs["c"], clock_skew_s=-3 * 3600)
        lost = wait_for(lambda: next((t for t in all_trials(spec)["dpo"] if t.state == TrialState.FAIL), None),
                        120, "worker C to declare trial 0 lost", procs["c"], logs["c"])
        assert lost.number == 0 and "stopped advancing its lease" in lost.user_attrs["fail_reason"]
        assert [t.user_attrs.get("retry_of") for t in all_trials(spec)["dpo"][1:]] == [0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


HANG_PLUGIN = '''
"""A method whose first step never ends: a hung trial (tests/test_sweep_workers.py)."""
import time
from dataclasses import dataclass

from harness.core.contract import DataKind, Paper, register_method, suggest_lr


@dataclass
class HangConfig:
    pass


@register_method
class Hang:
    name = "hang"
    paper = Paper("A hung trial", "", "tests", "https://example.org")
    data_kind = DataKind.SFT
    needs_reference = False
    model_kind = "causal_lm"
    config_cls = HangConfig

    def search_space(self, trial):
        return suggest_lr(trial)

    def objective(self, hp, policy, reference, norm):
        time.sleep(3600)
'''


def _hang_plugin(site: Path) -> Path:
    """An installed method plugin, as pip lays one out: the module and its dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "harness_hang_plugin.py").write_text(HANG_PLUGIN)
    info = site / "harness_hang_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: harness-hang-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[align_harness.methods]\nhang = harness_hang_plugin\n")
    return site


def test_a_hung_trial_times_out_by_default_and_is_retried(tmp_path: Path, tiny_base: Path) -> None:
    """No trial_timeout_s in the spec: the limit is derived from it (2 steps x step_timeout_s + run_overhead_s).
    The hung trial is killed at the limit, failed as a timeout and retried within max_retries; the worker,
    alive and heartbeating throughout, then finishes."""
    site = _hang_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    spec = write_spec(tmp_path, methods=["hang"], trials_per_method=1,
                      execution={"heartbeat_s": 0.5, "grace_s": 30, "max_retries": 1, "step_timeout_s": 1,
                                 "run_overhead_s": 4})
    log = tmp_path / "worker.log"
    assert finish(harness(["sweep", str(spec)], log, env=env), log, timeout=180) == 0, log.read_text()[-3000:]
    # this process does not have the plugin: read the study and runs without loading the spec
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "sweep.log")))
    first, retry = optuna.load_study(study_name="s/hang", storage=storage).get_trials()
    assert first.state == TrialState.FAIL and retry.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"].startswith("timeout: timed out after 6s (derived")
    assert first.user_attrs["retry_reason"] == "timeout" and retry.user_attrs["retry_of"] == first.number
    assert "not retried after 1 retries" in retry.user_attrs["fail_reason"]
    for t in (first, retry):
        run = Run(tmp_path / "out" / "hang" / f"trial-{t.number:04d}-seed0")
        assert run.status()["status"] == "failed" and "timed out" in run.status()["error"]
        assert not alive(int(run.status()["pid"]))
    assert "timeout: timed out" in log.read_text()


def test_storage_url_from_the_environment_and_no_credentials_in_any_record(
        tmp_path: Path, tiny_base: Path, postgres_url: str) -> None:
    """``storage: ${VAR}`` is read from the environment (a clear error when unset), the trial processes reach
    the database with it (the pruner reports to the study), and its password appears in no file the sweep
    writes (run configs, summaries, W&B, job files, logs) nor in ``harness sweep status``."""
    secret = "s3cr3t-pw"
    url = postgres_url.replace("harness@", f"harness:{secret}@")  # trust auth: the password is not checked
    spec = write_spec(tmp_path, name="secret", methods=["dpo"], trials_per_method=1, storage="${HARNESS_TEST_SWEEP_DB}",
                      pruner={"kind": "median", "metric": "loss", "n_startup_trials": 0},
                      base={**BASE, "train": {**BASE["train"], "max_steps": 4, "eval_every": 2}},
                      execution={"heartbeat_s": 1, "grace_s": 30, "tracking": "offline"})
    env = {"WANDB_MODE": "offline"}
    log = tmp_path / "unset.log"
    assert finish(harness(["sweep", str(spec)], log, env=env, cwd=tmp_path), log, timeout=120) == 2
    assert "${HARNESS_TEST_SWEEP_DB}" in log.read_text() and "not set" in log.read_text()
    env["HARNESS_TEST_SWEEP_DB"] = url
    log = tmp_path / "sweep.log"
    assert finish(harness(["sweep", str(spec)], log, env=env, cwd=tmp_path), log) == 0, log.read_text()[-3000:]
    status = subprocess.run([sys.executable, "-m", "harness.cli.main", "sweep", "status", str(spec), "--json"],
                            capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=120)
    assert status.returncode == 0, status.stderr
    storage = optuna.storages.RDBStorage(url)
    trial = optuna.load_study(study_name="secret/dpo", storage=storage).get_trials()[0]
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == [2, 4]  # pruner reports
    redacted = postgres_url.replace("harness@", "harness:***@")
    sw_out = tmp_path / "out" / "dpo" / "trial-0000-seed0"
    assert Run(sw_out).summary()["sweep_storage"] == redacted
    assert Run(sw_out).config()["tags"]["storage"] == redacted
    # W&B got the run's config, storage (redacted) included: the scan below covers what it wrote
    assert any(redacted.encode() in f.read_bytes() for f in tmp_path.rglob("*.wandb")), "nothing reached W&B"
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == [], leaks
    assert secret not in status.stdout + status.stderr and redacted in status.stdout
