"""Resume and run status stay true (issue 14): a completed run is never reopened, a resume
with another configuration is refused naming the keys, a killed run reads ``stale`` (never
``running``), SIGTERM ends a run as ``interrupted``, a failed write reports its real cause,
and a run that never trained frees its name.

    pytest -q tests/test_resume_status.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.core.config import ConfigError
from harness.store.runs import Run
from harness.training.loop import TrainHooks
from harness.training.runner import SpecError, execute

ROOT = Path(__file__).resolve().parent.parent


def snapshot(run_dir: Path) -> dict[str, str]:
    """Content hash of every file of a run (what "nothing written" is checked against)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def losses(run: Run) -> list[float]:
    return [r["loss"] for r in sorted((r for r in run.metrics() if "loss" in r), key=lambda r: r["step"])]


def interrupted_run(run_spec, *overrides: str, at: int = 3) -> Run:
    """A run stopped by Ctrl-C after step ``at`` (checkpoints every 2 steps)."""

    def stop(row):
        if row["step"] == at:
            raise KeyboardInterrupt

    spec = run_spec("method=dpo", "train.save_every=2", "name=cut", *overrides)
    with pytest.raises(KeyboardInterrupt):
        execute(spec, TrainHooks(on_log=stop))
    run = Run(Path(spec.output_dir) / "cut")
    assert run.status()["status"] == "interrupted"
    return run


# --------------------------------------------------------------------------- resume


def test_resume_into_a_completed_run_is_refused_and_writes_nothing(run_spec):
    done = execute(run_spec("method=dpo", "train.save_every=2", "name=done"))
    before = snapshot(done.path)
    with pytest.raises(SpecError, match=r"run .*done' is completed and is never reopened"):
        execute(run_spec("method=simpo", "train.lr=5e-4", f"train.resume_from={done.path / 'checkpoints' / 'step-2'}"))
    assert snapshot(done.path) == before
    assert done.status()["status"] == "completed" and done.config()["method"]["name"] == "dpo"


def test_resume_with_another_configuration_is_refused_naming_the_keys(run_spec):
    run = interrupted_run(run_spec)
    before = snapshot(run.path)
    ckpt = f"train.resume_from={run.path / 'checkpoints' / 'step-2'}"
    with pytest.raises(SpecError) as e:
        execute(run_spec("method=dpo", "train.save_every=2", "train.lr=5e-4", "method.beta=0.3", ckpt))
    msg = str(e.value)
    assert "differs from run 'cut'" in msg and "method.beta, train.lr" in msg and "0.0001 -> 0.0005" in msg
    with pytest.raises(SpecError, match="method.name"):
        execute(run_spec("method=simpo", "train.save_every=2", ckpt))
    with pytest.raises(SpecError, match="train.max_steps=3: the run was set to 4 steps; a resume may only train longer"):
        execute(run_spec("method=dpo", "train.save_every=2", "train.max_steps=3", ckpt))
    with pytest.raises(SpecError, match="name='other': train.resume_from belongs to run 'cut'"):
        execute(run_spec("method=dpo", "train.save_every=2", "name=other", ckpt))
    assert snapshot(run.path) == before  # every refusal came before any write


def test_resume_may_train_longer_and_change_what_cannot_alter_the_weights(run_spec):
    run = interrupted_run(run_spec, "train.schedule=constant")
    resumed = execute(run_spec("method=dpo", "train.schedule=constant", "train.save_every=3", "train.max_steps=6",
                               "train.log_every=2", "tracking.project=elsewhere",
                               f"train.resume_from={run.path / 'checkpoints' / 'step-2'}"))
    assert resumed.path == run.path and resumed.status()["status"] == "completed"
    assert [r["step"] for r in resumed.metrics()] == [1, 2, 4, 6]
    assert resumed.summary()["steps"] == 6 and resumed.summary()["resumed_from"].endswith("step-2")
    assert "error" not in resumed.status() and "ended_at" in resumed.status()
    # a constant schedule makes "train longer" exact: step 4 is the 4-step run's step 4
    full = execute(run_spec("method=dpo", "train.schedule=constant", "name=full"))
    at = {r["step"]: r["loss"] for r in resumed.metrics() if "loss" in r}
    assert at[4] == pytest.approx(losses(full)[3], abs=1e-6)
    assert resumed.config()["train"]["max_steps"] == 6  # config.yaml says what ran


# --------------------------------------------------------------------------- liveness


def _child(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


CHILD = """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    os.environ.setdefault("ALIGN_HARNESS_CACHE", {cache!r})
    from harness.core.config import load_spec
    from harness.training.loop import TrainHooks
    from harness.training.runner import execute

    def hook(row):
        if row["step"] == {at}:
            os.kill(os.getpid(), signal.{sig})

    spec = load_spec(None, ["method=dpo", "model=toy:tiny", "output_dir={out}", "name=victim", "data.max_samples=64",
                            "train.max_steps=6", "train.batch_size=4", "train.save_every=2", "train.progress=false",
                            "eval.enabled=false", "tracking.mode=disabled", "train.max_length=64",
                            "train.max_prompt_length=32"])
    execute(spec, TrainHooks(on_log=hook))
"""


def _script(tmp_path: Path, sig: str, at: int) -> str:
    return CHILD.format(tests=str(ROOT / "tests"), cache=os.environ["ALIGN_HARNESS_CACHE"], at=at, sig=sig,
                        out=str(tmp_path / "runs"))


def test_a_sigkilled_run_reads_stale_never_running(tmp_path, tiny_base):
    from harness.reporting.results import results_table

    out = _child(_script(tmp_path, "SIGKILL", 3), tmp_path)
    assert out.returncode == -9, out.stderr[-2000:]
    run = Run(tmp_path / "runs" / "victim")
    assert run.status()["status"] == "running"  # what the killed process left on disk
    live = run.live_status()
    assert live["status"] == "stale" and "is gone" in live["stale_reason"] and live["recorded_status"] == "running"
    table = results_table(tmp_path / "runs")
    assert list(table["status"]) == ["stale"]


def test_sigterm_ends_a_run_as_interrupted_with_its_checkpoint(tmp_path, tiny_base):
    out = _child(_script(tmp_path, "SIGTERM", 3), tmp_path)
    assert out.returncode != -15, "SIGTERM killed the run without recording it"
    run = Run(tmp_path / "runs" / "victim")
    status = run.status()
    assert status["status"] == "interrupted" and status["reason"] == "terminated by SIGTERM"
    assert [c.name for c in run.checkpoints()] == ["step-2"]
    assert "Terminated" in out.stderr


def test_heartbeat_and_lease_judge_runs_on_other_hosts(tmp_path):
    from harness.store.runs import Heartbeat, liveness

    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    remote = {"status": "running", "pid": 1, "host": "other-node", "heartbeat_at": t0.isoformat(), "lease_s": 300}
    assert liveness(remote, at=t0 + dt.timedelta(seconds=299)) == ("running", None)
    state, why = liveness(remote, at=t0 + dt.timedelta(seconds=301))
    assert state == "stale" and "no heartbeat from pid 1 on other-node for 301s (lease 300s)" in why
    # no heartbeat recorded (an older writer) on another host: nothing to judge by
    assert liveness({"status": "running", "pid": 1, "host": "other-node"})[0] == "running"
    assert liveness({"status": "completed", "heartbeat_at": t0.isoformat()})[0] == "completed"

    run = Run.create(tmp_path, "live", prefix="x")
    with Heartbeat(run, interval_s=3600):
        st = run.status()
        assert st["pid"] == os.getpid() and st["heartbeat_at"] and run.live_status()["status"] == "running"
        assert run.beat()  # the thread's refresh
        run.set_status("completed")
        assert not run.beat()  # an ended run is never turned back to running by a late heartbeat
    assert run.status()["status"] == "completed"


# --------------------------------------------------------------------------- failures and names


def test_a_failed_write_reports_the_real_cause(run_spec):
    def break_the_store(row):
        if row["step"] == 2:
            run_dir = Path(spec.output_dir) / "broken"
            (run_dir / "status.json").unlink()
            (run_dir / "status.json").mkdir()  # status can no longer be recorded
            (run_dir / "summary.json").mkdir()  # nor the summary: the real cause of the failure

    spec = run_spec("method=dpo", "name=broken")
    with pytest.raises(OSError) as e:
        execute(spec, TrainHooks(on_log=break_the_store))
    assert "summary.json" in str(e.value) and "status.json" not in str(e.value)
    notes = " ".join(getattr(e.value, "__notes__", []))
    assert "could not record status 'failed' (status.json)" in notes or sys.version_info < (3, 11)


def test_a_run_that_never_trained_frees_its_name(run_spec, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": 1, "rejected": "r"}) + "\n")
    with pytest.raises(ConfigError, match="row 1"):
        execute(run_spec("method=dpo", f"data={bad}", "name=again"))
    failed = Run(Path(run_spec("method=dpo").output_dir) / "again")
    assert failed.status()["status"] == "failed" and failed.never_trained()
    run = execute(run_spec("method=dpo", "name=again"))  # fixed the data, same command
    assert run.status()["status"] == "completed" and "first_step_at" in run.status()


def test_a_taken_name_says_what_it_holds(run_spec):
    from harness.store.runs import RunExistsError

    execute(run_spec("method=orpo", "name=same"))
    with pytest.raises(RunExistsError, match="exists and is completed"):
        execute(run_spec("method=orpo", "name=same"))
    run = interrupted_run(run_spec)
    with pytest.raises(RunExistsError) as e:
        execute(run_spec("method=dpo", "name=cut"))
    assert f"train.resume_from={run.path / 'checkpoints' / 'step-2'}" in str(e.value)
    assert (run.path / "checkpoints" / "step-2" / "trainer_state.json").is_file()  # the hint points at something
