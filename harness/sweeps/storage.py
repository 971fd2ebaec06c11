"""Where a sweep's studies live and how workers share them safely.

    harness sweep sweeps/quickstart.yaml storage=postgresql+psycopg2://user@db/sweeps   # many nodes
    harness sweep sweeps/quickstart.yaml storage=journal:/shared/sweeps/q.log          # shared filesystem
    export SWEEP_DB=postgresql+psycopg2://user:password@db/sweeps   # spec: storage: ${SWEEP_DB}

:func:`parse_storage` turns the spec's ``storage`` into a :class:`StorageRef` (a SQLite file
in the output directory by default); ``${VAR}`` references are expanded from the environment
first (:func:`expand_env`), so credentials stay out of spec files.  A :class:`StorageRef`
shows and records only its redacted form (:meth:`StorageRef.display`): passwords never reach
logs, run configs, summaries, W&B or ``harness sweep status``; trial processes get the real URL
through their environment.  :func:`ensure_studies` creates one study per arm once, retrying
the creation race between workers, and refuses to resume a study made from a different sweep
definition; retries of lost trials are enqueued here.

Which storage for how many hosts:

- **SQLite** (the default): workers on one host only.  Its locking (and the harness's lock
  around trial transitions, :func:`transition_lock`) is ``flock`` on a local file, which does
  not reach other hosts (and is broken on many NFS implementations).  The creating host is
  recorded in each study; a worker on another host is refused with a pointer to the two
  storages below.
- **PostgreSQL** (``postgresql+psycopg2://``): any number of hosts; row locks make every trial
  transition atomic.
- **journal file** (``journal:<path>``): several hosts only on a shared filesystem where creating a
  file with ``O_CREAT|O_EXCL`` is atomic across hosts (NFSv3 or later, Lustre, GPFS/Spectrum
  Scale, CephFS, BeeGFS, GlusterFS, SMB); Optuna's journal lock (``JournalFileOpenLock``) relies
  on it, and object-store mounts (s3fs, gcsfuse) break it.  A worker on a host other than the
  creator's refuses a journal on a filesystem not known to qualify
  (``HARNESS_JOURNAL_SHARED_FS_OK=1`` overrides, for filesystems that do).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.core.config import ConfigError

if TYPE_CHECKING:
    from harness.sweeps.spec import Sweep



_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: query parameters of a database URL that carry secrets
_SECRET_PARAM = re.compile(r"pass|secret|token|key", re.IGNORECASE)

#: the environment variable a worker hands the real storage URL to its trial processes in
STORAGE_ENV = "HARNESS_SWEEP_STORAGE"


def expand_env(text: str, where: str = "storage") -> str:
    """``${VAR}`` references replaced by the environment's values; an unset one is an error naming it."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        v = os.environ.get(name)
        if v is None or v == "":
            raise ConfigError(f"{where}: {text!r} refers to ${{{name}}}, which is not set in this environment; "
                              f"export {name}=... (e.g. postgresql+psycopg2://user:password@db-host:5432/sweeps) on "
                              "every node that runs a worker")
        return v

    return _ENV_REF.sub(value, text)


def redact_url(url: str) -> str:
    """A database URL with its password (and secret-bearing query parameters) replaced by ``***``."""
    if "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    netloc, sep, tail = rest.partition("/")
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")  # a password may itself contain '@'
        user, colon, _ = creds.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"{user}@{host}"
    if "?" in tail:
        path, _, query = tail.partition("?")
        params = [(k, "***" if _SECRET_PARAM.search(k) else v)
                  for k, _, v in (p.partition("=") for p in query.split("&") if p)]
        tail = path + "?" + "&".join(f"{k}={v}" for k, v in params)
    return f"{scheme}://{netloc}{sep}{tail}"


class StorageError(RuntimeError):
    """The storage cannot be opened; the message shows the redacted URL only."""


@dataclass(frozen=True)
class StorageRef:
    """Where a sweep's studies live.  ``url`` is canonical (absolute paths) and may hold
    credentials: it is only ever handed to the storage driver, never printed or recorded."""

    kind: Literal["sqlite", "rdb", "journal"]
    url: str = field(repr=False)

    def __repr__(self) -> str:
        return f"StorageRef(kind={self.kind!r}, url={self.display()!r})"

    @property
    def report_form(self) -> str:
        """How runs record it (tags, summary.json, W&B): the redacted URL; a journal as its bare file path."""
        return self.display()

    @property
    def path(self) -> Path | None:
        if self.kind == "sqlite":
            return Path(self.url.removeprefix("sqlite:///"))
        if self.kind == "journal":
            return Path(self.url)
        return None

    def display(self) -> str:
        """The URL with any password hidden: what logs, status and run records show."""
        return redact_url(self.url) if self.kind == "rdb" else self.url

    def _scrub(self, text: str) -> str:
        text = text.replace(self.url, self.display())
        creds = self.url.partition("://")[2].partition("/")[0].rpartition("@")[0]
        password = creds.partition(":")[2]
        return text.replace(password, "***") if len(password) >= 3 else text

    def open(self) -> Any:
        """An Optuna storage object; schema creation races between workers are retried.  A
        failure is re-raised as :class:`StorageError` with the credentials scrubbed from it."""
        try:
            return self._open()
        except Exception as e:
            if self.kind != "rdb":
                raise
            raise StorageError(f"cannot open storage {self.display()}: {self._scrub(f'{type(e).__name__}: {e}')}") from None

    def _open(self) -> Any:
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


# --------------------------------------------------------------------------- hosts sharing a file storage

ATTR_HOST = "harness:storage_host"
#: filesystems on which O_CREAT|O_EXCL is atomic across hosts (what Optuna's journal lock needs)
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "ceph", "fuse.ceph", "fuse.cephfs", "beegfs", "glusterfs",
             "fuse.glusterfs", "cifs", "smb3", "smbfs", "panfs", "wekafs", "fuse.weka", "ocfs2", "gfs2")


def host_identity() -> dict[str, str]:
    """This machine: its host name and the running kernel's boot id (containers on one host share
    the kernel, and so its file locks, under different host names)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return {"hostname": socket.gethostname(), "boot_id": boot}


def same_host(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    # the host name survives reboots (a new boot id); the boot id spans containers (other names)
    return bool(a.get("hostname")) and a.get("hostname") == b.get("hostname") or \
        bool(a.get("boot_id")) and a.get("boot_id") == b.get("boot_id")


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` lives on (``/proc/mounts``, longest mount point), or ''."""
    target = str(path.resolve())
    best, kind = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mnt = fields[1].replace("\\040", " ")
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, kind = mnt, fields[2]
    return kind


def check_host(ref: StorageRef, study_name: str, creator: Mapping[str, Any] | None) -> None:
    """Refuse a file storage shared with another host where that cannot work (see the module docstring)."""
    if ref.kind == "rdb" or not creator:
        return
    me = host_identity()
    if same_host(creator, me):
        return
    there, here = creator.get("hostname", "?"), me["hostname"]
    if ref.kind == "sqlite":
        raise ConfigError(
            f"study {study_name!r} in {ref.display()} was created by a worker on host {there!r}; this worker runs on "
            f"{here!r}.  A SQLite file is for workers of one host (its locks do not reach other hosts): run more "
            "workers on that host, or put the sweep in PostgreSQL (storage=postgresql+psycopg2://user@db-host/sweeps, "
            "e.g. storage: ${SWEEP_DB} in the spec) or in a journal file on a shared filesystem "
            "(storage=journal:/shared/path/sweep.log) for many nodes"
        )
    assert ref.path is not None
    fs = filesystem_type(ref.path)
    if fs not in SHARED_FS and os.environ.get("HARNESS_JOURNAL_SHARED_FS_OK", "") != "1":
        raise ConfigError(
            f"study {study_name!r} in journal {ref.display()} was created on host {there!r}; this worker runs on "
            f"{here!r}, but the journal lies on a {fs or 'unknown'!s} filesystem.  A journal shared by several hosts "
            "needs a shared filesystem where O_CREAT|O_EXCL is atomic across hosts (NFSv3+, Lustre, GPFS, CephFS, "
            "BeeGFS, GlusterFS, SMB), or use PostgreSQL (storage=postgresql+psycopg2://...); set "
            "HARNESS_JOURNAL_SHARED_FS_OK=1 if this filesystem qualifies"
        )


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
                               ("direction", sweep.spec.objective.direction), ("seeds", sweep.seeds),
                               (ATTR_HOST, host_identity())):
                study.set_user_attr(key, value)
        else:
            check_host(sweep.storage, name, study.user_attrs.get(ATTR_HOST))
            if ATTR_HOST not in study.user_attrs:  # made by an older harness or a process that died early
                study.set_user_attr(ATTR_HOST, host_identity())
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
    return studies


def enqueue_retry(study: Any, trial: Any) -> None:
    """Re-enqueue a failed trial's configuration as a retry that inherits its budget slot.  A lost
    or timed-out trial's retry counts towards ``execution.max_retries``; an interrupted one's not."""
    depth = int(trial.user_attrs.get("retry_depth", 0))
    if trial.user_attrs.get("retry_reason") != "interrupted":
        depth += 1
    root = trial.user_attrs.get("retry_root", trial.number)
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number, "retry_root": root,
                                                       "retry_depth": depth})
