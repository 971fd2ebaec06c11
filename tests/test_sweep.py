"""Sweep specs, search spaces, storages, studies, budgets and the heartbeat reaper (no training here;
tests/test_sweep_workers.py runs real trials).

    .venv/bin/pytest tests/test_sweep.py -q
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FixedTrial, TrialState

from harness.core.config import ConfigError, merge_raw, resolve
from harness.core.contract import METHODS, load_methods
from harness.sweeps import storage as storage_mod
from harness.sweeps.spec import (
    ATTR_LEASE,
    arm_state,
    device_slots,
    load_sweep,
    lookup_metric,
    search_space_fn,
    sweep_status,
    trial_raw,
    within_budget,
)
from harness.sweeps.storage import ensure_studies, parse_storage, transition_lock
from harness.sweeps.worker import Reaper

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))

BASE = {
    "model": "toy:tiny",
    "data": {"max_samples": 48},
    "train": {"max_steps": 2, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "progress": False},
    "eval": {"enabled": False},
    "tracking": {"mode": "disabled"},
}


def spec(tmp_path: Path, **over: object) -> dict:
    raw = {"name": "t", "base": BASE, "methods": ["dpo", "simpo"], "trials_per_method": 2,
           "objective": {"metric": "final_loss", "direction": "minimize"},
           "output_dir": str(tmp_path / "out"), "storage": f"journal:{tmp_path / 'j.log'}"}
    raw.update(over)
    return raw


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_spec_in_sweeps_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEP_DB", "postgresql+psycopg2://user:pw@db-host:5432/sweeps")
    sw = load_sweep(path)
    assert sw.arms and all(a.budget >= 1 for a in sw.arms)
    raw = yaml.safe_load(path.read_text())
    assert sw.name == raw.get("name", path.stem)


def test_the_multi_node_spec_reads_its_database_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its comments tell users to export SWEEP_DB: the spec must read it, and say so when it is missing."""
    path = ROOT / "sweeps" / "qwen-ultrafeedback.yaml"
    assert "export SWEEP_DB=" in path.read_text()
    monkeypatch.delenv("SWEEP_DB", raising=False)
    with pytest.raises(ConfigError, match=r"SWEEP_DB"):
        load_sweep(path, check_runs=False)
    monkeypatch.setenv("SWEEP_DB", "postgresql+psycopg2://me:pw@db-host:5432/sweeps")
    sw = load_sweep(path, check_runs=False)
    assert sw.storage.kind == "rdb" and sw.storage.url == "postgresql+psycopg2://me:pw@db-host:5432/sweeps"
    assert sw.storage.display() == "postgresql+psycopg2://me:***@db-host:5432/sweeps"


def test_spec_dir_has_the_required_specs() -> None:
    names = {p.name for p in SWEEPS}
    assert {"quickstart.yaml", "qwen-ultrafeedback.yaml", "dpo-beta-grid.yaml"} <= names
    qs = load_sweep(ROOT / "sweeps" / "quickstart.yaml")
    assert [a.method for a in qs.arms] == ["dpo", "ipo", "simpo", "orpo", "kto"]
    assert len({a.budget for a in qs.arms}) == 1  # equal budgets


@pytest.mark.parametrize("over, message", [
    ({"trails_per_method": 3}, "did you mean 'trials_per_method'"),
    ({"trials_per_method": "three"}, "trials_per_method: expected"),
    ({"methods": ["dpo", "dop"]}, "unknown method 'dop'"),
    ({"methods": {"dpo": {"search_space": {"method.bta": {"low": 0.01, "high": 1.0}}}}}, "did you mean 'beta'"),
    ({"methods": {"dpo": {"search_space": {"train.lr": {"low": 1e-3, "high": 1e-5, "log": True}}}}},
     "low (0.001) is above high"),
    ({"methods": {"dpo": {"search_space": {"seed": [1, 2]}}}}, "the sweep sets 'seed' itself"),
    ({"methods": {"dpo": {"overrides": {"train": {"batch_sise": 2}}}}}, "did you mean 'batch_size'"),
    ({"sampler": {"kind": "grid"}}, "the grid sampler needs an explicit grid"),
    ({"sampler": {"kind": "grd"}}, "did you mean 'grid'"),
    ({"objective": {"metric": "evl.gold_reward_mean"}}, "did you mean 'eval'"),
    ({"objective": {"metric": "eval.gold_reward_mean"}}, "needs evaluation"),
    ({"pruner": {"kind": "median"}}, "train.eval_every unset"),
    ({"storage": "postgresql://u@h/db"}, "postgresql+psycopg2://"),
    ({"base": {**BASE, "seed": 3}}, "base.seed"),
    ({"execution": {"heartbeat_s": 10, "grace_s": 5}}, "heartbeat_s < grace_s"),
])
def test_bad_specs_fail_before_anything_runs(tmp_path: Path, over: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_sweep(raw=spec(tmp_path, **over))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "j.log").exists()


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(spec(tmp_path, seeds=[1, 1])))
    with pytest.raises(ConfigError, match=r"bad\.yaml: seeds: .*no repeats"):
        load_sweep(p)


def test_overrides_edit_the_spec(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(tmp_path)))
    sw = load_sweep(p, ["trials_per_method=5", "base.train.max_steps=7", "seeds=[3, 4]"])
    assert [a.budget for a in sw.arms] == [5, 5] and sw.seeds == [3, 4]
    raw = trial_raw(sw, sw.arms[0], {}, 12, 4, 1)
    assert raw["train"]["max_steps"] == 7


# --------------------------------------------------------------------------- search spaces


def test_adapter_search_spaces_with_fixed_trials() -> None:
    """Every registered method's default space, fed fixed values, gives overrides that resolve."""
    load_methods()
    for name in METHODS.names():
        adapter = METHODS.get(name)
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        adapter.search_space(probe)
        fixed = {}
        for key, dist in probe.distributions.items():
            fixed[key] = dist.choices[-1] if hasattr(dist, "choices") else dist.high
        overrides = adapter.search_space(FixedTrial(fixed))
        assert overrides == fixed, name
        # dotted keys may reach into nested sections (rlhf's method.ppo.kl_coef)
        spec_ = resolve(merge_raw({"model": "toy:tiny", "method": {"name": name}}, overrides))
        for key, value in overrides.items():
            section, *path = key.split(".")
            obj = spec_.method.hp if section == "method" else getattr(spec_, section)
            for part in path[:-1]:
                obj = getattr(obj, part)
            assert getattr(obj, path[-1]) == value, (name, key)


def test_custom_search_space_with_fixed_trial(tmp_path: Path) -> None:
    sw = load_sweep(raw=spec(tmp_path, methods={"simpo": {"search_space": {
        "method.beta": {"low": 1.0, "high": 10.0, "log": True},
        "method.gamma": {"low": 0.0, "high": 2.0, "step": 0.5},
        "train.batch_size": {"type": "int", "low": 2, "high": 8, "step": 2},
        "train.schedule": ["constant", "cosine"],
    }}}))
    arm = sw.arms[0]
    fixed = {"method.beta": 2.5, "method.gamma": 1.5, "train.batch_size": 6, "train.schedule": "constant"}
    params = search_space_fn(arm)(FixedTrial(fixed))
    assert params == fixed
    raw = trial_raw(sw, arm, params, 7, 0)
    rs = resolve(raw)
    assert (rs.method.hp.beta, rs.method.hp.gamma, rs.train.batch_size, rs.train.schedule) == (2.5, 1.5, 6, "constant")
    assert rs.name == "trial-0007-seed0" and Path(rs.output_dir) == sw.output_dir / "simpo"
    assert rs.tags["study_name"] == "t/simpo" and rs.tags["trial_number"] == 7 and rs.tags["sweep"] == "t"
    assert (rs.tracking.group, rs.tracking.job_type) == ("t", "simpo")
    assert rs.train.max_steps == 2  # the base spec is kept


def test_arms_of_one_method_with_different_overrides(tmp_path: Path) -> None:
    sw = load_sweep(raw=spec(tmp_path, methods={
        "dpo-short": {"method": "dpo", "overrides": {"train.max_steps": 3}},
        "dpo-long": {"method": "dpo", "overrides": {"train": {"max_steps": 9}}},
    }))
    steps = {a.label: resolve(trial_raw(sw, a, {}, 0, 0)).train.max_steps for a in sw.arms}
    assert steps == {"dpo-short": 3, "dpo-long": 9}
    assert {sw.study_name(a) for a in sw.arms} == {"t/dpo-short", "t/dpo-long"}


def test_grid_is_enqueued_once_and_covers_the_grid_exactly(tmp_path: Path) -> None:
    sw = load_sweep(ROOT / "sweeps" / "dpo-beta-grid.yaml", [f"storage=journal:{tmp_path / 'g.log'}",
                                                              f"output_dir={tmp_path / 'out'}"])
    arm = sw.arms[0]
    assert arm.budget == 8
    studies = ensure_studies(sw)
    ensure_studies(sw)  # a second worker / a resume adds nothing
    trials = studies["dpo"].get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.WAITING for t in trials)
    got = sorted((t.system_attrs["fixed_params"]["method.beta"], t.system_attrs["fixed_params"]["train.max_steps"])
                 for t in trials)
    assert got == sorted((b, s) for b in (0.05, 0.1, 1.0, 5.0) for s in (40, 120))


def test_resuming_with_a_different_definition_is_refused(tmp_path: Path) -> None:
    ensure_studies(load_sweep(raw=spec(tmp_path), check_runs=False))
    changed = spec(tmp_path, base={**BASE, "train": {**BASE["train"], "max_steps": 3}})
    with pytest.raises(ConfigError, match=r"different sweep definition \(changed: base\.train\.max_steps"):
        ensure_studies(load_sweep(raw=changed, check_runs=False))
    # the budget is not part of the definition: a sweep can be extended
    ensure_studies(load_sweep(raw=spec(tmp_path, trials_per_method=4), check_runs=False))


# --------------------------------------------------------------------------- storage and studies


def test_storage_urls(tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert parse_storage(None, out).url == f"sqlite:///{out / 'optuna.db'}"
    assert parse_storage(f"journal://{tmp_path}/x.log", out).url == f"{tmp_path}/x.log"
    assert parse_storage("journal:rel/x.log", out).url == str(Path.cwd() / "rel/x.log")
    assert parse_storage("studies.db", out).kind == "sqlite"
    pg = parse_storage("postgresql+psycopg2://me:secret@db:5432/s", out)
    assert pg.kind == "rdb" and "secret" not in pg.display()
    with pytest.raises(ConfigError, match="unsupported URL scheme"):
        parse_storage("redis://x", out)


def race_study_creation(tmp_path: Path, storage: str, n: int = 4) -> None:
    """n workers (each with its own connection) create the same studies at the same moment:
    all succeed, each study exists once, the grid is enqueued once."""
    raw = spec(tmp_path, storage=storage, sampler={"kind": "grid"}, trials_per_method=None,
               methods={"dpo": {"search_space": {"method.beta": [0.1, 0.2, 0.3]}},
                        "ipo": {"search_space": {"method.beta": [0.1, 0.2]}}})
    sw = load_sweep(raw=raw, check_runs=False)
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def racer() -> None:
        try:
            barrier.wait()
            ensure_studies(sw)  # opens its own storage object
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=racer) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    storage_ = sw.storage.open()
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(storage_)) == ["t/dpo", "t/ipo"]
    assert len(optuna.load_study(study_name="t/dpo", storage=storage_).get_trials()) == 3
    assert len(optuna.load_study(study_name="t/ipo", storage=storage_).get_trials()) == 2


def test_study_creation_race_sqlite(tmp_path: Path) -> None:
    race_study_creation(tmp_path, f"sqlite:///{tmp_path / 'race.db'}")


def test_study_creation_race_journal(tmp_path: Path) -> None:
    race_study_creation(tmp_path, f"journal:{tmp_path / 'race.log'}")


# --------------------------------------------------------------------------- budget and reaping


def test_budget_slots_and_retries(tmp_path: Path) -> None:
    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"]), check_runs=False)
    study = ensure_studies(sw)["dpo"]
    a, b, c = study.ask(), study.ask(), study.ask()  # three workers raced for two slots
    trials = study.get_trials()
    assert within_budget(trials, a.number, 2) and within_budget(trials, b.number, 2)
    assert not within_budget(trials, c.number, 2)
    c.set_user_attr("surplus", True)
    study.tell(c, state=TrialState.FAIL)
    study.tell(a, 1.0)
    study.enqueue_trial({"x": 1}, user_attrs={"retry_of": b.number})  # a retry holds b's slot, not a new one
    st = arm_state(study.get_trials(), 2)
    assert (st.free, st.complete, st.running, st.waiting, st.surplus) == (0, 1, 1, 1, 1)
    assert not st.finished


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_racing_asks_never_share_a_waiting_trial(tmp_path: Path, kind: str) -> None:
    """Retries and grid points wait in the study; workers asking at once must each get a different trial."""
    storage = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'r.db'}"
    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"], storage=storage), check_runs=False)
    ensure_studies(sw)
    for beta in (0.1, 0.2, 0.3):
        optuna.load_study(study_name="t/dpo", storage=sw.storage.open()).enqueue_trial({"method.beta": beta})
    barrier = threading.Barrier(6)
    got: list[int] = []

    def asker() -> None:
        study = optuna.load_study(study_name="t/dpo", storage=sw.storage.open())
        barrier.wait()
        with transition_lock(sw.storage):
            got.append(study.ask().number)

    threads = [threading.Thread(target=asker) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == list(range(6))  # the three waiting trials went to three askers, once each
    assert all(t.state == TrialState.RUNNING for t in
               optuna.load_study(study_name="t/dpo", storage=sw.storage.open()).get_trials())


class Clock:
    """A reaper's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _running_trial(sw, params=None):
    study = ensure_studies(sw)["dpo"]
    study.enqueue_trial(params or {"method.beta": 0.3})
    t = study.ask()
    t.suggest_float("method.beta", 0.01, 1.0, log=True)
    sw.storage.open().set_trial_system_attr(t._trial_id, ATTR_LEASE, 1)
    return study, t


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_racing_reapers_retry_a_lost_trial_exactly_once(tmp_path: Path, kind: str) -> None:
    storage = f"journal:{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'r.db'}"
    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"], storage=storage,
                             execution={"heartbeat_s": 1, "grace_s": 5}), check_runs=False)
    study, t = _running_trial(sw)
    clock = Clock()
    reapers = [Reaper(sw, clock) for _ in range(4)]
    for r in reapers:  # each sees the lease once; it then stands still past the grace period
        assert r.reap(sw.storage.open()) == []
    clock.t += 6
    barrier = threading.Barrier(4)
    reaped: list = []

    def reaper(r: Reaper) -> None:
        st = sw.storage.open()
        barrier.wait()
        reaped.extend(r.reap(st))

    threads = [threading.Thread(target=reaper, args=(r,)) for r in reapers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert reaped == [("dpo", t.number)]
    trials = study.get_trials()
    lost = trials[t.number]
    assert lost.state == TrialState.FAIL and "stopped advancing its lease" in lost.user_attrs["fail_reason"]
    retries = [x for x in trials if x.user_attrs.get("retry_of") == t.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["fixed_params"] == {"method.beta": 0.3}
    assert reapers[0].reap(sw.storage.open()) == []  # nothing left to reap


def test_a_reaper_judges_leases_on_its_own_clock_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live trial's lease advances: never reaped, whatever the reaper's wall clock says; a dead one's
    stands still: reaped once the grace period passed on the reaper's monotonic clock, and retries
    are bounded by max_retries."""
    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"], execution={"heartbeat_s": 1, "grace_s": 5, "max_retries": 0}),
                    check_runs=False)
    study, t = _running_trial(sw)
    storage = sw.storage.open()
    for skew in (+3 * 3600, -3 * 3600):  # a wall clock hours off changes nothing
        monkeypatch.setattr(time, "time", lambda s=skew, real=time.time: real() + s)
        clock = Clock()
        reaper = Reaper(sw, clock)
        for beat in range(2, 12):  # the owner advances its lease every heartbeat; the reaper looks as often
            storage.set_trial_system_attr(t._trial_id, ATTR_LEASE, beat + 100 * (skew > 0))
            assert reaper.reap(storage) == []
            clock.t += 1
        monkeypatch.undo()
    clock = Clock()
    reaper = Reaper(sw, clock)
    assert reaper.reap(storage) == []  # first sighting: the clock starts now, however old the lease is
    clock.t += 5
    assert reaper.reap(storage) == []  # not more than grace yet
    clock.t += 0.5
    assert reaper.reap(storage) == [("dpo", t.number)]
    trials = study.get_trials()
    assert "not retried" in trials[t.number].user_attrs["fail_reason"]
    assert not [x for x in trials if x.user_attrs.get("retry_of") == t.number]
    assert arm_state(trials, 2).failed == 1  # a lost trial that is not retried uses its budget slot


def test_an_orphaned_retry_is_enqueued_once_after_grace(tmp_path: Path) -> None:
    """A worker that failed a lost trial and died before enqueueing its retry leaves an orphan: the arm
    is not finished, and a reaper enqueues the retry after the grace period, once."""
    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"], execution={"heartbeat_s": 1, "grace_s": 5}), check_runs=False)
    study, t = _running_trial(sw)
    storage = sw.storage.open()
    storage.set_trial_user_attr(t._trial_id, "retry_wanted", True)
    storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    assert arm_state(study.get_trials(), 2).orphans == 1 and not arm_state(study.get_trials(), 2).finished
    clock = Clock()
    reapers = [Reaper(sw, clock), Reaper(sw, clock)]
    assert [r.reap(storage) for r in reapers] == [[], []]
    clock.t += 6
    for r in reapers:
        r.reap(storage)
    retries = [x for x in study.get_trials() if x.user_attrs.get("retry_of") == t.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert arm_state(study.get_trials(), 2).orphans == 0


def test_a_duplicate_retry_never_runs(tmp_path: Path) -> None:
    """Should a lost trial's retry be enqueued twice, the lowest-numbered one runs and the other is
    failed as surplus when asked, before it starts."""
    from harness.sweeps.worker import Worker

    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"]), check_runs=False)
    study = ensure_studies(sw)["dpo"]
    lost = study.ask()
    lost.suggest_float("method.beta", 0.01, 1.0, log=True)
    study.tell(lost, state=TrialState.FAIL)
    for _ in range(2):
        study.enqueue_trial(dict(lost.params), user_attrs={"retry_of": lost.number, "retry_depth": 1})
    worker = Worker(sw, [{}], log=lambda m: None)
    storage = sw.storage.open()
    first = worker._ask(storage, sw.arms[0])
    assert first is not None and first[1].user_attrs["retry_of"] == lost.number
    assert worker._ask(storage, sw.arms[0]) is None  # the duplicate
    dup = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == lost.number][1]
    assert dup.state == TrialState.FAIL and dup.user_attrs.get("surplus")


@pytest.mark.slow
def test_a_lost_trial_whose_runs_completed_is_completed_not_rerun(tmp_path: Path, tiny_base: Path) -> None:
    """A worker killed after its trial's runs completed, before it told Optuna: the reaper keeps the
    value from the runs instead of running the configuration a second time."""
    from harness.store.runs import Run
    from harness.training.runner import execute

    sw = load_sweep(raw=spec(tmp_path, methods=["dpo"], execution={"heartbeat_s": 1, "grace_s": 5}), check_runs=False)
    study, t = _running_trial(sw)
    arm = sw.arms[0]
    execute(resolve(trial_raw(sw, arm, dict(t.params), t.number, sw.seeds[0])), tracking="disabled")
    loss = Run(sw.run_dir(arm, t.number, sw.seeds[0])).summary()["final_loss"]
    clock = Clock()
    reaper = Reaper(sw, clock)
    reaper.reap(sw.storage.open())
    clock.t += 6
    assert reaper.reap(sw.storage.open()) == [("dpo", t.number)]
    trials = study.get_trials()
    assert trials[t.number].state == TrialState.COMPLETE and trials[t.number].value == pytest.approx(loss)
    assert "its runs had completed" in trials[t.number].user_attrs["recovered"]
    assert not [x for x in trials if x.user_attrs.get("retry_of") == t.number]
    assert Run(sw.run_dir(arm, t.number, sw.seeds[0])).summary()["study_name"] == "t/dpo"


# --------------------------------------------------------------------------- storages shared across hosts


OTHER_HOST = {"hostname": "node-b", "boot_id": "another-kernel"}


def test_a_sqlite_sweep_refuses_a_worker_on_another_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from harness.cli.main import app

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(tmp_path, storage=None)))  # the default: SQLite in the output dir
    sw = load_sweep(p, check_runs=False)
    ensure_studies(sw)
    ensure_studies(sw)  # the same host again: fine
    monkeypatch.setattr(storage_mod, "host_identity", lambda: dict(OTHER_HOST))
    with pytest.raises(ConfigError, match=r"created by a worker on host .*node-b.*PostgreSQL.*journal"):
        ensure_studies(sw)
    res = CliRunner().invoke(app, ["worker", str(p), "--slots", "1"])
    assert res.exit_code == 2 and "PostgreSQL" in res.output, res.output
    # a restarted host keeps its name (a new boot id); containers on one host share the kernel's boot id
    monkeypatch.undo()
    me = storage_mod.host_identity()
    for ident in ({**me, "boot_id": "rebooted"}, {**me, "hostname": "container-2"}):
        monkeypatch.setattr(storage_mod, "host_identity", lambda i=ident: dict(i))
        ensure_studies(sw)


def test_a_journal_shared_across_hosts_needs_a_shared_filesystem(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sw = load_sweep(raw=spec(tmp_path), check_runs=False)  # a journal file in tmp_path: a local filesystem
    ensure_studies(sw)
    monkeypatch.setattr(storage_mod, "host_identity", lambda: dict(OTHER_HOST))
    with pytest.raises(ConfigError, match=r"shared filesystem where O_CREAT\|O_EXCL is atomic"):
        ensure_studies(sw)
    monkeypatch.setattr(storage_mod, "filesystem_type", lambda path: "nfs4")
    ensure_studies(sw)  # on NFS it may be shared


# --------------------------------------------------------------------------- credentials in storage URLs


def test_storage_urls_from_the_environment_and_credentials_never_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.core.config import spec_to_dict
    from harness.sweeps.spec import summary_keys, sweep_tags
    from harness.sweeps.storage import StorageRef

    raw = spec(tmp_path, storage="${HARNESS_TEST_DB}")
    monkeypatch.delenv("HARNESS_TEST_DB", raising=False)
    with pytest.raises(ConfigError, match=r"\$\{HARNESS_TEST_DB\}.*not set.*export HARNESS_TEST_DB="):
        load_sweep(raw=raw, check_runs=False)
    url = "postgresql+psycopg2://me:s3cr3t-pw@127.0.0.1:1/sweeps?sslpassword=k3y-pw&application_name=x"
    monkeypatch.setenv("HARNESS_TEST_DB", url)
    sw = load_sweep(raw=raw, check_runs=False)
    assert sw.storage.kind == "rdb" and sw.storage.url == url
    arm = sw.arms[0]
    written = json.dumps([sw.storage.display(), sw.storage.report_form, repr(sw.storage), repr(sw),
                          summary_keys(sw, arm, 0, 0), sweep_tags(sw, arm, 0, 0),
                          spec_to_dict(resolve(trial_raw(sw, arm, {}, 0, 0)))], default=str)
    assert "s3cr3t-pw" not in written and "k3y-pw" not in written
    assert "postgresql+psycopg2://me:***@127.0.0.1:1/sweeps" in written and "application_name=x" in written
    with pytest.raises(Exception) as e:  # nothing listens on port 1: the error names the storage, not the password
        StorageRef("rdb", url).open()
    assert "s3cr3t-pw" not in str(e.value) and "127.0.0.1:1" in str(e.value)


def test_trial_timeout_is_derived_from_the_spec(tmp_path: Path) -> None:
    """Without execution.trial_timeout_s a trial still has a limit: run_overhead_s plus step_timeout_s per
    optimizer step, per seed (a hung trial under a live worker would hold its slot forever)."""
    from harness.sweeps.spec import UNKNOWN_STEPS_TIMEOUT_S, trial_timeout

    def limit(over: dict, **execution: object) -> tuple[float, str]:
        train = {k: v for k, v in {**BASE["train"], **over.get("train", {})}.items() if v is not None}
        base = {**BASE, "train": train, "data": over.get("data", BASE["data"])}
        sw = load_sweep(raw=spec(tmp_path, seeds=[0, 1], base=base, execution=execution), check_runs=False)
        return trial_timeout(sw.spec.execution, [resolve(trial_raw(sw, sw.arms[0], {}, 0, s)) for s in sw.seeds])

    got, how = limit({})  # max_steps 2, two seeds
    assert got == 2 * (3600 + 2 * 60) and how.startswith("derived")
    got, _ = limit({"train": {"max_steps": None, "epochs": 3, "grad_accum": 2}}, step_timeout_s=10, run_overhead_s=100)
    assert got == 2 * (100 + 3 * 6 * 10)  # 48 samples / (4 x 2) = 6 steps per epoch
    got, _ = limit({"train": {"max_steps": None}, "data": {}})  # steps unknown until the data loads
    assert got == 2 * UNKNOWN_STEPS_TIMEOUT_S
    assert limit({}, trial_timeout_s=90) == (90, "execution.trial_timeout_s")
    with pytest.raises(ConfigError, match="trial_timeout_s must be a finite number"):
        limit({}, trial_timeout_s=float("inf"))  # like every number of a spec: a long limit is a large number
    with pytest.raises(ConfigError, match="trial_timeout_s must be > 0"):
        limit({}, trial_timeout_s=0)


# --------------------------------------------------------------------------- small pieces


def test_lookup_metric() -> None:
    s = {"final_loss": 0.5, "eval": {"gold_reward_mean": 0.2, "lm_eval/toy_mc/acc": 0.7},
         "final_metrics": {"rewards/accuracies": 0.75}}
    assert lookup_metric(s, "final_loss") == 0.5
    assert lookup_metric(s, "eval.gold_reward_mean") == 0.2
    assert lookup_metric(s, "eval.lm_eval/toy_mc/acc") == 0.7
    assert lookup_metric(s, "final_metrics.rewards/accuracies") == 0.75
    with pytest.raises(KeyError):
        lookup_metric(s, "eval.kl_mean")


def test_device_slots() -> None:
    assert device_slots("0,1,2,3", None, 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in device_slots("3,5", None, 1)] == ["3", "5"]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in device_slots(None, 3, 1)] == ["", "", ""]
    with pytest.raises(ConfigError, match="do not split"):
        device_slots("0,1,2", None, 2)
    with pytest.raises(ConfigError, match="either --devices or --slots"):
        device_slots("0", 2, 1)


def test_status_of_a_sweep_not_started(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from harness.cli.main import app

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(tmp_path)))
    st = sweep_status(load_sweep(p))
    assert [a["exists"] for a in st["arms"]] == [False, False]
    res = CliRunner().invoke(app, ["sweep", "status", str(p)])
    assert res.exit_code == 0, res.output
    assert "dpo" in res.output and "simpo" in res.output
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_dashboard_serves_the_sweep_storage(tmp_path: Path) -> None:
    pytest.importorskip("optuna_dashboard")
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec(tmp_path)))
    ensure_studies(load_sweep(p, check_runs=False))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli.main", "dashboard", str(p), "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    data = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.5)
        assert sorted(s["study_name"] for s in data["study_summaries"]) == ["t/dpo", "t/simpo"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
