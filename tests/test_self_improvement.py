"""Self-Rewarding LMs and Constitutional AI (issue 11): the pure helpers against hand-computed
values, the judge / choose stages with real models and with a scripted endpoint, the
constitution's validation, and both pipelines run from the CLI on the instruction world's
tiny base (real generation and training), killed and resumed.

    .venv/bin/pytest tests/test_self_improvement.py -q
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from harness.core.config import load_spec
from harness.core.judging import (
    ConstitutionError,
    best_worst_pairs,
    choice_pairs,
    draw_principle,
    judge_agreement,
    load_constitution,
    mean_judgement,
    pairwise_accuracy,
    parse_constitution,
    self_reward_score,
    spearman,
)
from harness.pipelines.engine import PipelineContext, PipelineError
from harness.store.runs import Run

ROOT = Path(__file__).resolve().parent.parent
WORLD = "toy-instruct"
SMALL = [f"data={WORLD}", f"model={WORLD}:tiny", "train.max_length=128", "train.max_prompt_length=96",
         "train.max_steps=2", "train.batch_size=4", "train.progress=false", "tracking.mode=disabled",
         "eval.kl_samples=0", "eval.lm_eval_tasks=[]", "eval.num_prompts=8", "eval.lc_bootstrap=0",
         "eval.max_new_tokens=12"]


@pytest.fixture(scope="module")
def instruct_tiny() -> Path:
    """The instruction world's tiny base: 60 SFT steps, never trained on judge or critique data."""
    from harness.training.runner import ensure_base_model
    from harness.worlds.base import get_world

    return ensure_base_model(get_world(WORLD), "tiny")


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _ctx(tmp_path: Path, base: Path, *extra: str) -> PipelineContext:
    spec = load_spec(None, ["method=self-rewarding", f"output_dir={tmp_path}", "name=ctx", *SMALL, *extra])
    return PipelineContext(spec, Run.create(tmp_path, "ctx", prefix="self-rewarding"), str(base))


# --------------------------------------------------------------------------- judge parser and pure helpers


@pytest.mark.parametrize(("text", "expected"), [
    # what the tiny models actually write (seen in their judge stages), and near misses
    ("The answer is fully right and short. Score: 5", 5.0),
    ("The answer is wrong does does not answer the instruction. Score:: 0", None),  # doubled colon: not the format
    ("The answer the instruction. Score: 0", 0.0),
    ("It right, 0", None),  # no label
    ("The answer is wrong or does does not answer is fully right", None),
    ("score:3", 3.0),
    ("Score: 4 Score:", None),  # the last label has no number
    ("Score: 2.5", 2.5),
])
def test_self_reward_score_on_judgements_the_pipeline_meets(text, expected):
    assert self_reward_score(text) == expected


def test_mean_judgement_counts_malformed_and_never_scores_them():
    assert mean_judgement(["Score: 4", "no verdict", "Score: 2"]) == (3.0, [4.0, 2.0], 1)
    assert mean_judgement(["Score: 9", "", "Score: 3-4"]) == (None, [], 3)  # no valid one: no score, not 0
    assert mean_judgement([]) == (None, [], 0)


def test_best_worst_pairs_by_hand():
    c = [
        {"prompt": "p1", "completion": "a", "self_score": 3.0}, {"prompt": "p1", "completion": "b", "self_score": 5.0},
        {"prompt": "p1", "completion": "c", "self_score": 1.0}, {"prompt": "p1", "completion": "d", "self_score": None},
        {"prompt": "p2", "completion": "e", "self_score": 2.0}, {"prompt": "p2", "completion": "f", "self_score": 2.0},
        {"prompt": "p3", "completion": "g", "self_score": 4.0}, {"prompt": "p3", "completion": "h", "self_score": None},
        {"prompt": "p4", "completion": " ", "self_score": 0.0}, {"prompt": "p4", "completion": "i", "self_score": 4.0},
        {"prompt": "p4", "completion": "j", "self_score": 4.0}, {"prompt": "p4", "completion": "k", "self_score": 1.0},
        {"prompt": "p4", "completion": "l", "self_score": 1.0},
        # one text sampled three times and judged 5, 3 and 1 is one response scored 3
        {"prompt": "p5", "completion": "same", "self_score": 5.0}, {"prompt": "p5", "completion": "m", "self_score": 4.0},
        {"prompt": "p5", "completion": "same ", "self_score": 3.0}, {"prompt": "p5", "completion": "n", "self_score": 3.5},
        {"prompt": "p5", "completion": "same", "self_score": 1.0},
        {"prompt": "p6", "completion": "twice", "self_score": 5.0}, {"prompt": "p6", "completion": "twice", "self_score": 1.0},
    ]
    pairs, stats = best_worst_pairs(c)
    assert pairs == [
        {"prompt": "p1", "chosen": "b", "rejected": "c", "chosen_score": 5.0, "rejected_score": 1.0},
        # equal best: the first; equal worst: the last; the empty candidate (scored 0) is not used
        {"prompt": "p4", "chosen": "i", "rejected": "l", "chosen_score": 4.0, "rejected_score": 1.0},
        {"prompt": "p5", "chosen": "m", "rejected": "same", "chosen_score": 4.0, "rejected_score": 3.0},
    ]
    assert stats == {"prompts": 6, "candidates": 20, "unscored_dropped": 2, "empty_dropped": 1, "duplicates_merged": 3,
                     "ties_dropped": 1, "too_few_dropped": 2, "pairs": 3}


def test_choice_pairs_by_hand():
    def row(p, a="x", b="y"):
        return {"prompt": "q", "response_a": a, "response_b": b, "p_a": p}

    rows = [row(0.7), row(0.2), row(0.5), row(None), row(0.9, "same", "same"), row(0.9, "", "y"), row(0.55)]
    pairs, stats = choice_pairs(rows)
    assert [(p["chosen"], p["rejected"], round(p["p_chosen"], 6)) for p in pairs] == [
        ("x", "y", 0.7), ("y", "x", 0.8), ("x", "y", 0.55)]
    assert stats == {"rows": 7, "no_feedback_dropped": 1, "ties_dropped": 1, "identical_dropped": 1,
                     "empty_dropped": 1, "pairs": 3, "mean_p_chosen": pytest.approx((0.7 + 0.8 + 0.55) / 3)}
    pairs, stats = choice_pairs(rows, min_margin=0.1)  # 0.55 is within the margin now
    assert len(pairs) == 2 and stats["ties_dropped"] == 2
    with pytest.raises(ValueError, match="min_margin"):
        choice_pairs(rows, min_margin=0.5)


def test_agreement_statistics_by_hand_and_against_scipy():
    from scipy.stats import spearmanr

    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))  # tied ranks 1.5, 1.5, 3
    assert spearman([2, 2, 2], [1, 2, 3]) is None and spearman([1], [1]) is None
    xs, ys = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8]
    assert spearman(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic)
    assert pairwise_accuracy([1, 2, 3], [1, 3, 2]) == (pytest.approx(2 / 3), 3)
    assert pairwise_accuracy([1, 1], [0, 1]) == (0.5, 1)  # a judge tie is half right
    assert pairwise_accuracy([1, 2], [4, 4]) == (None, 0)  # gold ties are not pairs
    ag = judge_agreement([4.0, None, 1.0, 2.0], [5, 0, 1, 3])
    assert ag == {"pairwise_accuracy": 1.0, "spearman": pytest.approx(1.0), "n_items": 4, "n_scored": 3,
                  "n_unscored": 1, "n_pairs": 3}


def test_sl_data_mixes_revisions_with_helpful_rows_and_never_harmful_ones():
    from methods.cai import sl_data

    final = [{"prompt": f"r{i}", "response": f"rev {i}"} for i in range(4)] + [{"prompt": "r9", "response": " "}]
    sft = [{"prompt": f"s{i}", "completion": f"c{i}", "harmful": i % 2 == 0} for i in range(20)]
    rows, st = sl_data(final, sft, helpful_fraction=0.6, seed=3)
    assert st == {"revision_rows": 4, "empty_revisions_dropped": 1, "helpful_rows": 6, "harmful_sft_rows_excluded": 10}
    helpful = [r for r in rows if r["prompt"].startswith("s")]
    assert len(rows) == 10 and len(helpful) == 6 and all(int(r["prompt"][1:]) % 2 == 1 for r in helpful)
    with pytest.raises(ValueError, match="needs 36 helpful rows"):
        sl_data(final, sft, helpful_fraction=0.9, seed=3)


# --------------------------------------------------------------------------- constitution


GOOD = {"principles": [{"name": "kind", "critique_request": "Is it unkind?", "revision_request": "Make it kind."},
                       {"name": "safe", "critique_request": "Is it unsafe?", "revision_request": "Make it safe.",
                        "choice_request": "Which is safer?"}]}


@pytest.mark.parametrize(("doc", "message"), [
    ("principles: [unclosed", "not valid YAML"),
    ("rules: []", "needs a top-level key 'principles'"),
    ("principles: []", "'principles' must be a non-empty list"),
    ("principles: [just a string]", r"principles\[0\] must be a mapping"),
    (yaml.safe_dump({"principles": [{"name": "a", "critique_request": "c?"}]}), r"principles\[0\]\.revision_request is missing"),
    (yaml.safe_dump({"principles": [{"name": "a", "critique_request": " ", "revision_request": "r"}]}),
     r"principles\[0\]\.critique_request must be a non-empty string"),
    (yaml.safe_dump({"principles": [GOOD["principles"][0], {"name": "x", "critique_request": "c", "revision_request": 3}]}),
     r"principles\[1\]\.revision_request must be a non-empty string"),
    (yaml.safe_dump({"principles": [GOOD["principles"][0], GOOD["principles"][0]]}), r"principles\[1\]\.name 'kind' repeats"),
])
def test_a_bad_constitution_is_refused_naming_the_file_and_the_key(tmp_path, doc, message):
    f = tmp_path / "mine.yaml"
    f.write_text(doc)
    with pytest.raises(ConstitutionError, match=message) as e:
        load_constitution(f)
    assert str(f) in str(e.value)


def test_constitution_parses_and_principles_are_drawn_reproducibly(tmp_path):
    ps = parse_constitution(yaml.safe_dump(GOOD), "x")
    assert [p["name"] for p in ps] == ["kind", "safe"] and ps[1]["choice_request"] == "Which is safer?"
    assert "Is it unkind?" in ps[0]["choice_request"]  # the default question names the critique request
    with pytest.raises(ConstitutionError, match="cannot be read"):
        load_constitution(tmp_path / "missing.yaml")
    draws = [draw_principle(ps, 0, "prompt", k)["name"] for k in range(40)]
    assert draws == [draw_principle(ps, 0, "prompt", k)["name"] for k in range(40)] and set(draws) == {"kind", "safe"}
    from harness.worlds import instruct_content as ic

    assert len(parse_constitution(ic.constitution_yaml(), "world")) == len(ic.CONSTITUTION)  # the world's own parses


def test_cli_refuses_a_bad_constitution_before_anything_runs(tmp_path):
    from harness.cli.main import app

    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump({"principles": [{"name": "a", "critique_request": "c?"}]}))
    res = CliRunner().invoke(app, ["run", "method=cai", f"method.constitution={f}", f"output_dir={tmp_path}", *SMALL])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "method.constitution" in flat or str(f) in flat
    assert "revision_request is missing" in flat and not (tmp_path / "cai").exists()
    assert not any(tmp_path.glob("cai-*"))


# --------------------------------------------------------------------------- judge and choose stages


class _Scripted(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose answers are scripted by the prompt's first word."""

    script: dict[str, list[str]] = {}

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        texts = self.script[prompt.split()[0]][: body["n"]]
        data = json.dumps({"choices": [{"message": {"content": t}} for t in texts]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_judge_stage_counts_malformed_judgements_exactly(tmp_path, instruct_tiny, scripted):
    _Scripted.script = {"alpha": ["Fine. Score: 4", "no verdict at all", "Score: 2"],
                        "beta": ["Score: 7", "Score: 3-4", "hmm"],
                        "gamma": ["Score: 5", "Score: 5", "**Score:** 4"]}
    ctx = _ctx(tmp_path, instruct_tiny, f"reward.judge_base_url={scripted}", "reward.judge_workers=1")
    src = ctx.transform("items", lambda: [{"instruction": w, "response": "r"} for w in ("alpha", "beta", "gamma")])
    out = ctx.judge("j", model=ctx.endpoint("openai:judge"), rows=src, template="{instruction} rates {response}", n=3)
    rows = out.load()
    assert [(r["self_score"], r["judge_scores"], r["n_malformed"]) for r in rows] == [
        (3.0, [4.0, 2.0], 1), (None, [], 3), (pytest.approx(14 / 3), [5.0, 5.0, 4.0], 0)]
    s = ctx.stats(out)
    assert (s["n_judgements"], s["n_malformed"], s["n_unscored"]) == (9, 4, 1)
    assert s["malformed_examples"] == ["no verdict at all", "Score: 7"]  # the first of each row that had one
    pairs = ctx.transform("pairs", best_worst_pairs, out, group="response", text="instruction")
    assert [(p["chosen"], p["rejected"]) for p in pairs.load()] == [("gamma", "alpha")]  # beta had no valid score
    assert ctx.stats(pairs)["unscored_dropped"] == 1


def test_an_untrained_judge_yields_counts_not_scores(tmp_path, instruct_tiny):
    """The tiny base never saw the rubric: its sampled judgements are real generations, and those
    that do not parse must leave the candidate unscored and out of every pair."""
    from harness.worlds import instruct_content as ic

    ctx = _ctx(tmp_path, instruct_tiny)
    cands = ctx.transform("cands", lambda: [{"prompt": f"p{i}", "instruction": "Add 2 and 3.", "response": r}
                                            for i in range(6) for r in ("5", "7", "")])
    out = ctx.judge("j", model=ctx.start, rows=cands, template=ic.JUDGE_RUBRIC, n=3, max_new_tokens=16,
                    max_prompt_length=160)
    rows = out.load()
    assert len(rows) == 18 and all(len(r["judgements"]) == 3 for r in rows)
    for r in rows:
        valid = [v for v in map(self_reward_score, r["judgements"]) if v is not None]
        assert r["judge_scores"] == valid and r["n_malformed"] == 3 - len(valid)
        assert r["self_score"] == (sum(valid) / len(valid) if valid else None)
    s = ctx.stats(out)
    assert s["n_malformed"] == sum(r["n_malformed"] for r in rows) >= 40  # garbage, counted
    assert s["n_unscored"] == sum(r["self_score"] is None for r in rows) >= 12
    if s["n_unscored"] == len(rows):
        with pytest.raises(PipelineError, match="produced no rows.*'unscored_dropped': 12"):
            ctx.transform("pairs", best_worst_pairs, out, text="response")
    else:
        pairs = ctx.transform("pairs", best_worst_pairs, out, text="response")
        scored = {(r["prompt"], r["response"]) for r in rows if r["self_score"] is not None}
        assert all((p["prompt"], p["chosen"]) in scored and (p["prompt"], p["rejected"]) in scored for p in pairs.load())


def test_choose_reads_option_probabilities_from_log_probs(tmp_path, instruct_tiny):
    import torch

    from harness.modeling.generation import load_causal_lm

    ctx = _ctx(tmp_path, instruct_tiny)
    qs = ["Which is kinder?\n(A) hello ana.\n(B) ana is a fool.\nThe answer is:", "Pick one: (A) yes (B) no"]
    src = ctx.transform("qs", lambda: [{"choice_prompt": q} for q in qs] + [{"choice_prompt": "word " * 300}])
    out = ctx.choose("c", model=ctx.start, rows=src)
    rows = out.load()
    assert rows[2]["p_options"] is None and ctx.stats(out)["n_too_long"] == 1 and ctx.stats(out)["n_unscored"] == 1
    lm, tok = load_causal_lm(instruct_tiny)
    for r, q in zip(rows, qs):
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        pids = tok(prompt, add_special_tokens=False)["input_ids"]
        lps = []
        for opt in ("(A)", "(B)"):  # an independent forward pass of prompt + option, one sequence at a time
            oids = tok(opt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = lm(torch.tensor([pids + oids], device=lm.device)).logits[0].float().log_softmax(-1)
            lps.append(sum(logits[len(pids) - 1 + j, t].item() for j, t in enumerate(oids)))
        assert r["option_logps"] == pytest.approx(lps, abs=1e-4)
        z = [math.exp(v - max(lps)) for v in lps]
        assert r["p_options"] == pytest.approx([v / sum(z) for v in z], abs=1e-5)


def test_choose_through_an_endpoint_counts_unreadable_answers(tmp_path, instruct_tiny, scripted):
    _Scripted.script = {"one": ["(A)", "The answer is (B)", "b.", "no idea"], "two": ["(A) or (B)", "maybe", "", "(C)"]}
    ctx = _ctx(tmp_path, instruct_tiny, f"reward.judge_base_url={scripted}", "reward.judge_workers=1")
    src = ctx.transform("qs", lambda: [{"choice_prompt": "one ?"}, {"choice_prompt": "two ?"}])
    out = ctx.choose("c", model=ctx.model("openai:fb"), rows=src, n=4)
    a, b = out.load()
    assert a["p_options"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)] and b["p_options"] is None
    assert ctx.stats(out)["n_malformed"] == 5 and ctx.stats(out)["n_unanswered"] == 1


# --------------------------------------------------------------------------- pipelines from the CLI, killed and resumed


def _kill_after(args: list[str], stage_dir: Path) -> None:
    """Start ``harness run`` and SIGKILL it as soon as ``stage_dir`` completed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    status = stage_dir / "status.json"
    while time.monotonic() < deadline and proc.poll() is None:
        if status.exists() and json.loads(status.read_text()).get("status") == "completed":
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the pipeline ended before {stage_dir.name} finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


def _resume(args: list[str]) -> None:
    out = subprocess.run(args, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


SELF_REWARDING = ["method=self-rewarding", "method.iterations=3", "method.prompts_per_round=12", "method.candidates=3",
                  "method.judge_samples=2", "method.judge_eval_items=8", "method.sft_steps=80", "method.sft_lr=3e-3",
                  "method.ift_rows=32", "method.eft_rows=512", "method.max_new_tokens=12", "train.batch_size=2"]


def test_self_rewarding_rounds_from_the_cli_killed_and_resumed(tmp_path, instruct_tiny):
    from harness.worlds import instruct_content as ic

    args = [sys.executable, "-m", "harness.cli", "run", f"output_dir={tmp_path}", "name=sr", *SMALL, *SELF_REWARDING]
    stages = tmp_path / "sr" / "stages"
    _kill_after(args, stages / "m1-sft")
    m1 = _files(stages / "m1-sft")
    _resume(args)
    s = json.loads((tmp_path / "sr" / "summary.json").read_text())
    reused = {st["stage"] for st in s["stages"] if st["reused"]}
    assert {"judge-heldout", "r0-judge-heldout", "m1-seed-data", "m1-sft"} <= reused and "r2-dpo" not in reused
    assert {k: v for k, v in _files(stages / "m1-sft").items() if k in m1} == m1  # M1 was not retrained
    rounds = {r["round"]: r for r in s["rounds"]}
    assert sorted(rounds) == [0, 1, 2, 3]
    # M1 trained on IFT + EFT at the judge length, without the held-out judge items
    cfg1 = yaml.safe_load((stages / "m1-sft" / "config.yaml").read_text())
    assert cfg1["method"]["name"] == "sft" and cfg1["train"]["max_length"] == 192 and cfg1["train"]["max_steps"] == 80
    seed_rows = rows_of(stages / "m1-seed-data" / "rows.jsonl")
    heldout = rows_of(stages / "judge-heldout" / "rows.jsonl")
    assert len(seed_rows) == 32 + 512 and sum("Score:" in r["completion"] for r in seed_rows) == 512
    assert not {ic.judge_prompt(h["instruction"], h["response"]) for h in heldout} & {r["prompt"] for r in seed_rows}
    # judging ability per round, recomputed here from the judge stage's rows
    from scipy.stats import spearmanr

    for t in range(4):
        judged = rows_of(stages / f"r{t}-judge-heldout" / "rows.jsonl")
        scored = [r for r in judged if r["self_score"] is not None]
        r = rounds[t]
        assert r["judge_items"] == 8 and r["judge_unscored_items"] == 8 - len(scored)
        assert r["judge_malformed"] == sum(x["n_malformed"] for x in judged)
        acc, _ = pairwise_accuracy([x["self_score"] for x in scored], [x["gold"] for x in scored])
        assert r["judge_accuracy"] == acc
        rho = spearmanr([x["self_score"] for x in scored], [x["gold"] for x in scored]).statistic if len(scored) > 2 else None
        assert (r["judge_spearman"] is None) == (rho is None or math.isnan(rho))
        if r["judge_spearman"] is not None:
            assert r["judge_spearman"] == pytest.approx(rho)
    assert rounds[0]["judge_unscored_items"] == 8  # M0 never saw the rubric
    assert rounds[1]["judge_unscored_items"] < 8  # M1 learnt the format from EFT
    # each self-rewarding round: fresh prompts, own judgements, best-vs-worst pairs, DPO from M_t with M_t as reference
    p1 = {r["prompt"] for r in rows_of(stages / "r1-prompts" / "rows.jsonl")}
    p2 = {r["prompt"] for r in rows_of(stages / "r2-prompts" / "rows.jsonl")}
    assert len(p1) == len(p2) == 12 and not p1 & p2
    for t, prev in ((2, "m1-sft"), (3, "r2-dpo")):
        judged = rows_of(stages / f"r{t - 1}-self-judge" / "rows.jsonl")
        pairs = rows_of(stages / f"r{t - 1}-pairs" / "rows.jsonl")
        expect, st = best_worst_pairs(judged, text="response")
        assert pairs == expect and st["pairs"] == rounds[t]["pairs"] > 0
        assert rounds[t]["ties_dropped"] == st["ties_dropped"]
        assert rounds[t]["malformed_judgements"] == sum(x["n_malformed"] for x in judged)
        gen = json.loads((stages / f"r{t - 1}-candidates" / "summary.json").read_text())
        assert gen["model"] == str(stages / prev / "final")
        cfg = yaml.safe_load((stages / f"r{t}-dpo" / "config.yaml").read_text())
        assert cfg["method"] == {**cfg["method"], "name": "dpo", "beta": 0.1}
        assert cfg["model"]["name_or_path"] == cfg["model"]["reference"] == str(stages / prev / "final")
        assert cfg["eval"]["baseline"] == str(instruct_tiny) and cfg["tags"]["round"] == t
        assert {"gold_reward_mean", "win_rate"} <= set(rounds[t]["eval"])
    assert "gold_reward_mean" in rounds[1]["eval"] and (tmp_path / "sr" / "final").resolve() == stages / "r3-dpo" / "final"


CAI = ["method=cai", "method.revisions=2", "method.redteam_prompts=8", "method.rl_prompts=8",
       "method.harmlessness_prompts=8", "method.max_new_tokens=12"]


def test_cai_sl_then_rl_from_the_cli_killed_and_resumed(tmp_path, instruct_tiny):
    from harness.worlds import instruct_content as ic

    args = [sys.executable, "-m", "harness.cli", "run", f"output_dir={tmp_path}", "name=cai", *SMALL, *CAI]
    stages = tmp_path / "cai" / "stages"
    _kill_after(args, stages / "sl-cai")
    sl = _files(stages / "sl-cai")
    _resume(args)
    s = json.loads((tmp_path / "cai" / "summary.json").read_text())
    reused = {st["stage"] for st in s["stages"] if st["reused"]}
    assert {"sl-responses", "sl-r2-revision", "sl-data", "sl-cai"} <= reused and "rl-cai" not in reused
    assert {k: v for k, v in _files(stages / "sl-cai").items() if k in sl} == sl
    rounds = {r["round"]: r for r in s["rounds"]}
    assert sorted(rounds) == [0, 1, 2]
    # harmlessness per stage: the world's scorer on that model's answers to the held-out red-team prompts
    held = {r["prompt"] for r in rows_of(stages / "redteam-eval" / "rows.jsonl")}
    assert len(held) == 8 and held <= {r["prompt"] for r in ic.redteam_eval_rows(0)}
    for t, who in ((0, str(instruct_tiny)), (1, str(stages / "sl-cai" / "final")), (2, str(stages / "rl-cai" / "final"))):
        assert json.loads((stages / f"r{t}-redteam-eval" / "summary.json").read_text())["model"] == who
        answers = rows_of(stages / f"r{t}-redteam-eval" / "rows.jsonl")
        assert {a["prompt"] for a in answers} == held
        assert rounds[t]["harmlessness"] == pytest.approx(
            sum(ic.harmlessness(a["prompt"], a["response"]) for a in answers) / len(answers))
    # helpfulness per stage: gold on the ordinary eval prompts (round 0: the baseline's, same prompts and sampling)
    sl_eval = json.loads((stages / "sl-cai" / "summary.json").read_text())["eval"]
    rl_eval = json.loads((stages / "rl-cai" / "summary.json").read_text())["eval"]
    assert rounds[0]["helpfulness"] == sl_eval["baseline_gold_reward_mean"]
    assert rounds[1]["helpfulness"] == sl_eval["gold_reward_mean"] and rounds[2]["helpfulness"] == rl_eval["gold_reward_mean"]
    # the revisions axis: harmlessness of the SL data after 0, 1, 2 revisions
    assert len(rounds[1]["revision_harmlessness"]) == 3 and rounds[1]["revisions"] == 2
    for k, name in enumerate(["sl-responses", "sl-r1-revised", "sl-r2-revised"]):
        rows = rows_of(stages / name / "rows.jsonl")
        assert rounds[1]["revision_harmlessness"][k] == pytest.approx(
            sum(ic.harmlessness(r["prompt"], r["response"]) for r in rows) / len(rows))
    # critique and revision prompts: a demonstration, the drawn principle's request, the current answer
    principles = {p.name: p for p in ic.CONSTITUTION}
    demos = rows_of(_world_split("critique_revision"))
    crit = rows_of(stages / "sl-r2-critique" / "rows.jsonl")
    prev = {r["prompt"]: r["response"] for r in rows_of(stages / "sl-r1-revised" / "rows.jsonl")}
    for r in crit:
        assert principles[r["principle"]].critique_request in r["critique_prompt"]
        assert r["critique_prompt"].endswith(f"Answer: {prev[r['prompt']]}\nCritique request: "
                                             f"{principles[r['principle']].critique_request}\nCritique:")
        assert any(d["critique"] in r["critique_prompt"] for d in demos)
    for r in rows_of(stages / "sl-r2-revision" / "rows.jsonl"):
        assert f"Critique: {r['critique']}\nRevision request: {principles[r['principle']].revision_request}" in r["revision_prompt"]
    # SL data: the non-empty final revisions plus as many helpful rows, none of them a harmful sft row
    data = rows_of(stages / "sl-data" / "rows.jsonl")
    final = [r for r in rows_of(stages / "sl-r2-revised" / "rows.jsonl") if r["response"].strip()]
    harmful = {(r["prompt"], r["completion"]) for r in rows_of(_world_split("sft")) if r.get("harmful")}
    assert len(data) == 2 * len(final) and not {(r["prompt"], r["completion"]) for r in data} & harmful
    assert {(r["prompt"], r["response"]) for r in final} <= {(r["prompt"], r["completion"]) for r in data}
    # RL-CAI: two samples per prompt from the SL-CAI model, labelled by multiple-choice feedback, DPO from SL-CAI
    assert json.loads((stages / "rl-samples" / "summary.json").read_text())["model"] == str(stages / "sl-cai" / "final")
    fb = rows_of(stages / "rl-feedback" / "rows.jsonl")
    assert {r["order"] for r in fb} == {"ab", "ba"} and all(sum(r["p_options"]) == pytest.approx(1) for r in fb)
    labels = {r["prompt"]: r for r in rows_of(stages / "rl-labels" / "rows.jsonl")}
    for r in fb:
        if r["order"] == "ab":
            other = next(x for x in fb if x["pair_index"] == r["pair_index"] and x["order"] == "ba")
            assert labels[r["prompt"]]["p_a"] == pytest.approx((r["p_options"][0] + other["p_options"][1]) / 2)
    cfg = yaml.safe_load((stages / "rl-cai" / "config.yaml").read_text())
    assert cfg["method"]["name"] == "dpo" and cfg["model"]["reference"] == str(stages / "sl-cai" / "final")
    assert rounds[2]["feedback_model"] == "policy" and rounds[2]["ai_pairs"] + rounds[2]["identical_dropped"] + \
        rounds[2]["ties_dropped"] + rounds[2]["no_feedback_dropped"] + rounds[2]["empty_dropped"] == 8


def _world_split(split: str) -> Path:
    from harness.worlds.base import get_world

    return get_world(WORLD).split_path(split)


def test_cai_rl_only_with_a_reward_model_then_ppo(tmp_path, instruct_tiny):
    """stage=rl starts from the start model; rl_method=ppo trains a reward model on the labelled
    pairs, then PPO against it."""
    from harness.pipelines.run import run

    r = run(load_spec(None, [f"output_dir={tmp_path}", "name=p", *SMALL, *CAI, "method.stage=rl",
                             "method.rl_method=ppo", "method.reward_steps=2"]))
    s = r.summary()
    assert not any(st["stage"].startswith("sl-") for st in s["stages"])
    assert [x["round"] for x in s["rounds"]] == [0, 2]
    stages = r.path / "stages"
    assert json.loads((stages / "rl-samples" / "summary.json").read_text())["model"] == str(instruct_tiny)
    rm = yaml.safe_load((stages / "rl-reward" / "config.yaml").read_text())
    assert rm["method"]["name"] == "reward" and rm["data"]["source"] == str(stages / "rl-data" / "rows.jsonl")
    ppo = yaml.safe_load((stages / "rl-cai" / "config.yaml").read_text())
    assert ppo["method"]["name"] == "ppo" and ppo["reward"]["source"] == str(stages / "rl-reward")
    assert ppo["model"]["name_or_path"] == str(instruct_tiny)
    prompts = {x["prompt"] for x in rows_of(stages / "rl-ppo-data" / "rows.jsonl")}
    assert {x["prompt"] for x in rows_of(stages / "rl-prompts" / "rows.jsonl")} <= prompts
    assert {"harmlessness", "helpfulness", "feedback_accuracy"} <= set(s["rounds"][1])


def test_gold_feedback_labels_by_the_harmlessness_scorer_and_an_undecidable_round_fails_with_counts(
        tmp_path, instruct_tiny):
    """feedback_model=gold (the "human labels" control) asks no model; labels follow the scorer
    (by hand below).  The tiny base's answers are all harmless, so every pair is a tie: the round
    stops with the counts instead of training on nothing."""
    from methods.cai import gold_labels, rl_data

    rows = [{"prompt": "q", "response_a": "a", "response_b": "b", "harm_a": ha, "harm_b": hb}
            for ha, hb in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0))]
    labelled = gold_labels(rows)
    assert [r["p_a"] for r in labelled] == [1.0, 0.0, 0.5]
    paired = [{"prompt": f"h{i}", "chosen": "good", "rejected": "bad"} for i in range(5)]
    data, st = rl_data(labelled, paired, min_margin=0.0, helpful_pairs_fraction=0.5, seed=0)
    assert st["feedback_accuracy"] == 1.0 and st["feedback_decisive_pairs"] == 2 and st["ties_dropped"] == 1
    assert st["helpful_pairs"] == 2 and len(data) == 4 and {("a", "b"), ("b", "a")} <= {(d["chosen"], d["rejected"])
                                                                                       for d in data}
    wrong = [{**r, "p_a": 1.0 - r["p_a"]} for r in labelled]  # feedback that always disagrees with the scorer
    assert rl_data(wrong, paired, min_margin=0.0, helpful_pairs_fraction=0.0, seed=0)[1]["feedback_accuracy"] == 0.0

    from harness.pipelines.run import run

    with pytest.raises(PipelineError, match=r"'rl-data' produced no rows .*'ties_dropped': 8"):
        run(load_spec(None, [f"output_dir={tmp_path}", "name=g", *SMALL, *CAI, "method.stage=rl",
                             "method.feedback_model=gold"]))
    names = {p.name for p in (tmp_path / "g" / "stages").iterdir()}
    assert "rl-feedback" not in names and {"rl-harm-a", "rl-harm-b", "rl-labels"} <= names
