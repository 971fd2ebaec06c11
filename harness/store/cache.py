"""The one content-addressed cache every cached artefact goes through.

    ALIGN_HARNESS_CACHE=/scratch/cache harness run method=dpo   # move it (default ~/.cache/align-harness)

A cache entry is named by a hash of everything that determines its contents (the *key
parts*: weights fingerprints, data hashes, lengths, precision, judge identity, format
versions).  What lives here, each under its own ``kind`` folder:

===============  =====================================================  ====================
kind             contents                                               written by
===============  =====================================================  ====================
``worlds``       built-in worlds' data, tokenizers and base models      ``harness.worlds``
``refcache``     per-sequence reference log-probs of a tokenised split  ``harness.training``
``tokenized``    tokenised examples of a data source                    ``harness.training``
``eval-baseline`` the baseline model's evaluation samples               ``harness.evaluation``
``judgements``   one pairwise judgement per file                        ``harness.evaluation``
``mixtures``     FLAN mixtures' rows and mixture.json                   ``harness.data.mixture``
===============  =====================================================  ====================

Entries are written to a temporary file and renamed into place, so a killed process never
leaves a torn entry; an entry that cannot be read is treated as a miss and rewritten.
Every entry of the blob cache has a ``.key.json`` sidecar listing its key parts, so a
cache directory can be audited (``why did this hit?``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    return Path(os.environ.get("ALIGN_HARNESS_CACHE", Path.home() / ".cache" / "align-harness"))


def cache_dir(kind: str) -> Path:
    return cache_root() / kind


def content_key(parts: Mapping[str, Any] | list[Any], length: int = 32) -> str:
    """A stable hash of JSON-able key parts (dict order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive cross-process lock on ``<path>.lock`` (local filesystems)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_dir(target: Path, builder: Callable[[Path], None]) -> Path:
    """A directory built once by ``builder(tmp_dir)`` and renamed into place.

    Parallel processes (sweep workers) wait on a lock and find the finished directory; a
    build killed half-way leaves only a temporary directory that the next build ignores.
    """
    if (target / "DONE").exists():
        return target
    with file_lock(target):
        if (target / "DONE").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            builder(tmp)
            (tmp / "DONE").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _atomic_write_bytes(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobCache:
    """Files named by the hash of their key parts under ``<cache root>/<kind>/``.

    ``get_or_compute(parts, compute)`` returns ``(value, hit)``.  Values are JSON (``fmt="json"``)
    or anything ``torch.save`` takes (``fmt="torch"``).  ``root=None`` disables caching: every
    call computes.
    """

    def __init__(self, kind: str, fmt: str = "json", root: Path | None | bool = True) -> None:
        if fmt not in ("json", "torch"):
            raise ValueError(f"unknown cache format {fmt!r}")
        self.kind = kind
        self.fmt = fmt
        self.root: Path | None = cache_dir(kind) if root is True else (None if root is False else root)

    def path(self, parts: Mapping[str, Any] | list[Any]) -> Path:
        if self.root is None:
            raise ValueError(f"the {self.kind} cache is disabled")
        return self.root / f"{content_key(parts)}.{'pt' if self.fmt == 'torch' else 'json'}"

    def get(self, parts: Mapping[str, Any] | list[Any]) -> Any | None:
        if self.root is None:
            return None
        path = self.path(parts)
        if not path.exists():
            return None
        try:
            if self.fmt == "torch":
                import torch

                return torch.load(path)
            return json.loads(path.read_text())
        except Exception:  # a torn or corrupt entry is recomputed, never trusted
            path.unlink(missing_ok=True)
            return None

    def put(self, parts: Mapping[str, Any] | list[Any], value: Any) -> None:
        if self.root is None:
            return
        path = self.path(parts)
        if self.fmt == "torch":
            import torch

            _atomic_write_bytes(path, lambda p: torch.save(value, p))
        else:
            _atomic_write_bytes(path, lambda p: p.write_text(json.dumps(value)))
        sidecar = path.with_name(path.stem + ".key.json")
        _atomic_write_bytes(sidecar, lambda p: p.write_text(json.dumps(parts, indent=1, sort_keys=True, default=str)))

    def get_or_compute(self, parts: Mapping[str, Any] | list[Any], compute: Callable[[], Any],
                       valid: Callable[[Any], bool] | None = None) -> tuple[Any, bool]:
        value = self.get(parts)
        if value is not None and (valid is None or valid(value)):
            return value, True
        value = compute()
        self.put(parts, value)
        return value, False
