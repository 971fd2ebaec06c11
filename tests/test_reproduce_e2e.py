"""``harness reproduce`` end to end on a tiny budget: real training (3 steps per run), the sweep machinery,
the derived noisy-label data, the report, its regeneration from the store it names, resuming.

    .venv/bin/pytest tests/test_reproduce_e2e.py -q          # about two minutes on 2 CPU cores

One paper (cDPO: 2 arms x 2 learning rates x 2 seeds = 8 runs of toy:tiny) keeps it short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.reproduce.stats import Draw, load_store

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("reproduce")
    reports = tmp / "reports"
    reports.mkdir()
    shutil.copy(ROOT / "reports" / "README.md", reports / "README.md")  # its own text must survive
    out = cli("reproduce", "cdpo", "--budget", "tiny", "--runs", str(tmp / "runs"), "--reports", str(reports),
              cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp, reports, out


def test_it_trains_evaluates_and_writes_the_report(reproduced):
    tmp, reports, out = reproduced
    store = tmp / "runs" / "cdpo" / "cdpo-label-noise" / "tiny"
    assert (store / "sweep.yaml").is_file() and (store / "optuna.db").is_file()
    # 2 arms x 2 configurations x 2 seeds, all trained and evaluated for real
    summaries = [json.loads(p.read_text()) for p in store.glob("*/trial-*/summary.json")]
    assert len(summaries) == 8 and all(s["status"] == "completed" and s["steps"] == 3 for s in summaries)
    assert {s["method"] for s in summaries} == {"dpo", "cdpo"}
    # the derived data: the toy pairs relabelled by the gold reward, 30% of them flipped, used by every run
    (data,) = store.glob("data/relabel_pairs-*.jsonl")
    meta = json.loads(data.with_suffix(".json").read_text())
    assert meta["flipped"] == round(0.3 * meta["rows"]) and meta["scorer"].startswith("gold_reward@")
    configs = list(store.glob("*/trial-*/config.yaml"))
    assert configs and all(str(data) in p.read_text() for p in configs)
    record = json.loads((reports / "cdpo.json").read_text())
    (c,) = record["claims"]
    assert c["id"] == "smoothing-helps" and c["verdict"] in ("agrees", "disagrees", "inconclusive")
    assert c["lo"] <= c["value"] <= c["hi"] and c["sources"] == ["seeds", "prompts"] and c["n_seeds"] == [2]
    md = (reports / "cdpo.md").read_text()
    assert "| smoothing-helps |" in md and "harness reproduce cdpo --budget tiny" in md
    assert "plots/cdpo-smoothing-helps.png" in md and (reports / "plots" / "cdpo-smoothing-helps.png").is_file()
    html = (reports / "cdpo.html").read_text()
    assert "data:image/png;base64," in html and "smoothing-helps" in html
    readme = (reports / "README.md").read_text()
    assert "Everything here except `templates/` is" in readme and "## Templates" in readme
    assert "**cdpo/smoothing-helps**" in readme and "--report-only" in readme and "_(none yet)_" not in readme
    assert "smoothing-helps: " in out.stdout and "report: " in out.stdout


def test_the_report_regenerates_from_the_store_it_names(reproduced):
    tmp, reports, _ = reproduced
    record = json.loads((reports / "cdpo.json").read_text())
    again = tmp / "again"
    # the exact command the report records, run elsewhere: nothing trains, the numbers are the same
    args = record["report_only_command"].split()[1:]
    assert args[:2] == ["reproduce", "cdpo"] and "--report-only" in args
    out = cli(*args, "--reports", str(again), cwd=tmp / "runs")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "worker" not in out.stdout  # no sweep ran
    regenerated = json.loads((again / "cdpo.json").read_text())
    assert regenerated["claims"] == record["claims"] and regenerated["stores"] == record["stores"]


def test_rerunning_resumes_and_keeps_finished_trials(reproduced):
    tmp, reports, _ = reproduced
    before = json.loads((reports / "cdpo.json").read_text())["claims"]
    out = cli("reproduce", "cdpo", "--budget", "tiny", "--runs", str(tmp / "runs"), "--reports", str(reports),
              cwd=tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "worker done: ran 0 trial(s)" in out.stdout
    assert json.loads((reports / "cdpo.json").read_text())["claims"] == before


def test_per_prompt_recomputation_equals_the_evaluation(reproduced):
    # the bootstrap recomputes each run's metrics from samples.jsonl: on all prompts they must be the
    # numbers the evaluation itself reported (gold reward, win rate, and the refitted LC win rate)
    tmp, _, _ = reproduced
    store = load_store(tmp / "runs" / "cdpo" / "cdpo-label-noise" / "tiny")
    assert store.prompts is not None and len(store.cells) == 4
    full = Draw(store, None, False)
    for cell in store.cells:
        for run in cell.runs:
            for metric in ("gold_reward_mean", "win_rate", "length_controlled_winrate"):
                assert full.run_value(run, metric) == pytest.approx(run.scalars[metric], abs=1e-9), metric


def test_list_and_unavailable_budgets(tmp_path, tiny_base):
    out = cli("reproduce", "--list", "--runs", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # every paper is active now; pending files are listed too (tests/test_reproduce_claims.py)
    for text in ("smoothing-helps", "frontier-share", "score-rises-over-iterations", "spin", "GPU-h declared",
                 "quick (CPU)"):
        assert text in out.stdout, text
    assert not (tmp_path / "runs").exists()  # listing runs nothing and writes nothing
    out = cli("reproduce", "qlora", "--budget", "quick", "--runs", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 2 and "no 'quick' budget" in out.stderr and "CUDA" in out.stderr
    assert not (tmp_path / "runs").exists()
    out = cli("reproduce", "simop", cwd=tmp_path)
    assert out.returncode == 2 and "did you mean 'simpo'" in out.stderr
