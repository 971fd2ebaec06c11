"""The README's main job end to end on real (tiny, short) trials: sweep -> evaluation -> report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd


def test_quickstart_runs_all_five_methods_and_reports(tmp_path, tiny_base):
    out = tmp_path / "qs"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli.main", "quickstart", f"output_dir={out}", "trials_per_method=1",
         "base.train.max_steps=6", "base.train.eval_every=3", "base.eval.lm_eval_limit=4", "base.eval.kl_samples=1"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    html = out / "report" / "index.html"
    assert f"report: {html}" in proc.stdout
    board = pd.read_csv(out / "report" / "leaderboard.csv")
    assert sorted(board["method"]) == ["dpo", "ipo", "kto", "orpo", "simpo"]
    assert (board["completed"] == 1).all()
    assert (out / "report" / "plots" / "frontier.png").stat().st_size > 0
    # every trial really trained and was evaluated with the same judge
    summaries = [json.loads(p.read_text()) for p in out.glob("*/trial-*/summary.json")]
    assert len(summaries) == 5
    assert {s["steps"] for s in summaries} == {6}
    assert len({json.dumps(s["eval"]["judge"], sort_keys=True) for s in summaries}) == 1
