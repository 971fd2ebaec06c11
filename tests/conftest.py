"""Shared fixtures: the toy world and its tiny SFT base are built once per test session
(and reused across sessions through the content-addressed cache in .cache/test-cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ALIGN_HARNESS_CACHE", str(ROOT / ".cache" / "test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_world():
    from harness.worlds.base import get_world

    world = get_world("toy")
    assert world.root.is_dir()  # builds data + tokenizer
    return world


@pytest.fixture(scope="session")
def tiny_base(toy_world) -> Path:
    """The tiny Llama SFT base of the toy world (trained by this harness's own SFT)."""
    from harness.training.runner import ensure_base_model

    return ensure_base_model(toy_world, "tiny")


@pytest.fixture
def run_spec(tmp_path, tiny_base):
    """Build a RunSpec for a short real run on the tiny toy model."""
    from harness.core.config import load_spec

    def make(*overrides: str):
        base = [
            "model=toy:tiny", f"output_dir={tmp_path / 'runs'}", "data.max_samples=64",
            "train.max_steps=4", "train.batch_size=4", "train.progress=false", "eval.enabled=false",
            "tracking.mode=disabled", "train.max_length=64", "train.max_prompt_length=32",
        ]
        return load_spec(None, base + list(overrides))

    return make
