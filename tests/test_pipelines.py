"""Pipelines (harness.pipelines): rounds of linked stages, each a run, resumable after a kill.

    .venv/bin/pytest tests/test_pipelines.py -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.config import load_spec
from harness.pipelines.engine import PipelineError
from harness.pipelines.run import run

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["model=toy:tiny", "train.max_steps=3", "train.batch_size=8", "train.progress=false", "tracking.mode=disabled",
         "eval.kl_samples=0", "eval.lm_eval_tasks=[]", "eval.num_prompts=8", "eval.lc_bootstrap=0"]


def _spin(tmp_path, *extra):
    return load_spec(None, ["method=spin", "method.iterations=2", "method.prompts_per_round=16",
                            "method.max_new_tokens=12", f"output_dir={tmp_path}", *SMALL, *extra])


def test_spin_rounds_are_linked_runs_evaluated_per_round(tmp_path, tiny_base):
    r = run(_spin(tmp_path, "name=spin"))
    s = r.summary()
    assert s["status"] == "completed" and [x["round"] for x in s["rounds"]] == [1, 2]
    names = [st["stage"] for st in s["stages"]]
    assert names == ["prompts", "r1-generate", "r1-pairs", "r1-train", "r2-generate", "r2-pairs", "r2-train"]
    stages = r.path / "stages"
    # round 2 generates from round 1's model and trains from it; every round is evaluated against the start
    gen2 = json.loads((stages / "r2-generate" / "summary.json").read_text())
    assert gen2["model"] == str(stages / "r1-train" / "final")
    import yaml

    cfg2 = yaml.safe_load((stages / "r2-train" / "config.yaml").read_text())
    assert cfg2["model"]["name_or_path"] == str(stages / "r1-train" / "final")
    assert cfg2["method"]["name"] == "spin" and cfg2["tags"]["round"] == 2 and cfg2["tags"]["pipeline"] == "spin"
    assert cfg2["eval"]["baseline"] == str(tiny_base) and cfg2["eval"]["world"] == "toy"
    for rnd in s["rounds"]:
        assert "gold_reward_mean" in rnd["eval"] and "win_rate" in rnd["eval"]
    pairs = [json.loads(x) for x in (stages / "r1-pairs" / "rows.jsonl").read_text().splitlines()]
    gens = [json.loads(x) for x in (stages / "r1-generate" / "rows.jsonl").read_text().splitlines()]
    assert pairs and {p["chosen"] for p in pairs} <= {g["completion"] for g in gens}
    assert {p["rejected"] for p in pairs} <= {g["generated"] for g in gens}
    # the pipeline's final model is the last round's
    assert (r.path / "final").resolve() == (stages / "r2-train" / "final").resolve()
    # a completed pipeline is returned as it is: nothing is recomputed or rewritten
    before = (stages / "r2-train" / "summary.json").stat().st_mtime_ns
    again = run(_spin(tmp_path, "name=spin"))
    assert again.path == r.path and (stages / "r2-train" / "summary.json").stat().st_mtime_ns == before


def test_a_changed_recipe_under_the_same_name_is_refused(tmp_path, tiny_base):
    run(_spin(tmp_path, "name=s", "method.iterations=1"))
    spec = _spin(tmp_path, "name=s", "method.iterations=1", "method.max_new_tokens=10")
    # the first run completed: the new recipe must not reuse or overwrite it
    assert run(spec).summary()["rounds"][0]["eval"]  # returned as completed, untouched
    (tmp_path / "s" / "status.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(PipelineError, match="another recipe"):
        run(spec)


def test_killed_pipeline_resumes_at_its_first_unfinished_stage(tmp_path, tiny_base):
    args = [sys.executable, "-m", "harness.cli", "run", "method=spin", "method.iterations=2",
            "method.prompts_per_round=16", "method.max_new_tokens=12", f"output_dir={tmp_path}", "name=k", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = tmp_path / "k" / "stages" / "r1-train" / "status.json"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if done.exists() and json.loads(done.read_text()).get("status") == "completed":
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before round 1 finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r1 = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "k" / "stages" / "r1-train").rglob("*") if p.is_file()}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "k" / "summary.json").read_text())
    reused = {st["stage"] for st in s["stages"] if st["reused"]}
    assert {"prompts", "r1-generate", "r1-pairs", "r1-train"} <= reused
    assert "r2-train" not in reused and [x["round"] for x in s["rounds"]] == [1, 2]
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "k" / "stages" / "r1-train").rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k in r1} == r1  # round 1 was not recomputed


def test_spin_control_is_continued_sft_on_the_same_rows(tmp_path, tiny_base):
    r = run(_spin(tmp_path, "name=c", "method.control=true"))
    s = r.summary()
    assert [st["stage"] for st in s["stages"]] == ["prompts", "r1-sft", "r2-sft"]
    import yaml

    cfg = yaml.safe_load((r.path / "stages" / "r2-sft" / "config.yaml").read_text())
    assert cfg["method"]["name"] == "sft" and cfg["data"]["source"].endswith("prompts/rows.jsonl")


def test_rlhf_chain_runs_reward_model_then_ppo_from_one_command(tmp_path, tiny_base):
    r = run(load_spec(None, ["method=rlhf", "method.reward_steps=4", "method.ppo.epochs=1", "method.ppo.max_new_tokens=8",
                             f"output_dir={tmp_path}", "name=chain", *SMALL, "train.batch_size=4"]))
    s = r.summary()
    assert [st["stage"] for st in s["stages"]] == ["reward", "ppo"]
    import yaml

    stages = r.path / "stages"
    ppo = yaml.safe_load((stages / "ppo" / "config.yaml").read_text())
    assert ppo["reward"]["source"] == str(stages / "reward") and ppo["method"]["name"] == "ppo"
    rm = json.loads((stages / "reward" / "summary.json").read_text())
    assert "rm_accuracy" in rm["eval"]
    ppo_sum = json.loads((stages / "ppo" / "summary.json").read_text())
    assert ppo_sum["online"]["critic_init"] == str(stages / "reward" / "final")
    assert s["eval"] == ppo_sum["eval"]


def test_a_stage_can_generate_with_an_openai_compatible_endpoint(tmp_path, tiny_base):
    """A generator behind an HTTP API (a teacher, an annotator): n samples per prompt come back in
    order; a 503 is retried; the endpoint is part of the stage's key."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from harness.pipelines.engine import PipelineContext
    from harness.store.runs import Run

    seen = []

    class Teacher(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            if len(seen) == 1:
                self.send_response(503)
                self.end_headers()
                return
            prompt = body["messages"][0]["content"]
            out = {"choices": [{"message": {"content": f"echo {prompt} #{i}"}} for i in range(body["n"])]}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        spec = load_spec(None, ["method=spin", f"output_dir={tmp_path}", "name=ep", "reward.judge_workers=1",
                                f"reward.judge_base_url=http://127.0.0.1:{srv.server_address[1]}/v1", *SMALL])
        run_ = Run.create(tmp_path, "ep", prefix="spin")
        ctx = PipelineContext(spec, run_, str(tiny_base))
        src = ctx.transform("rows", lambda: [{"prompt": "a"}, {"prompt": "b"}])
        out = ctx.generate("gen", model=ctx.endpoint("openai:teacher"), prompts=src, n=2, max_new_tokens=8)
    finally:
        srv.shutdown()
    rows = out.load()
    assert [(r["prompt"], r["completion"]) for r in rows] == [("a", "echo a #0"), ("a", "echo a #1"),
                                                            ("b", "echo b #0"), ("b", "echo b #1")]
    assert seen[1]["model"] == "teacher" and seen[1]["n"] == 2 and len(seen) == 3  # one 503 retried
    cfg = json.loads(json.dumps(Run(run_.path / "stages" / "gen").config()))
    assert "openai:teacher@http://127.0.0.1" in json.dumps(cfg["inputs"])
