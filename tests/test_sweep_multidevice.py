"""A sweep trial over several devices: `harness sweep SPEC --slots 1 --devices-per-trial 2` on CPU
launches each trial as 2 processes (torch.distributed, gloo), exactly as `--devices 0,1,2,3
--devices-per-trial 2` launches it with accelerate over 2 GPUs.

    .venv/bin/pytest tests/test_sweep_multidevice.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.core.config import load_spec
from harness.pipelines.run import run

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"max_steps": 4, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "progress": False,
         "lr": 1.0e-3, "ref_cache": False}


def test_a_trial_over_two_cpu_processes_equals_one_process_with_the_same_global_batch(tmp_path, tiny_base):
    spec = {"name": "md", "base": {"model": "toy:tiny", "data": {"max_samples": 64}, "train": TRAIN,
                                   "eval": {"enabled": False}, "tracking": {"mode": "disabled"}},
            "methods": {"dpo": {"search_space": {"method.beta": {"low": 0.05, "high": 0.5}}}}, "trials_per_method": 1,
            "sampler": {"kind": "random", "seed": 0}, "objective": {"metric": "final_loss", "direction": "minimize"},
            "output_dir": str(tmp_path / "sweep")}
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(f), "--slots", "1", "--devices-per-trial", "2"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = sorted((tmp_path / "sweep" / "dpo").glob("trial-*/summary.json"))
    assert len(runs) == 1
    summary = json.loads(runs[0].read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2
    beta = yaml.safe_load((runs[0].parent / "config.yaml").read_text())["method"]["beta"]
    # the same global batch on one process: 2 micro-batches of 4
    one = run(load_spec(None, ["model=toy:tiny", "method=dpo", f"method.beta={beta}", "data.max_samples=64",
                               *(f"train.{k}={v}" for k, v in TRAIN.items()), "train.grad_accum=2",
                               "eval.enabled=false", "tracking.mode=disabled", f"output_dir={tmp_path}", "name=one"]))
    assert summary["final_loss"] == pytest.approx(one.summary()["final_loss"], abs=1e-5)


def test_a_missing_accelerate_config_is_named_before_any_trial(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"name": "bad", "methods": ["dpo"], "output_dir": str(tmp_path / "out"),
                                 "execution": {"accelerate_config": str(tmp_path / "fsdp.yaml")}}))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(f), "--slots", "1", "--devices-per-trial", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    err = " ".join(out.stderr.split())  # the console wraps long lines
    assert "execution.accelerate_config" in err and "no such file" in err
    assert not (tmp_path / "out").exists()
