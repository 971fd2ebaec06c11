"""The README's commands, run as a user runs them (a real subprocess of the console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HARNESS = [sys.executable, "-m", "harness.cli.main"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


def test_methods_lists_the_canon():
    out = cli("methods")
    assert out.returncode == 0, out.stderr
    for name, kind in [("sft", "sft"), ("reward", "paired"), ("dpo", "paired"), ("ipo", "paired"),
                       ("simpo", "paired"), ("orpo", "paired"), ("kto", "unpaired")]:
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"│ {name} "))
        assert kind in line and "arXiv:" in line


def test_bad_key_fails_fast_with_a_hint(tmp_path):
    out = cli("run", "method=dpo", "train.lrr=1e-5", f"output_dir={tmp_path}")
    assert out.returncode == 2
    assert "did you mean 'lr'" in out.stderr
    assert not any(tmp_path.iterdir())  # nothing started


def test_dpo_from_the_cli_beats_the_sft_base_on_gold_reward(tmp_path, tiny_base):
    out = cli("run", "method=dpo", "model=toy:tiny", f"output_dir={tmp_path}", "name=dpo",
              "train.max_steps=60", "train.lr=5e-4", "train.progress=false", "eval.lm_eval_tasks=[]",
              "eval.kl_samples=1")
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "dpo"
    summary = json.loads((run / "summary.json").read_text())
    cfg = (run / "config.yaml").read_text()
    assert "beta: 0.1" in cfg and "max_steps: 60" in cfg  # the resolved spec is saved
    ev = summary["eval"]
    assert ev["gold_reward_mean"] > ev["baseline_gold_reward_mean"], ev
    assert ev["win_rate"] > 50
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
