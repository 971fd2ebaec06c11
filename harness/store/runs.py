"""The local run store: one directory per run, written atomically.

    runs/<name>/config.yaml     resolved run spec (what actually ran)
    runs/<name>/status.json     running | completed | failed (with the error) | interrupted | pruned,
                                plus the writer's pid, host and heartbeat while it runs
    runs/<name>/metrics.jsonl   one JSON object per logged step (train and periodic eval)
    runs/<name>/skipped_rows.jsonl  data rows skipped by data.skip_bad_rows=true (file, row, reason)
    runs/<name>/summary.json    final metrics, eval results, wall time, tokens/s, memory, params
    runs/<name>/env.json        package versions, git sha, hardware
    runs/<name>/final/          the trained weights (or adapter) + tokenizer
    runs/<name>/checkpoints/step-N/  resumable training state

Every whole-file write goes to a temporary file in the same directory and is renamed
over the target, so a killed run never leaves a half-written JSON/YAML file; the
metrics log is appended one line per write and readers skip a torn last line.
Used by ``harness run`` / ``harness eval`` / sweeps / reports.

A process killed by SIGKILL (or a lost node) cannot record its own end, so a
``running`` status is only believed while its writer shows signs of life: readers call
:meth:`Run.live_status`, which reports ``stale`` when the recorded pid is gone (same
host) or the heartbeat that :class:`Heartbeat` refreshes is older than its lease (any
host).  ``stale`` is never written; it is what a reader sees.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("running", "completed", "failed", "interrupted", "pruned")
#: what readers may see besides STATUSES: a ``running`` run whose process is gone
STALE = "stale"

#: seconds between heartbeats of a running run (ALIGN_HARNESS_HEARTBEAT_S overrides it)
HEARTBEAT_S = float(os.environ.get("ALIGN_HARNESS_HEARTBEAT_S", "30"))
#: a run whose last heartbeat is older than this many intervals is stale; generous, so a
#: busy machine or a slow shared file system never makes a live run look dead
LEASE_INTERVALS = 10

#: serialises read-modify-write of status.json between the main thread and the heartbeat thread
_STATUS_LOCK = threading.RLock()


class RunExistsError(FileExistsError):
    """The run name is taken; the message says by what and what the user can do."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def this_host() -> str:
    return socket.gethostname()


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (killed but not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): existence is all we know


def liveness(status: Mapping[str, Any], *, host: str | None = None,
             at: _dt.datetime | None = None) -> tuple[str, str | None]:
    """(status a reader should show, why it is stale): a recorded ``running`` becomes ``stale``
    when its process is gone (same host: the pid is not alive) or its heartbeat is older than
    its lease (any host).  A run written without heartbeats on another host cannot be judged
    and reads as recorded."""
    recorded = str(status.get("status") or "unknown")
    if recorded != "running":
        return recorded, None
    here = host or this_host()
    pid = status.get("pid")
    if status.get("host") == here and isinstance(pid, int) and not isinstance(pid, bool) and not pid_alive(pid):
        return STALE, f"its process {pid} on {here} is gone (killed, or the machine restarted)"
    beat = _parse_time(status.get("heartbeat_at"))
    if beat is not None:
        lease = float(status.get("lease_s") or HEARTBEAT_S * LEASE_INTERVALS)
        age = ((at or _dt.datetime.now(_dt.timezone.utc)) - beat).total_seconds()
        if age > lease:
            return STALE, (f"no heartbeat from pid {pid} on {status.get('host')} for {age:.0f}s "
                           f"(lease {lease:.0f}s): its process died, hangs or lost its node")
    return "running", None


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path, default: Any = None) -> Any:
    p = Path(path)
    if not p.exists():
        return default
    return json.loads(p.read_text())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a killed run
    return rows


class Run:
    """A handle on ``runs/<name>/``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---- creation
    @classmethod
    def create(cls, output_dir: str | Path, name: str | None, prefix: str) -> Run:
        """Make a new run directory.  An existing one is never reused, except the directory of
        a run that ended before its first optimizer step (failed, interrupted or stale, with no
        metrics, checkpoints or weights): it holds nothing but its error, so its name is freed."""
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)
        if name is not None:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' and '-'")
            path = root / name
            for attempt in range(2):
                try:
                    path.mkdir()
                    return cls(path)
                except FileExistsError:
                    existing = cls(path)
                    if attempt or not existing.never_trained() or not existing._discard():
                        raise RunExistsError(existing.taken_message()) from None
            raise AssertionError("unreachable")
        # <prefix>-NNNN, the first free number; mkdir is the lock between racing workers
        taken = [int(m.group(1)) for p in root.glob(f"{prefix}-*") if (m := re.fullmatch(rf"{re.escape(prefix)}-(\d+)", p.name))]
        n = max(taken, default=0) + 1
        while True:
            path = root / f"{prefix}-{n:04d}"
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                n += 1

    def never_trained(self) -> bool:
        """True for a run that ended before its first optimizer step: not running (or stale),
        no first step recorded, no metrics, checkpoints or final weights."""
        if not (self.path / "status.json").is_file():
            return False
        try:
            status = self.live_status()
        except (OSError, ValueError):
            return False
        return (status.get("status") in ("failed", "interrupted", STALE) and "first_step_at" not in status
                and not self.metrics() and not (self.path / "checkpoints").exists() and not self.final_dir.exists())

    def _discard(self) -> bool:
        """Move this run directory aside (atomically, so a racing creator sees it gone or whole), then delete it."""
        aside = self.path.with_name(f".{self.path.name}.discarded-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except OSError:
            return False
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def taken_message(self) -> str:
        """Why this run's name cannot be used again, and what to do instead."""
        where = str(self.path)
        try:
            st = self.live_status()
        except (OSError, ValueError):
            st = {}
        state = st.get("status") or "unknown"
        if state == "completed":
            return f"run {where!r} exists and is completed (a completed run is never reopened); pick another name="
        if state == "running":
            return (f"run {where!r} is running (pid {st.get('pid')} on {st.get('host')}); pick another name= "
                    "or wait for it to end")
        latest = self.checkpoints()
        if latest:
            return (f"run {where!r} exists ({state}); pick another name= or resume it with "
                    f"train.resume_from={latest[-1]}")
        return (f"run {where!r} exists ({state}) and has no checkpoint to resume from "
                "(train.save_every was unset or it ended first); pick another name= or delete the directory")

    # ---- writing
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def set_status(self, status: str, **extra: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with _STATUS_LOCK:
            cur = read_json(self.path / "status.json", {}) or {}
            if status == "running" and cur.get("status") != "running":
                # a resumed attempt: the previous attempt's end and error no longer describe the run
                for stale_key in ("ended_at", "error", "reason"):
                    cur.pop(stale_key, None)
            cur.update(extra)
            cur["status"] = status
            cur.setdefault("started_at", now())
            if status != "running":
                cur["ended_at"] = now()
            atomic_write_json(self.path / "status.json", cur)

    def beat(self) -> bool:
        """Refresh the heartbeat of this process's running run; False when the run is no longer
        this process's to keep alive (it ended, or another process took it over)."""
        with _STATUS_LOCK:
            cur = read_json(self.path / "status.json", {}) or {}
            if cur.get("status") != "running" or cur.get("pid") != os.getpid():
                return False
            cur["heartbeat_at"] = now()
            atomic_write_json(self.path / "status.json", cur)
            return True

    def log_metrics(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, default=_json_default) + "\n"
        fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    def update_summary(self, **parts: Any) -> dict[str, Any]:
        cur = self.summary()
        cur.update(parts)
        self.write_summary(cur)
        return cur

    def write_env(self) -> None:
        atomic_write_json(self.path / "env.json", environment())

    # ---- reading
    def config(self) -> dict[str, Any]:
        p = self.path / "config.yaml"
        return yaml.safe_load(p.read_text()) if p.exists() else {}

    def status(self) -> dict[str, Any]:
        """status.json as recorded (writers use this; readers want :meth:`live_status`)."""
        return read_json(self.path / "status.json", {}) or {}

    def live_status(self) -> dict[str, Any]:
        """status.json as a reader should show it: a ``running`` run whose process is gone reads
        ``stale``, with ``stale_reason`` and the ``recorded_status``."""
        cur = self.status()
        shown, why = liveness(cur)
        if why is not None:
            cur = {**cur, "status": shown, "recorded_status": cur.get("status"), "stale_reason": why}
        return cur

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "metrics.jsonl")

    def summary(self) -> dict[str, Any]:
        return read_json(self.path / "summary.json", {}) or {}

    def env(self) -> dict[str, Any]:
        return read_json(self.path / "env.json", {}) or {}

    def checkpoints(self) -> list[Path]:
        ck = sorted(
            (self.path / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])
        )
        return [c for c in ck if (c / "trainer_state.json").exists()]

    @property
    def final_dir(self) -> Path:
        return self.path / "final"


class Heartbeat:
    """Marks a run ``running`` by this process (pid, host) and keeps its heartbeat fresh from a
    daemon thread until the block ends; the status the block ends with is the caller's to set.

        with Heartbeat(run):
            ...  # train
    """

    def __init__(self, run: Run, interval_s: float | None = None, extra: Mapping[str, Any] | None = None) -> None:
        self.run = run
        self.interval = float(interval_s if interval_s is not None else HEARTBEAT_S)
        #: more fields for status.json (e.g. ``resumed_from``)
        self.extra = dict(extra or {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        self.run.set_status("running", pid=os.getpid(), host=this_host(), heartbeat_at=now(),
                            heartbeat_s=self.interval, lease_s=self.interval * LEASE_INTERVALS, **self.extra)
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.run.name}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.run.beat():
                    return
            except Exception:  # a full disk must not kill training; readers will see the lease run out
                continue

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)


def iter_runs(root: str | Path) -> Iterator[Run]:
    """Every run directory below ``root`` (any depth), identified by its config.yaml."""
    root = Path(root)
    if (root / "config.yaml").exists():
        yield Run(root)
        return
    for cfg in sorted(root.rglob("config.yaml")):
        rel = cfg.relative_to(root).parts
        # model dirs and W&B's own files/config.yaml are not runs
        if "checkpoints" in rel or "final" in rel or "wandb" in rel:
            continue
        yield Run(cfg.parent)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    from importlib import metadata

    pkgs = {}
    for name in ("align-harness", "torch", "transformers", "accelerate", "peft", "datasets", "trl",
                 "optuna", "lm_eval", "wandb", "bitsandbytes", "tokenizers"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    hw: dict[str, Any] = {"cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        import torch

        hw["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        hw["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": pkgs,
        "git_sha": _git_sha(),
        "hardware": hw,
        "date": now(),
    }
