"""Content identity of models: what every cache that depends on a model's weights keys on."""

from __future__ import annotations

import hashlib
from pathlib import Path


def weights_fingerprint(model_dir: str | Path) -> str:
    """Content hash of a model directory's weights and config (keys the reference cache)."""
    p = Path(model_dir)
    h = hashlib.sha256()
    files = sorted(f for f in p.iterdir() if f.suffix in {".safetensors", ".bin", ".json"} and f.is_file()) if p.is_dir() else []
    if not files:
        h.update(str(model_dir).encode())  # a hub id at a pinned revision
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:24]
