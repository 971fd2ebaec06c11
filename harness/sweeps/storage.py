"""Where a sweep's studies live and how workers share them safely.

    harness sweep sweeps/quickstart.yaml storage=postgresql+psycopg2://user@db/sweeps   # many nodes
    harness sweep sweeps/quickstart.yaml storage=journal:/shared/sweeps/q.log          # shared filesystem

:func:`parse_storage` turns the spec's ``storage`` into a :class:`StorageRef` (a SQLite file
in the output directory by default); :func:`ensure_studies` creates one study per arm once,
retrying the creation race between workers, and refuses to resume a study made from a
different sweep definition; retries of lost trials are enqueued here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.core.config import ConfigError

if TYPE_CHECKING:
    from harness.sweeps.spec import Sweep



@dataclass(frozen=True)
class StorageRef:
    """Where a sweep's studies live.  ``url`` is canonical (absolute paths)."""

    kind: Literal["sqlite", "rdb", "journal"]
    url: str

    @property
    def report_form(self) -> str:
        """How runs record it: RDB URLs as they are, a journal as its bare file path."""
        return self.url

    @property
    def path(self) -> Path | None:
        if self.kind == "sqlite":
            return Path(self.url.removeprefix("sqlite:///"))
        if self.kind == "journal":
            return Path(self.url)
        return None

    def display(self) -> str:
        if self.kind == "rdb" and "@" in self.url:  # hide a password in printed URLs
            scheme, _, rest = self.url.partition("://")
            creds, _, host = rest.rpartition("@")
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else self.url
        return self.url

    def open(self) -> Any:
        """An Optuna storage object; schema creation races between workers are retried."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(self.url, lock_obj=JournalFileOpenLock(self.url)))
        if self.kind == "sqlite":
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kw: dict[str, Any] = {"connect_args": {"timeout": 120}}
        else:
            kw = {"pool_pre_ping": True}
        return retry_race(lambda: optuna.storages.RDBStorage(self.url, engine_kwargs=kw), "open storage")


@contextlib.contextmanager
def transition_lock(ref: StorageRef) -> Iterator[None]:
    """Serialise trial state changes (ask, tell, reap) on SQLite.

    Python's sqlite3 driver runs the SELECT of Optuna's check-then-update outside the
    write transaction, so two processes can both move one trial out of WAITING or
    RUNNING (both run it, or both enqueue its retry).  A file lock next to the database
    closes that window; SQLite is a local file, so ``flock`` reaches every process that
    can open it.  PostgreSQL (row locks) and journal files (a losing update is rejected
    on replay) are atomic by themselves and take no lock."""
    if ref.kind != "sqlite" or ref.path is None:
        yield
        return
    ref.path.parent.mkdir(parents=True, exist_ok=True)
    with open(ref.path.with_name(ref.path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def parse_storage(text: str | None, output_dir: Path) -> StorageRef:
    if text is None or text == "":
        return StorageRef("sqlite", f"sqlite:///{(output_dir / 'optuna.db').absolute()}")
    if text.startswith("journal:"):
        rest = text.removeprefix("journal:")
        rest = rest[2:] if rest.startswith("//") else rest  # journal:///abs and journal:rel
        if not rest:
            raise ConfigError(f"storage: {text!r} names no journal file")
        return StorageRef("journal", str(Path(rest).expanduser().absolute()))
    if text.startswith("sqlite:///"):
        p = Path(text.removeprefix("sqlite:///")).expanduser()
        return StorageRef("sqlite", f"sqlite:///{p.absolute()}")
    if "://" in text:
        scheme = text.split("://", 1)[0]
        if scheme in ("postgresql", "postgres"):
            raise ConfigError(f"storage: {text!r}: write postgresql+psycopg2://... (plain postgresql:// means psycopg 3, "
                              "which is not installed)")
        if not scheme.startswith(("postgresql+", "mysql")):
            raise ConfigError(f"storage: unsupported URL scheme {scheme!r}; use sqlite:///, postgresql+psycopg2://, "
                              "mysql+pymysql:// or journal:<path>")
        return StorageRef("rdb", text)
    p = Path(text).expanduser()
    if p.suffix in (".db", ".sqlite", ".sqlite3"):
        return StorageRef("sqlite", f"sqlite:///{p.absolute()}")
    return StorageRef("journal", str(p.absolute()))


#: how the creation race shows up: SQLite, PostgreSQL (psycopg2) and Optuna's own error
_RACE_MARKERS = ("unique constraint", "uniqueviolation", "duplicate key", "already exists",
                 "database is locked", "deadlock")


def retry_race(fn: Callable[[], Any], what: str, attempts: int = 12) -> Any:
    """Call ``fn``; when another worker won a creation race (schema, study), wait a moment and retry."""
    import optuna

    for i in range(attempts):
        try:
            return fn()
        except optuna.exceptions.DuplicatedStudyError:
            raise  # the study exists: the caller loads it
        except Exception as e:
            text = f"{type(e).__name__} {e}".lower()
            if i == attempts - 1 or not any(m in text for m in _RACE_MARKERS):
                raise
            time.sleep(0.05 + random.random() * 0.25 * (i + 1))
    raise AssertionError(f"unreachable: {what}")


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(value)"]


def ensure_studies(sweep: Sweep, storage: Any | None = None) -> dict[str, Any]:
    """Create (or load) one study per arm; enqueue grid points once.  Safe to call from racing workers.

    Refuses to resume a study created from a different definition (base spec, search
    space, seeds, objective), which would mix incomparable trials."""
    import optuna

    storage = storage if storage is not None else sweep.storage.open()
    studies = {}
    for arm in sweep.arms:
        name = sweep.study_name(arm)
        definition = json.loads(json.dumps(sweep.definition(arm), default=str))
        created = False
        def create(n: str = name) -> Any:
            return optuna.create_study(study_name=n, storage=storage, direction=sweep.spec.objective.direction)

        try:
            study = retry_race(create, f"create study {name}")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage)
        if created:
            for key, value in (("harness:definition", definition), ("harness:fingerprint", _fingerprint(definition)),
                               ("sweep", sweep.name), ("arm", arm.label), ("method", arm.method),
                               ("objective", sweep.spec.objective.metric),
                               ("direction", sweep.spec.objective.direction), ("seeds", sweep.seeds)):
                study.set_user_attr(key, value)
        else:
            old = study.user_attrs.get("harness:definition")
            if old is None:  # created by a process that died before writing its attributes
                for key, value in (("harness:definition", definition), ("harness:fingerprint", _fingerprint(definition))):
                    study.set_user_attr(key, value)
            elif _fingerprint(old) != _fingerprint(definition):
                changed = ", ".join(_diff(old, definition)[:8])
                raise ConfigError(
                    f"study {name!r} in {sweep.storage.display()} was created from a different sweep definition "
                    f"(changed: {changed}); give the sweep a new name or output_dir to start afresh"
                )
            if study.direction.name.lower() != sweep.spec.objective.direction:
                raise ConfigError(f"study {name!r} optimises {study.direction.name.lower()}, the spec says "
                                  f"{sweep.spec.objective.direction}")
        if arm.grid is not None and not created:
            # the creator enqueues the grid; give it a moment before assuming it died midway
            deadline = time.monotonic() + 30
            while not study.user_attrs.get("harness:grid_enqueued") and time.monotonic() < deadline:
                time.sleep(0.5)
                study = optuna.load_study(study_name=name, storage=storage)
        if arm.grid is not None and not study.user_attrs.get("harness:grid_enqueued"):
            if created or not study.get_trials(deepcopy=False):
                order = list(range(len(arm.grid)))
                random.Random(sweep.spec.sampler.seed).shuffle(order)
                for i in order:
                    study.enqueue_trial(arm.grid[i], user_attrs={"grid_index": i})
                study.set_user_attr("harness:grid_enqueued", True)
        studies[arm.label] = study
    recover_orphan_retries(sweep, studies)
    return studies


def recover_orphan_retries(sweep: Sweep, studies: Mapping[str, Any], min_age_s: float = 60.0) -> int:
    """Enqueue retries that a worker decided on but died before enqueueing (rare; see the module docstring)."""
    import datetime as dt

    n = 0
    for study in studies.values():
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        for t in trials:
            if (t.state.name == "FAIL" and t.user_attrs.get("retry_wanted") and t.number not in retried
                    and t.datetime_complete is not None
                    and (dt.datetime.now() - t.datetime_complete).total_seconds() > min_age_s):
                enqueue_retry(study, t)
                n += 1
    return n


def enqueue_retry(study: Any, trial: Any) -> None:
    depth = int(trial.user_attrs.get("retry_depth", 0))
    if trial.user_attrs.get("retry_reason") != "interrupted":
        depth += 1
    root = trial.user_attrs.get("retry_root", trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_root": root,
                                                       "retry_depth": depth})
