"""Experiment tracking behind one small interface: W&B when it works, nothing when it cannot.

The runner talks only to :class:`Tracker`::

    tracker = make_tracker()            # mode from W&B's own settings (see resolve_mode)
    tracker.start(run.path, run.name, spec_dict, group="quickstart", job_type="dpo")
    tracker.log({"loss": 0.61, "lr": 1e-4}, step=10)
    tracker.log_summary(summary)        # eval results, wall time, ...
    tracker.log_table("samples", ["prompt", "output", "verdict", "reward"], rows)
    tracker.finish("completed")

A sweep is a W&B *group* and each method a *job type*, so the W&B UI groups trials the
same way the report does.  The run store on disk (``harness.store.runs``) is the source of
truth: W&B is a mirror.  Any exception raised by wandb (not installed, no network, no
API key, a dead service process) is reported once as a :class:`TrackingWarning` and the
tracker turns into a no-op, so a run never fails because of tracking.

``harness run ...`` and ``harness sweep ...`` use it through ``harness.training.runner``; set
``WANDB_MODE=disabled`` to turn it off, ``WANDB_MODE=online`` (or ``wandb login``) to upload.
:func:`read_wandb_log` reads back what an offline run wrote (tests, debugging).
"""

from __future__ import annotations

import configparser
import json
import netrc
import os
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MODES = ("online", "offline", "disabled")
#: WANDB_MODE spellings that wandb itself accepts, mapped onto ours
_MODE_ALIASES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
                 "disabled": "disabled"}
#: run store statuses -> W&B exit codes (W&B knows only "finished" (0) and "failed")
_EXIT_CODES = {"completed": 0, "pruned": 0, "failed": 1, "interrupted": 255}
DEFAULT_PROJECT = "align-harness"


class TrackingWarning(RuntimeWarning):
    """W&B failed; the run goes on and the tracker stops logging."""


# --------------------------------------------------------------------------- mode


def _settings_file_mode() -> str | None:
    """``mode`` from W&B's settings files (written by ``wandb offline`` / ``wandb online``).

    The workspace file (``./wandb/settings``) overrides the global one
    (``$WANDB_CONFIG_DIR/settings``, default ``~/.config/wandb/settings``), as in wandb.
    """
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or str(Path("~/.config/wandb").expanduser())
    found = None
    for path in (Path(config_dir) / "settings", Path(os.environ.get("WANDB_DIR") or ".") / "wandb" / "settings"):
        parser = configparser.ConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue  # wandb treats an unreadable settings file as empty too
        value = parser.get("default", "mode", fallback=None)
        if value:
            found = value
    return found


def _logged_in() -> bool:
    """An API key is available without prompting: env var, identity token, or ``wandb login``'s netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC") or Path("~/.netrc").expanduser())
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str | None = None) -> str:
    """The W&B mode a run uses: ``mode`` if given, else W&B's own settings.

    Order: ``WANDB_MODE`` (or the legacy ``WANDB_DISABLED=true``), then the ``mode`` of W&B's
    settings files, then ``online`` when an API key is configured, else ``offline``.
    """
    if mode is not None:
        key = mode.strip().lower()
        if key not in _MODE_ALIASES:
            raise ValueError(f"tracking mode {mode!r}: use one of {', '.join(MODES)}")
        return _MODE_ALIASES[key]
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in _MODE_ALIASES:
            raise ValueError(f"WANDB_MODE={env!r}: use one of {', '.join(MODES)}")
        return _MODE_ALIASES[env]
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1", "yes"):
        return "disabled"
    from_file = (_settings_file_mode() or "").strip().lower()
    if from_file in _MODE_ALIASES:
        return _MODE_ALIASES[from_file]
    return "online" if _logged_in() else "offline"


# --------------------------------------------------------------------------- trackers


def _check_table(name: str, columns: list[str], rows: list[list[Any]]) -> None:
    if not columns:
        raise ValueError(f"table {name!r}: no columns")
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(
                f"table {name!r}: row {i} has {len(row)} values, expected {len(columns)} ({', '.join(columns)})"
            )


class Tracker:
    """The interface the runner uses; this base class logs nothing (``disabled``)."""

    mode = "disabled"

    def start(self, run_dir: Path, name: str, config: dict[str, Any], group: str | None = None,
              job_type: str | None = None) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        _check_table(name, columns, rows)

    def finish(self, status: str) -> None:
        pass

    @property
    def active(self) -> bool:
        """True while something is really being recorded."""
        return False


NullTracker = Tracker


class WandbTracker(Tracker):
    """Mirrors one run into W&B; the first wandb error turns it into a no-op."""

    def __init__(self, mode: str, project: str | None = None, entity: str | None = None) -> None:
        if mode not in ("online", "offline"):
            raise ValueError(f"WandbTracker mode {mode!r}: use online or offline")
        self.mode = mode
        self.project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.entity = entity
        self._run: Any = None
        self._wandb: Any = None
        self._failed = False
        self._last_step = -1
        #: the run's local directory (``<run_dir>/wandb/<offline-run-...>``) once started
        self.wandb_dir: Path | None = None

    @property
    def active(self) -> bool:
        return self._run is not None and not self._failed

    def _fail(self, what: str, err: BaseException) -> None:
        if not self._failed:
            warnings.warn(
                f"W&B {what} failed ({type(err).__name__}: {err}); continuing without W&B "
                f"(the run store on disk has everything)",
                TrackingWarning,
                stacklevel=3,
            )
        self._failed = True
        run, self._run = self._run, None
        if run is not None:
            try:  # free wandb's resources; errors here add nothing to the warning above
                run.finish(exit_code=1)
            except Exception:
                pass

    def start(self, run_dir: Path, name: str, config: dict[str, Any], group: str | None = None,
              job_type: str | None = None) -> None:
        if self._failed or self._run is not None:
            return
        try:
            import wandb

            self._wandb = wandb
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=self.project, entity=self.entity, name=name, dir=str(run_dir),
                config=config, group=group, job_type=job_type, mode=self.mode,  # type: ignore[arg-type]
                # several runs in one process (tests, in-process trials) must not finish each other
                reinit="create_new",
                settings=wandb.Settings(silent=True),
            )
            self.wandb_dir = Path(self._run.dir).parent
        except Exception as e:  # wandb raises many types; none may stop a run
            self._fail("init", e)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active:
            return
        row = {k: v for k, v in metrics.items() if k != "step" and v is not None}
        if step < self._last_step:
            # W&B drops rows whose step goes back (e.g. after resuming from a checkpoint)
            row = {f"resumed/{k}": v for k, v in row.items()}
            step = self._last_step
        try:
            self._run.log(row, step=int(step))
            self._last_step = int(step)
        except Exception as e:
            self._fail("log", e)

    def log_summary(self, summary: dict[str, Any]) -> None:
        if not self.active:
            return
        try:
            self._run.summary.update(summary)
        except Exception as e:
            self._fail("summary", e)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        _check_table(name, columns, rows)
        if not self.active:
            return
        try:
            table = self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])
            self._run.log({name: table}, step=max(self._last_step, 0))
        except Exception as e:
            self._fail("table", e)

    def finish(self, status: str) -> None:
        if not self.active:
            return
        try:
            self._run.summary.update({"status": status})
            self._run.finish(exit_code=_EXIT_CODES.get(status, 1))
        except Exception as e:
            self._fail("finish", e)
        self._run = None


def make_tracker(mode: str | None = None, project: str | None = None) -> Tracker:
    """A tracker for ``mode`` (``online``/``offline``/``disabled``; None: W&B's own settings)."""
    resolved = resolve_mode(mode)
    if resolved == "disabled":
        return Tracker()
    return WandbTracker(resolved, project=project)


# --------------------------------------------------------------------------- reading back

#: W&B's transaction log (``run-<id>.wandb``) is a LevelDB-style log of protobuf records:
#: a 7-byte file header, then 32 KiB blocks of chunks (crc32, length, type, payload).
_HEADER_IDENT = b":W&B"
_BLOCK = 32768
_CHUNK_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_log(path: str | Path) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages of a ``.wandb`` file, in order.

    Chunks with a bad checksum end the read (a run killed mid-write leaves a torn tail).
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != _HEADER_IDENT:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:4]!r})")
    pos, pending = 7, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _CHUNK_HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + _CHUNK_HEADER:pos + _CHUNK_HEADER + length]
        if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            return
        pos += _CHUNK_HEADER + length
        if kind == _FULL:
            blob: bytes | None = payload
        elif kind == _FIRST:
            pending, blob = payload, None
        elif kind == _MIDDLE:
            pending, blob = pending + payload, None
        elif kind == _LAST:
            blob, pending = pending + payload, b""
        else:
            return
        if blob is not None:
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(blob)
            yield record


def _item_key(item: Any) -> tuple[str, ...]:
    return tuple(item.nested_key) if item.nested_key else (item.key,)


def _set_nested(d: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    for part in key[:-1]:
        d = d.setdefault(part, {})
    d[key[-1]] = value


def load_wandb_run(run_dir: str | Path, wait_s: float = 10.0) -> dict[str, Any]:
    """What a W&B run directory (``.../wandb/offline-run-*``) recorded, as plain Python.

    Returns ``{"run": {id, name, project, group, job_type}, "config": {...},
    "history": [row, ...], "summary": {...}, "tables": {name: {"columns", "data"}},
    "exit_code": int | None}``.  Tables are read from the media files the history rows point to.
    W&B's service process writes the log after ``run.finish()`` returns, so this waits up to
    ``wait_s`` seconds for the log's final ``exit`` record (a crashed run never writes one).
    """
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    if not logs:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    deadline = time.monotonic() + wait_s
    while True:
        records = list(read_wandb_log(logs[0]))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "tables": {},
                           "exit_code": None}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "project": r.project,
                          "group": r.run_group, "job_type": r.job_type}
            for item in r.config.update:
                _set_nested(out["config"], _item_key(item), json.loads(item.value_json))
        elif kind == "config":
            for item in rec.config.update:
                _set_nested(out["config"], _item_key(item), json.loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set_nested(row, _item_key(item), json.loads(item.value_json))
            out["history"].append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _set_nested(out["summary"], _item_key(item), json.loads(item.value_json))
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    for row in out["history"]:
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "table-file" and "path" in value:
                table = json.loads((run_dir / "files" / value["path"]).read_text())
                out["tables"][key] = {"columns": table["columns"], "data": table["data"]}
    return out
