"""The local run store: one directory per run, written atomically.

    runs/<name>/config.yaml     resolved run spec (what actually ran)
    runs/<name>/status.json     running | completed | failed (with the error) | interrupted
    runs/<name>/metrics.jsonl   one JSON object per logged step (train and periodic eval)
    runs/<name>/summary.json    final metrics, eval results, wall time, tokens/s, memory, params
    runs/<name>/env.json        package versions, git sha, hardware
    runs/<name>/final/          the trained weights (or adapter) + tokenizer
    runs/<name>/checkpoints/step-N/  resumable training state

Every whole-file write goes to a temporary file in the same directory and is renamed
over the target, so a killed run never leaves a half-written JSON/YAML file; the
metrics log is appended one line per write and readers skip a torn last line.
Used by ``harness run`` / ``harness eval`` / sweeps / reports.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

STATUSES = ("running", "completed", "failed", "interrupted", "pruned")


class RunExistsError(FileExistsError):
    pass


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
        """Make a new run directory; never reuses one that exists."""
        root = Path(output_dir)
        root.mkdir(parents=True, exist_ok=True)
        if name is not None:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"run name {name!r}: use letters, digits, '.', '_' and '-'")
            path = root / name
            try:
                path.mkdir()
            except FileExistsError:
                raise RunExistsError(
                    f"run {str(path)!r} exists; pick another name= or resume it with "
                    f"train.resume_from={path}/checkpoints/<step>"
                ) from None
            return cls(path)
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

    # ---- writing
    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def set_status(self, status: str, **extra: Any) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        cur = read_json(self.path / "status.json", {}) or {}
        cur.update(extra)
        cur["status"] = status
        cur.setdefault("started_at", now())
        if status != "running":
            cur["ended_at"] = now()
        atomic_write_json(self.path / "status.json", cur)

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
        return read_json(self.path / "status.json", {}) or {}

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
