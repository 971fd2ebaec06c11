"""The tracker: W&B offline runs read back from their transaction log; failures turn it into a no-op."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from harness.core.config import load_spec, spec_to_dict
from harness.store.tracking import (
    Tracker,
    TrackingWarning,
    WandbTracker,
    load_wandb_run,
    make_tracker,
    read_wandb_log,
    resolve_mode,
)

WANDB_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DISABLED", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL",
             "WANDB_PROJECT", "WANDB_DIR")


@pytest.fixture()
def wandb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B with no user settings, no login and every file it writes inside tmp_path."""
    home = tmp_path / "wandb-home"
    home.mkdir()
    for var in WANDB_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    monkeypatch.chdir(tmp_path)
    return home


def _train_rows() -> list[dict]:
    # the runner's rows: train rows every step, held-out rows at the same step every 2
    rows = []
    for step in range(1, 7):
        rows.append({"step": step, "loss": 0.7 / step, "lr": 1e-4, "grad_norm": None, "tokens_per_s": 9000.0 + step})
        if step % 2 == 0:
            rows.append({"step": step, "eval/loss": 0.8 / step})
    return rows


def test_offline_run_reads_back(tmp_path: Path, wandb_home: Path) -> None:
    config = spec_to_dict(load_spec(None, ["method=dpo", "method.beta=0.25", "seed=3", "name=dpo-0001"]))
    tracker = make_tracker()  # nobody logged in, no WANDB_MODE: offline
    assert isinstance(tracker, WandbTracker) and tracker.mode == "offline"
    run_dir = tmp_path / "runs" / "dpo-0001"
    tracker.start(run_dir, "dpo-0001", config, group="quickstart", job_type="dpo")
    assert tracker.active
    for row in _train_rows():
        tracker.log(row, step=row["step"])
    tracker.log({"loss": 0.05}, step=3)  # a resumed run going back in steps is kept, not dropped
    summary = {"wall_time_s": 12.5, "trainable_params": 3_700_000,
               "eval": {"win_rate": 61.5, "length_controlled_winrate": 58.25,
                        "lm_eval": {"toy_mc": {"acc,none": 0.5}},
                        "judge": {"backend": "gold", "prompt_version": "v1"}}}
    tracker.log_summary(summary)
    rows = [["2+2=", "4", "win", 1.0], ["3+5=", "9", "loss", -0.5]]
    tracker.log_table("samples", ["prompt", "output", "verdict", "reward"], rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        tracker.finish("completed")
    assert not tracker.active

    wdir = tracker.wandb_dir
    assert wdir is not None and wdir.parent == run_dir / "wandb" and wdir.name.startswith("offline-run-")
    got = load_wandb_run(wdir)
    assert got["run"]["name"] == "dpo-0001"
    assert got["run"]["group"] == "quickstart" and got["run"]["job_type"] == "dpo"
    assert got["run"]["project"] == "align-harness"
    assert got["config"] == config
    history = got["history"]
    losses = {r["_step"]: r["loss"] for r in history if "loss" in r}
    assert losses == {s: pytest.approx(0.7 / s) for s in range(1, 7)}
    held_out = {r["_step"]: r["eval/loss"] for r in history if "eval/loss" in r}
    assert held_out == {s: pytest.approx(0.8 / s) for s in (2, 4, 6)}
    assert not any("grad_norm" in r for r in history)  # None values are not logged
    assert [r["resumed/loss"] for r in history if "resumed/loss" in r] == [0.05]
    assert got["summary"]["eval"] == summary["eval"]
    assert got["summary"]["wall_time_s"] == 12.5 and got["summary"]["trainable_params"] == 3_700_000
    assert got["summary"]["status"] == "completed"
    assert got["tables"]["samples"] == {"columns": ["prompt", "output", "verdict", "reward"], "data": rows}
    assert got["exit_code"] == 0

    # a log cut mid-record (a killed process) reads up to the tear
    log = next(wdir.glob("run-*.wandb"))
    torn = tmp_path / "torn.wandb"
    torn.write_bytes(log.read_bytes()[: log.stat().st_size // 2])
    full, partial = list(read_wandb_log(log)), list(read_wandb_log(torn))
    assert 0 < len(partial) < len(full)
    assert [r.SerializeToString() for r in partial] == [r.SerializeToString() for r in full[: len(partial)]]
    other = tmp_path / "other.wandb"
    other.write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(read_wandb_log(other))


def test_failed_run_exit_code_and_offline_files_only(tmp_path: Path, wandb_home: Path) -> None:
    tracker = make_tracker("offline", project="p1")
    tracker.start(tmp_path / "r", "r", {"seed": 0})
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish("failed")
    got = load_wandb_run(tracker.wandb_dir)
    assert got["exit_code"] == 1 and got["summary"]["status"] == "failed" and got["run"]["project"] == "p1"
    # everything W&B wrote stays in the run's directory and our temporary home
    assert not (tmp_path / "wandb").exists()


def test_disabled_writes_nothing(tmp_path: Path, wandb_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for tracker in (make_tracker("disabled"), _with_env(monkeypatch, "WANDB_MODE", "disabled")):
        assert type(tracker) is Tracker and not tracker.active
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        tracker.start(run_dir, "x", {"a": 1})
        tracker.log({"loss": 1.0}, step=1)
        tracker.log_summary({"x": 1})
        tracker.log_table("t", ["a"], [[1]])
        tracker.finish("completed")
        assert list(run_dir.iterdir()) == []


def _with_env(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> Tracker:
    monkeypatch.setenv(key, value)
    return make_tracker()


def test_mode_follows_wandb_settings(tmp_path: Path, wandb_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_mode() == "offline"  # not logged in
    (wandb_home / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert resolve_mode() == "online"  # `wandb login` wrote the netrc entry
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode() == "offline"  # logged in elsewhere, not on this server
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode() == "online"
    (wandb_home / "config").mkdir()
    (wandb_home / "config" / "settings").write_text("[default]\nmode = offline\n")  # `wandb offline`
    assert resolve_mode() == "offline"
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nmode = online\n")  # workspace file wins
    assert resolve_mode() == "online"
    for env, expected in (("dryrun", "offline"), ("offline", "offline"), ("disabled", "disabled"), ("online", "online")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert resolve_mode() == expected
    assert resolve_mode("Disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match="WANDB_MODE='ofline'"):
        resolve_mode()
    with pytest.raises(ValueError, match="tracking mode 'cloud'"):
        make_tracker("cloud")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_mode() == "disabled"


def _calls_warn_once(tracker: Tracker, run_dir: Path) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.start(run_dir, "x", {"a": 1})
        tracker.log({"loss": 1.0}, step=1)
        tracker.log_summary({"eval": {"win_rate": 50.0}})
        tracker.log_table("samples", ["a"], [[1]])
        tracker.finish("completed")
    return [w for w in caught if issubclass(w.category, TrackingWarning)]


def test_online_without_api_key_becomes_noop(tmp_path: Path, wandb_home: Path) -> None:
    tracker = make_tracker("online")
    caught = _calls_warn_once(tracker, tmp_path / "run")
    assert len(caught) == 1 and "init failed" in str(caught[0].message), caught
    assert "API key" in str(caught[0].message)
    assert not tracker.active


def test_wandb_not_installed_becomes_noop(tmp_path: Path, wandb_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    tracker = make_tracker("offline")
    caught = _calls_warn_once(tracker, tmp_path / "run")
    assert len(caught) == 1 and "import of wandb" in str(caught[0].message)


def test_wandb_failing_mid_run_becomes_noop(tmp_path: Path, wandb_home: Path) -> None:
    tracker = make_tracker("offline")
    tracker.start(tmp_path / "run", "x", {"a": 1})
    tracker.log({"loss": 1.0}, step=1)
    tracker._run.finish()  # the W&B run dies under the tracker (e.g. its service process exited)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log({"loss": 0.5}, step=2)
        tracker.log({"loss": 0.25}, step=3)
        tracker.log_summary({"x": 1})
        tracker.finish("completed")
    ours = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(ours) == 1 and "log failed" in str(ours[0].message)
    assert not tracker.active
    got = load_wandb_run(tracker.wandb_dir)
    assert [r["loss"] for r in got["history"] if "loss" in r] == [1.0]


def test_table_rows_must_match_columns() -> None:
    with pytest.raises(ValueError, match=r"table 'samples': row 1 has 2 values, expected 3"):
        Tracker().log_table("samples", ["prompt", "output", "reward"], [["a", "b", 1.0], ["c", "d"]])
    with pytest.raises(ValueError, match="no columns"):
        Tracker().log_table("samples", [], [])
