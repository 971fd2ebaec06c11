"""Content identity of models: what every cache that depends on a model's outputs keys on.

    harness run method=dpo        # reference log-probs are cached under weights_fingerprint(reference, revision)
    harness eval runs/dpo-0001    # baseline samples and judgements are cached under the baseline's / judge's

:func:`weights_fingerprint` names everything about a model that changes what it computes, so
a cache entry keyed on it can only be hit by the same model:

- a **local directory**: every file in it that loading reads or may read: weights (all
  shards and their index), ``config.json``, ``generation_config.json``, every tokenizer file
  (``tokenizer.json``, ``merges.txt``, ``tokenizer.model``, ...), the chat template
  (``chat_template.jinja`` in transformers 5), remote code (``*.py``), peft's
  ``adapter_config.json`` and adapter weights, the harness's ``harness_peft.json``.  Only files
  that cannot change outputs are skipped (documentation, locks, optimizer and trainer state of
  a checkpoint).  Retraining into the same directory therefore changes the fingerprint.
- an **adapter directory** adds its base model's fingerprint: an adapter on a retrained base is
  another model.
- a **hub id** is pinned to the commit its revision resolves to (from the hub when online,
  else from the local Hugging Face cache's ``refs/``, as ``from_pretrained`` itself resolves
  it), never the id string: ``main`` moves.  When the revision cannot be resolved offline,
  :class:`ModelIdentityError` says so instead of keying on the name.  With
  ``trust_remote_code`` the commits of code repositories that ``auto_map`` points to are added.

Sweeps hash the same model in every trial, so file hashes are memoised inside a process per
(path, size, mtime, inode): a rewritten file gets a new mtime and inode and is hashed again,
an unchanged one costs a ``stat``.  :func:`module_fingerprint` hashes an in-memory model (a
judge handed over as an object) from its parameters and config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

#: bump when what a fingerprint covers changes, so every key built on it changes with it
FINGERPRINT_VERSION = 2

#: files of a model directory that never change its outputs (hashing them only costs time)
_SKIP_NAMES = {"DONE", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "trainer_state.json",
               "training_args.bin", "sft_summary.json"}
_SKIP_SUFFIXES = (".md", ".lock", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".tmp")
_SKIP_PREFIXES = (".", "LICENSE", "NOTICE", "USE_POLICY", "rng_state", "random_states_")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

_memo: dict[tuple[str, int, int, int], str] = {}
_hub_memo: dict[tuple[str, str], str] = {}
_memo_lock = threading.Lock()


class ModelIdentityError(ValueError):
    """A model's identity cannot be pinned down (a hub revision that cannot be resolved offline)."""


def _skipped(name: str) -> bool:
    return name in _SKIP_NAMES or name.endswith(_SKIP_SUFFIXES) or name.startswith(_SKIP_PREFIXES)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime_ns, inode) in this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    value = _hash_file(p)
    with _memo_lock:
        _memo[key] = value
    return value


def model_files(model_dir: str | Path) -> list[Path]:
    """The files of a model directory that its fingerprint covers (top level, sorted by name)."""
    p = Path(model_dir)
    return sorted((f for f in p.iterdir() if f.is_file() and not _skipped(f.name)), key=lambda f: f.name)


def is_hub_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not name.startswith((".", "/", "~"))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or env.strip().lower() in ("1", "true", "yes", "on")


def _repo_cache(repo_id: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def resolve_hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit a hub revision (branch, tag or commit; default ``main``) points to.

    Online, the hub answers (falling back to the local cache when it cannot be reached, as
    ``from_pretrained`` does); offline, the local cache's ``refs/<revision>`` does.  Raises
    :class:`ModelIdentityError` when neither knows it."""
    rev = revision or "main"
    if _COMMIT.match(rev):
        return rev  # a full commit hash names its content whether or not it is downloaded
    if not _offline():
        with _memo_lock:
            known = _hub_memo.get((repo_id, rev))
        if known is not None:
            return known
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo_id, revision=rev).sha
            if sha:
                with _memo_lock:  # a branch may move later, but not under one run's feet
                    _hub_memo[(repo_id, rev)] = str(sha)
                return str(sha)
        except Exception:  # unreachable hub: what from_pretrained loads is the cached snapshot
            pass
    ref = _repo_cache(repo_id) / "refs" / rev
    if ref.is_file():
        sha = ref.read_text().strip()
        if sha:
            return sha
    from huggingface_hub import constants

    raise ModelIdentityError(
        f"model {repo_id!r} at revision {rev!r}: cannot resolve the revision to a commit "
        f"({'HF_HUB_OFFLINE is set and ' if _offline() else 'the hub is unreachable and '}the local Hugging Face "
        f"cache {constants.HF_HUB_CACHE} has no refs/{rev} for it), so cached results cannot be keyed on its "
        "weights; download it once online (`hf download " + repo_id + "`), pass a full 40-character "
        "commit hash as model.revision, or point to a local directory"
    )


def _remote_code_repos(config_files: list[Path]) -> list[str]:
    """Other hub repositories whose code ``auto_map`` entries (``repo--module.Class``) load."""
    repos: set[str] = set()
    for f in config_files:
        if not f.is_file():
            continue
        try:
            auto_map = json.loads(f.read_text()).get("auto_map") or {}
        except (ValueError, AttributeError):
            continue
        values: list[Any] = []
        for v in auto_map.values():
            values.extend(v if isinstance(v, list) else [v])
        for v in values:
            if isinstance(v, str) and "--" in v:
                repos.add(v.split("--", 1)[0])
    return sorted(repos)


def _remote_code_part(config_files: list[Path]) -> dict[str, str]:
    return {repo: resolve_hub_commit(repo) for repo in _remote_code_repos(config_files)}


def _dir_fingerprint(p: Path, trust_remote_code: bool, seen: frozenset[str]) -> dict[str, Any]:
    parts: dict[str, Any] = {"files": {f.name: file_hash(f) for f in model_files(p)}}
    if trust_remote_code:
        parts["remote_code"] = _remote_code_part([p / "config.json", p / "tokenizer_config.json"])
    if (p / "adapter_config.json").is_file():
        from harness.modeling.generation import adapter_base

        base = adapter_base(p)
        try:
            base_rev = json.loads((p / "adapter_config.json").read_text()).get("revision")
        except ValueError:
            base_rev = None
        if str(Path(base).expanduser().absolute()) in seen:
            raise ModelIdentityError(f"{p}: the adapter's base model {base!r} is the adapter itself")
        parts["base"] = _fingerprint(base, base_rev, trust_remote_code, seen | {str(p.absolute())})
    return parts


def _fingerprint(model: str | Path, revision: str | None, trust_remote_code: bool, seen: frozenset[str]) -> str:
    name = str(model)
    p = Path(name).expanduser()
    if p.is_dir():
        parts: dict[str, Any] = {"kind": "dir", **_dir_fingerprint(p, trust_remote_code, seen)}
    elif p.is_file():
        parts = {"kind": "file", "sha": file_hash(p)}
    elif is_hub_id(name):
        commit = resolve_hub_commit(name, revision)
        parts = {"kind": "hub", "repo": name, "commit": commit}
        if trust_remote_code:
            snap = _repo_cache(name) / "snapshots" / commit
            parts["remote_code"] = _remote_code_part([snap / "config.json", snap / "tokenizer_config.json"])
    else:
        raise ModelIdentityError(f"model {name!r} is neither an existing path nor a hub id")
    parts["v"] = FINGERPRINT_VERSION
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def weights_fingerprint(model: str | Path, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """Content hash of everything in a model (directory, adapter directory or hub id at
    ``revision``) that determines its outputs; see the module docstring."""
    return _fingerprint(model, revision, trust_remote_code, frozenset())


def module_fingerprint(model: Any) -> str:
    """Content hash of an in-memory model: its config and every parameter and buffer (name,
    dtype, shape, bytes).  One pass over the weights; for judges handed over as objects."""
    import torch

    h = hashlib.sha256(f"module-v{FINGERPRINT_VERSION}".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not isinstance(t, torch.Tensor):
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]
