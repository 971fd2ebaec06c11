"""Online methods (PPO, RLOO, GRPO, OAIF) generating inside the one training core, for real.

    .venv/bin/pytest tests/test_online.py -q

Conformance (finite losses, parameters move, exact resume mid-rollout), reward sources and
their errors before any model loads, an annotator outage that fails the run cleanly while
keeping its checkpoint, the annotation budget, and each method lifting the toy world's gold
reward above the SFT base from the CLI.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from harness.core.config import load_spec
from harness.core.contract import METHODS, load_methods
from harness.training.loop import TrainHooks
from harness.training.runner import SpecError, check_spec, execute

load_methods()
ONLINE = {"ppo": ["method.epochs=2", "method.minibatches=2"], "rloo": ["method.k=2"],
          "grpo": ["method.group_size=2", "method.iterations=4"], "online-dpo": []}
ROOT = Path(__file__).resolve().parent.parent


def losses(run):
    rows = [r for r in run.metrics() if "loss" in r]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]


def test_online_methods_are_registered():
    for name in ONLINE:
        a = METHODS.get(name)
        assert a.data_kind.value == "prompt" and hasattr(a, "rollout_plan")


@pytest.mark.parametrize("method", sorted(ONLINE))
def test_online_method_trains_and_resumes_mid_rollout(run_spec, method):
    extra = [f"method={method}", "train.batch_size=2", "train.lr=1e-3", "method.max_new_tokens=8",
             "train.save_every=2", *ONLINE[method]]
    run = execute(run_spec(*extra, "name=full"))
    first = losses(run)
    assert len(first) == 4 and all(math.isfinite(x) for x in first)
    rows = [r for r in run.metrics() if "loss" in r]
    assert all(r["rollout/response_length"] > 0 and "time/generation_s" in r for r in rows)
    assert run.summary()["online"]["reward_source"]["kind"] == "gold"
    # the same run cut after step 3 and resumed from step 2 (mid-rollout for PPO and GRPO, with
    # several updates per rollout): the buffer, the KL controller and the critic come back from
    # the checkpoint, so steps 3-4 repeat exactly (a completed run is never reopened)
    def stop(row):
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(run_spec(*extra, "name=cut"), TrainHooks(on_log=stop))
    cut = run.path.parent / "cut"
    resumed = execute(run_spec(*extra, f"train.resume_from={cut / 'checkpoints' / 'step-2'}"))
    assert resumed.path == cut
    assert losses(resumed) == pytest.approx(first, abs=1e-6)


@pytest.mark.parametrize("method,extra", [("grpo", ["method.group_size=4", "method.iterations=2"]),
                                          ("ppo", ["method.epochs=2", "method.minibatches=2", "train.max_steps=8"])])
def test_batched_rollout_equals_generate_per_chunk(run_spec, monkeypatch, method, extra):
    """train.rollout_engine=auto (the batched decode: prompts prefilled once for their samples,
    finished rows dropped, the old log-probs read while sampling) gives the rollouts of hf
    (transformers' generate per chunk, a forward for the old log-probs): the same samples, rewards
    and advantages, the same per-token old and reference log-probs (and values) to 1e-5, hence the
    same losses.  Two chunks per rollout (grad_accum=2), several updates per rollout."""
    from harness.training import rollout

    buffers: dict[str, list] = {}
    real = rollout.RolloutSource._rollout

    def spy(self, cycle):
        out = real(self, cycle)
        buffers.setdefault(self.engine, []).append(out)
        return out

    monkeypatch.setattr(rollout.RolloutSource, "_rollout", spy)
    common = [f"method={method}", "train.batch_size=2", "train.grad_accum=2", "train.lr=1e-3",
              "method.max_new_tokens=12", *extra]
    runs = {e: execute(run_spec(*common, f"train.rollout_engine={e}", f"name={e}")) for e in ("auto", "hf")}
    fast, slow = buffers["auto"], buffers["hf"]
    assert len(fast) == len(slow) >= 2
    for a, b in zip(fast, slow):
        assert [x["segments"] for x in a["examples"]] == [x["segments"] for x in b["examples"]]
        assert a["given"].keys() == b["given"].keys() and "old_logps" in a["given"]
        for key in a["given"]:
            assert torch.allclose(a["given"][key], b["given"][key], atol=1e-5), key
        assert a["metrics"]["rollout/reward_mean"] == b["metrics"]["rollout/reward_mean"]
    assert losses(runs["auto"]) == pytest.approx(losses(runs["hf"]), abs=1e-5)


def test_ppo_critic_starts_from_the_reward_model_and_logs_its_diagnostics(run_spec, tmp_path):
    rm = execute(run_spec("method=reward", "name=rm", "train.max_steps=3"))
    run = execute(run_spec("method=ppo", f"reward={rm.path}", "train.batch_size=2", "method.max_new_tokens=6",
                           "method.adaptive_kl=true", "method.kl_target=0.5", "method.epochs=1", "name=ppo-rm"))
    s = run.summary()
    assert s["online"]["critic_init"] == str(rm.final_dir)
    assert s["online"]["reward_source"]["kind"] == "reward_model"
    rows = [r for r in run.metrics() if "loss" in r]
    for key in ("rollout/kl_coef", "rollout/explained_variance", "clip_fraction", "approx_kl", "value_loss",
                "rollout/reward_mean", "rollout/entropy", "rollout/kl_per_token"):
        assert all(key in r and math.isfinite(r[key]) for r in rows), key
    # the adaptive controller moved beta away from its start after the first rollout
    assert rows[-1]["rollout/kl_coef"] != rows[0]["rollout/kl_coef"]


def test_reward_source_errors_come_before_any_model_loads(tmp_path):
    def spec(*o):
        return load_spec(None, ["model=toy:tiny", f"output_dir={tmp_path}", "tracking.mode=disabled", *o])

    with pytest.raises(SpecError, match="pairwise judge.*needs a score"):
        check_spec(spec("method=grpo", "reward=judge:openai:gpt-4o-mini"))
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(SpecError, match="no gold scorer"):
        check_spec(spec("method=rloo", f"data={data}", "eval.enabled=false"))
    with pytest.raises(SpecError, match="cannot import"):
        check_spec(spec("method=grpo", "reward=no_such_module:fn"))
    with pytest.raises(SpecError, match="judge:<"):
        check_spec(spec("method=online-dpo", "reward=judge:claude"))
    with pytest.raises(SpecError, match="API key"):
        check_spec(spec("method=online-dpo", "reward=judge:openai:gpt-4o-mini",
                        "reward.judge_api_key_env=ALIGN_TEST_NO_SUCH_KEY"))


class _Annotator(BaseHTTPRequestHandler):
    """An OpenAI-compatible annotator that prefers the shorter answer (by the text it is shown),
    until it goes down: every request from ``fail_from`` on is answered HTTP 503."""

    fail_from = 10**9
    seen = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with _Annotator.lock:
            n = _Annotator.seen
            _Annotator.seen += 1
        if n >= _Annotator.fail_from:
            self.send_response(503)
            self.end_headers()
            return
        text = body["messages"][-1]["content"]
        a = text.split("Output (a)")[-1] if "Output (a)" in text else text
        answer = "A" if len(a) % 2 == 0 else "B"  # deterministic, content-dependent labels
        out = {"choices": [{"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def annotator():
    _Annotator.seen, _Annotator.fail_from = 0, 10**9
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Annotator)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_annotator_outage_is_retried_then_fails_the_run_keeping_its_checkpoint(run_spec, annotator):
    # 2 prompts x 2 orders = 4 judgements per step: the annotator dies during step 3
    _Annotator.fail_from = 10
    spec = run_spec("method=online-dpo", "reward=judge:openai:tiny-annotator", f"reward.judge_base_url={annotator}",
                    "reward.judge_max_retries=2", "train.batch_size=2", "method.max_new_tokens=6",
                    "train.save_every=2", "name=outage")
    with pytest.raises(Exception, match="pairs failed after 2 retries"):
        execute(spec)
    run_dir = Path(spec.output_dir) / "outage"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "annotator" in status["error"]
    assert (run_dir / "checkpoints" / "step-2" / "trainer_state.json").exists()
    assert _Annotator.seen > 10  # the failing requests were retried, not given up at once


def test_annotation_budget_stops_training_cleanly(run_spec, annotator):
    run = execute(run_spec("method=online-dpo", "reward=judge:openai:tiny-annotator",
                           f"reward.judge_base_url={annotator}", "train.batch_size=2", "method.max_new_tokens=6",
                           "method.annotation_budget=5", "train.max_steps=10", "name=budget"))
    s = run.summary()
    assert s["status"] == "completed" and s["steps"] == 2  # 2 pairs per step: a third step would need 6
    assert "annotation budget 5" in s["stopped_early"] and s["online"]["annotations"] == 4
    assert run.status()["status"] == "completed"


def test_a_run_stopped_before_its_first_step_is_an_error(run_spec, annotator):
    with pytest.raises(Exception, match="no optimizer step"):
        execute(run_spec("method=online-dpo", "reward=judge:openai:tiny-annotator",
                         f"reward.judge_base_url={annotator}", "train.batch_size=2", "method.max_new_tokens=6",
                         "method.annotation_budget=1", "name=nothing"))


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("grpo", ["method.group_size=4", "train.lr=2e-3"]),
    ("rloo", ["method.k=4", "train.lr=1e-3"]),
    # measured over seeds 1-7 on CPU: ppo 0.53-0.83, online-dpo 0.44-0.67 against the base's 0.06; one
    # sample per prompt left PPO at 0.08-0.74 across seeds (a tiny policy's advantages are that noisy)
    ("ppo", ["method.epochs=2", "train.lr=1e-3", "method.kl_coef=0.05", "method.vf_coef=0.5",
             "method.whiten_rewards=true", "method.samples_per_prompt=2", "train.max_steps=30"]),
    ("online-dpo", ["train.lr=1e-3", "method.beta=0.1", "train.max_steps=30"]),
])
def test_each_online_method_beats_the_sft_base_on_gold_reward_from_the_cli(tmp_path, tiny_base, method, extra):
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", f"method={method}", "model=toy:tiny", f"output_dir={tmp_path}",
         "name=r", "train.max_steps=20", "train.batch_size=8", "train.schedule=constant", "train.progress=false",
         "tracking.mode=disabled", "eval.kl_samples=0", "eval.lm_eval_tasks=[]", "eval.lc_bootstrap=0", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    ev = json.loads((tmp_path / "r" / "summary.json").read_text())["eval"]
    assert ev["gold_reward_mean"] > ev["baseline_gold_reward_mean"] + 0.2, (ev["gold_reward_mean"],
                                                                          ev["baseline_gold_reward_mean"])
    torch.manual_seed(0)
