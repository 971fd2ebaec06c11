"""Pairwise judges: both-order judging, caching, retries over real HTTP, local LM and RM judges.

    .venv/bin/pytest tests/test_judges.py -q

The HTTP judge talks to a real server on 127.0.0.1 (tests/judge_server.py) that answers
from a tiny Llama judge trained here in a few seconds to answer A when the first response
has a positive opinion word and B otherwise: a judge with a strong position bias.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from judge_server import FaultScript, JudgeModelServer

from harness.evaluation.judges import (
    HFLogprobJudge,
    JudgeError,
    OpenAIChatJudge,
    RetryPolicy,
    RewardModelJudge,
    ScorerJudge,
    build_judge,
    evaluate_pairwise,
    judge_messages,
    judge_pairs,
    parse_choice,
)
from harness.worlds.toy import NEGATIVE, POSITIVE, SUBJECTS, build_tokenizer, gold_reward

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL_NAME = "tiny-judge"


def _response(rng: random.Random, positive: bool) -> str:
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    return f"the {rng.choice(SUBJECTS)} was {word} ." + " really" * rng.randint(0, 3)


def _rule(a: str, b: str) -> str:
    """The tiny judge's rule: A when the first response is positive, else B (blind to B: biased)."""
    return "A" if any(w in a.split() for w in POSITIVE) else "B"


def _items(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    out = []
    for _ in range(n):
        subject = rng.choice(SUBJECTS)
        out.append((f"Tell me about the {subject}.", _response(rng, rng.random() < 0.5), _response(rng, rng.random() < 0.5)))
    return out


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """A 1-layer Llama (hidden 32) trained for 60 steps to answer A/B by the rule above."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    texts = [m["content"] for it in _items(rng, 60) for m in judge_messages(*it)] + ["A", "B"]
    tok = build_tokenizer(texts, tmp_path_factory.mktemp("judge-tok"), vocab_size=512)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    answer = {c: tok(c, add_special_tokens=False)["input_ids"][0] for c in "AB"}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        batch = _items(rng, 16)
        seqs = [
            tok(tok.apply_chat_template(judge_messages(*it), tokenize=False, add_generation_prompt=True),
                add_special_tokens=False)["input_ids"]
            for it in batch
        ]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = logits[torch.arange(len(seqs)), torch.tensor([len(s) - 1 for s in seqs])]
        target = torch.tensor([answer[_rule(a, b)] for _, a, b in batch])
        loss = torch.nn.functional.cross_entropy(last, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


class FirstAnswerJudge:
    """A maximally position-biased judge: always prefers whichever output it is shown first."""

    identity = {"backend": "test", "model": "always-first", "prompt_version": "none"}

    def __init__(self) -> None:
        self.calls = 0

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        self.calls += 1
        return 1.0


def test_both_orders_cancel_a_judge_that_always_prefers_the_first_answer(tmp_path: Path) -> None:
    rng = random.Random(1)
    items = _items(rng, 12)
    judge = FirstAnswerJudge()
    out = evaluate_pairwise(
        judge, [i for i, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items],
        cache_dir=tmp_path / "cache", n_bootstrap=20,
    )
    m = out["metrics"]
    assert m["win_rate"] == 50.0
    assert m["n_draws"] == 12 and m["n_wins"] == 0 and m["n_wins_base"] == 0
    assert m["discrete_win_rate"] == 50.0
    assert judge.calls == 24  # each pair judged in both orders
    assert out["judging"]["n_judge_calls"] == 24 and out["judging"]["n_failed_pairs"] == 0


def test_one_order_alone_would_be_biased_and_both_orders_are_not(tiny_judge: tuple[Any, Any], tmp_path: Path) -> None:
    """The trained judge prefers a positive first answer whatever the second; candidate ==
    baseline (both positive) must read exactly 50%."""
    model, tok = tiny_judge
    judge = HFLogprobJudge(model, tok, model_name=MODEL_NAME, device="cpu")
    rng = random.Random(2)
    ins = [f"Tell me about the {rng.choice(SUBJECTS)}." for _ in range(10)]
    same = [_response(rng, positive=True) for _ in range(10)]
    one_order = judge.prefer_batch(list(zip(ins, same, same)))
    assert sum(one_order) / len(one_order) > 0.6  # shown the same text twice, it favours A
    judged = judge_pairs(judge, ins, same, same, tmp_path / "c")
    assert all(p is not None and abs(p - 0.5) < 1e-12 for p in judged.preferences)
    # identical orders collapse to one judgement per pair
    assert judged.report.n_judgements == 10


def test_hf_logprob_judge_reads_the_answer_tokens(tiny_judge: tuple[Any, Any]) -> None:
    model, tok = tiny_judge
    judge = HFLogprobJudge(model, tok, model_name=MODEL_NAME, device="cpu", batch_size=8)
    items = _items(random.Random(3), 40)
    batched = judge.prefer_batch(items)
    # padding must not change an answer: compare with unpadded single forwards
    a_id, b_id = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "AB")
    for item, p in zip(items[:6], batched[:6]):
        text = tok.apply_chat_template(judge_messages(*item), tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model(input_ids=ids).logits[0, -1]
        expected = torch.softmax(last[[a_id, b_id]], dim=-1)[0].item()
        assert p == pytest.approx(expected, abs=1e-5)
    # the judge learned its rule: reading A and B swapped would score well below chance
    agree = [(p > 0.5) == (_rule(a, b) == "A") for p, (_, a, b) in zip(batched, items)]
    assert sum(agree) / len(agree) >= 0.75
    ident = judge.identity
    assert {k: ident[k] for k in ("backend", "model", "prompt_version", "dtype")} == \
        {"backend": "hf_logprob", "model": MODEL_NAME, "prompt_version": "pairwise-v1", "dtype": "float32"}
    assert ident["weights"] and ident["tokenizer"] and ident["prompt_sha"]  # content, beside the display name


def _judge_inputs(n: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    rng = random.Random(seed)
    ins, cand, base = [], [], []
    for _ in range(n):
        ins.append(f"Tell me about the {rng.choice(SUBJECTS)}.")
        cand.append(_response(rng, rng.random() < 0.8))
        base.append(_response(rng, rng.random() < 0.3))
    return ins, cand, base


def test_http_judge_retries_rate_limits_errors_and_malformed_answers(
    tiny_judge: tuple[Any, Any], tmp_path: Path
) -> None:
    model, tok = tiny_judge
    ins, cand, base = _judge_inputs(6, seed=4)
    # requests 0-2: 429; then one judgement OK (3); 4: malformed; 5: OK; 6: 503; the rest OK
    script = FaultScript(rate_limit_first=3, malformed_at={4}, server_error_at={6})
    waits: list[float] = []
    policy = RetryPolicy(max_retries=4, backoff_s=0.01, backoff_max_s=1.0)
    with JudgeModelServer(model, tok, MODEL_NAME, script) as server:
        judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url, api_key_env="HARNESS_TEST_NO_KEY", timeout_s=10)
        judged = judge_pairs(judge, ins, cand, base, tmp_path / "cache", retry=policy, sleep=waits.append)
        r = judged.report
        assert r.errors_by_reason == {"rate_limited": 3, "malformed": 1, "server_error": 1}
        assert r.n_retries == 5 and r.n_failed_pairs == 0 and r.n_failed_judgements == 0
        assert r.n_judgements == 12 and r.n_judge_calls == 17 == server.n_requests
        assert waits == [0.01, 0.02, 0.04, 0.01, 0.01]  # exponential within a judgement, reset after
        assert r.judge_counters == {"answers_from_logprobs": 12}

        # the HTTP answers are the local model's answers
        local = HFLogprobJudge(model, tok, model_name=MODEL_NAME, device="cpu")
        direct = judge_pairs(local, ins, cand, base, None)
        for p_http, p_local in zip(judged.preferences, direct.preferences):
            assert p_http == pytest.approx(p_local, abs=1e-5)

        # cached: a second evaluation makes no request at all
        before = server.n_requests
        again = judge_pairs(judge, ins, cand, base, tmp_path / "cache", retry=policy, sleep=waits.append)
        assert server.n_requests == before
        assert again.preferences == judged.preferences
        assert again.report.n_cache_hits == 12 and again.report.n_judge_calls == 0


def test_http_judge_with_concurrent_workers(tiny_judge: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny_judge
    ins, cand, base = _judge_inputs(8, seed=10)
    local = judge_pairs(HFLogprobJudge(model, tok, model_name=MODEL_NAME, device="cpu"), ins, cand, base, None)
    with JudgeModelServer(model, tok, MODEL_NAME, FaultScript(rate_limit_first=3)) as server:
        judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url)
        judged = judge_pairs(judge, ins, cand, base, tmp_path, workers=4, retry=RetryPolicy(backoff_s=0.01))
        assert server.n_requests == 16 + 3
    assert judged.report.errors_by_reason == {"rate_limited": 3} and judged.report.n_retries == 3
    for p_http, p_local in zip(judged.preferences, local.preferences):
        assert p_http == pytest.approx(p_local, abs=1e-5)


def test_http_judge_timeout_is_retried(tiny_judge: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny_judge
    ins, cand, base = _judge_inputs(2, seed=5)
    with JudgeModelServer(model, tok, MODEL_NAME, FaultScript(delay_at={1: 2.0})) as server:
        judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url, timeout_s=0.5)
        judged = judge_pairs(judge, ins, cand, base, tmp_path / "c", retry=RetryPolicy(backoff_s=0.01))
    assert judged.report.errors_by_reason == {"timeout": 1}
    assert judged.report.n_retries == 1 and judged.report.n_failed_pairs == 0
    assert all(p is not None for p in judged.preferences)


def test_http_judge_failures_after_max_retries_are_excluded_and_counted(
    tiny_judge: tuple[Any, Any], tmp_path: Path
) -> None:
    model, tok = tiny_judge
    ins, cand, base = _judge_inputs(5, seed=6)
    # the first judgement (pair 0, candidate first) fails on its try and its one re-try
    script = FaultScript(server_error_at={0, 1})
    with JudgeModelServer(model, tok, MODEL_NAME, script) as server:
        judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url)
        out = evaluate_pairwise(
            judge, ins, cand, base, cache_dir=tmp_path / "c",
            retry=RetryPolicy(max_retries=1, backoff_s=0.0), n_bootstrap=10,
        )
        j = out["judging"]
        assert j["n_failed_pairs"] == 1 and j["failed_pairs"] == [{"index": 0, "reason": "server_error"}]
        assert j["n_failed_judgements"] == 1 and j["errors_by_reason"] == {"server_error": 2}
        assert out["metrics"]["n_total"] == 4
        # a failed judgement is not cached: the next evaluation asks again and completes
        n0 = server.n_requests
        out2 = evaluate_pairwise(judge, ins, cand, base, cache_dir=tmp_path / "c", n_bootstrap=10)
        assert server.n_requests == n0 + 1
        assert out2["metrics"]["n_total"] == 5 and out2["judging"]["n_cache_hits"] == 9

    with JudgeModelServer(model, tok, MODEL_NAME, FaultScript(rate_limit_first=10**9)) as server:
        judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url)
        with pytest.raises(JudgeError, match="all 5 pairs failed"):
            evaluate_pairwise(
                judge, ins, cand, base, cache_dir=None, retry=RetryPolicy(max_retries=2, backoff_s=0.0)
            )
        assert server.n_requests == 10 * 3


def test_http_judge_text_answers_and_config_errors(tiny_judge: tuple[Any, Any], tmp_path: Path) -> None:
    model, tok = tiny_judge
    ins, cand, base = _judge_inputs(3, seed=7)
    with JudgeModelServer(model, tok, MODEL_NAME) as server:
        text_judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url, logprobs=False)
        judged = judge_pairs(text_judge, ins, cand, base, tmp_path / "c")
        assert judged.report.judge_counters == {"answers_from_text": 6}
        assert all(p in (0.0, 0.5, 1.0) for p in judged.preferences)
        # the logprob and text judges are different judges: no shared cache entries
        logprob_judge = OpenAIChatJudge(MODEL_NAME, base_url=server.base_url)
        assert judge_pairs(logprob_judge, ins, cand, base, tmp_path / "c").report.n_cache_hits == 0

        wrong = OpenAIChatJudge("no-such-model", base_url=server.base_url)
        with pytest.raises(JudgeError, match="HTTP 404"):
            judge_pairs(wrong, ins, cand, base, None)
    with pytest.raises(JudgeError, match="not an http"):
        OpenAIChatJudge(MODEL_NAME, base_url="localhost:8000/v1")


def test_parse_choice() -> None:
    assert parse_choice("A") == "A" and parse_choice(" b.") == "B"
    assert parse_choice("Response (A)") == "A" and parse_choice("Output: B") == "B"
    assert parse_choice("I prefer A") is None and parse_choice("AB") is None and parse_choice("") is None


def test_reward_model_judge_is_bradley_terry_of_scores(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    rng = random.Random(8)
    tok = build_tokenizer([m["content"] for it in _items(rng, 30) for m in judge_messages(*it)], tmp_path / "tok")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(cfg)
    judge = RewardModelJudge(rm, tok, model_name="tiny-rm", device="cpu", batch_size=3)
    items = _items(rng, 7)

    def score(ins: str, out: str) -> float:
        msgs = [{"role": "user", "content": ins}, {"role": "assistant", "content": out}]
        text = tok.apply_chat_template(msgs, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return rm(input_ids=ids).logits[0, 0].item()

    got = judge.prefer_batch(items)
    for (ins, a, b), p in zip(items, got):
        assert p == pytest.approx(1 / (1 + math.exp(-(score(ins, a) - score(ins, b)))), abs=1e-5)
    judged = judge_pairs(judge, [i for i, _, _ in items], [a for _, a, _ in items], [b for _, _, b in items], None)
    # a score-difference judge has no position bias: both orders agree
    for p, q in zip(judged.preferences, got):
        assert p == pytest.approx(q, abs=1e-6)


def test_gold_reward_judge_on_toy_prompts(tmp_path: Path) -> None:
    from harness.worlds.base import get_world

    gold = get_world("toy").gold_scorer()
    judge = build_judge("scorer", score=gold.fn, name=gold.identity)
    assert judge.identity["backend"] == "scorer" and judge.identity["model"] == "gold_reward@1"
    prompt = "Write a short review of the pizza."
    good, bad = "the pizza was great .", "the pizza was awful ."
    assert gold_reward(prompt, good) > gold_reward(prompt, bad)
    out = evaluate_pairwise(
        judge, [prompt] * 3, [good, good, bad], [bad, good, good], cache_dir=tmp_path, n_bootstrap=10
    )
    m = out["metrics"]
    assert (m["n_wins"], m["n_draws"], m["n_wins_base"]) == (1, 1, 1)  # ties count half
    assert m["win_rate"] == 50.0 and m["avg_length"] == pytest.approx((2 * len(good) + len(bad)) / 3)

    soft = ScorerJudge(gold_reward, name="gold", mode="soft", temperature=0.5)
    diff = gold_reward(prompt, good) - gold_reward(prompt, bad)
    assert soft.prefer(prompt, good, bad) == pytest.approx(1 / (1 + math.exp(-diff / 0.5)))


def test_cache_is_keyed_by_judge_identity(tmp_path: Path) -> None:
    ins, cand, base = _judge_inputs(4, seed=9)
    j1 = ScorerJudge(lambda i, o: float(len(o)), name="length")
    first = judge_pairs(j1, ins, cand, base, tmp_path)
    assert first.report.n_cache_hits == 0 and first.report.n_judge_calls == 8
    assert judge_pairs(j1, ins, cand, base, tmp_path).report.n_judge_calls == 0
    j2 = ScorerJudge(lambda i, o: float(len(o)), name="length", tie_tolerance=1.0)
    assert judge_pairs(j2, ins, cand, base, tmp_path).report.n_cache_hits == 0


def test_bad_inputs_fail_before_judging(tmp_path: Path) -> None:
    judge = FirstAnswerJudge()
    with pytest.raises(ValueError, match="candidate_outputs has 1 items but instructions has 2"):
        judge_pairs(judge, ["x", "y"], ["a"], ["b", "c"], tmp_path)
    with pytest.raises(ValueError, match=r"baseline_outputs\[1\] is a NoneType"):
        judge_pairs(judge, ["x", "y"], ["a", "b"], ["b", None], tmp_path)  # type: ignore[list-item]
    assert judge.calls == 0

    class NoIdentity:
        def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
            return 0.5

    with pytest.raises(JudgeError, match="identity"):
        judge_pairs(NoIdentity(), ["x"], ["a"], ["b"], tmp_path)  # type: ignore[arg-type]

    class Broken(FirstAnswerJudge):
        def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
            return 1.5

    with pytest.raises(JudgeError, match="expected a probability"):
        judge_pairs(Broken(), ["x"], ["a"], ["b"], None)
    with pytest.raises(Exception, match="did you mean 'openai'"):
        build_judge("opnai")
