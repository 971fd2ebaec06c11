"""Cache identity: a cache key names everything that determines the cached contents, so each
change misses and an unchanged input hits.  Covers the model fingerprint, the reference
log-prob cache, the baseline-sample cache and the judgement cache, with tiny models saved
here (and a Hugging Face cache laid out here, for hub ids at revisions).

    .venv/bin/pytest tests/test_cache_identity.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.modeling import identity
from harness.modeling.identity import weights_fingerprint

# --------------------------------------------------------------------------- tiny models


def _tokenizer(toy_world: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(toy_world.tokenizer_dir())


def save_lm(d: Path, tok: Any, seed: int = 0, kind: str = "causal_lm") -> Path:
    """A 1-layer Llama (hidden 32) with random weights of ``seed`` and the toy tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=kind == "causal_lm",
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **({"num_labels": 1} if kind == "reward" else {}),
    )
    torch.manual_seed(seed)
    model = (LlamaForSequenceClassification if kind == "reward" else LlamaForCausalLM)(cfg)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def bump_one_weight(d: Path, kind: str = "causal_lm") -> None:
    """Retrain, in miniature: load, change one weight, save into the same directory."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    model = auto.from_pretrained(d, **({"num_labels": 1} if kind == "reward" else {}))
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] += 0.5
    model.save_pretrained(d)


def edit_chat_template(d: Path) -> None:
    path = d / "chat_template.jinja"
    assert path.is_file(), sorted(p.name for p in d.iterdir())  # transformers 5 keeps it beside the tokenizer
    path.write_text(path.read_text().replace("<|user|>", "<|user|> ") if "<|user|>" in path.read_text()
                    else "{{ 'Q: ' }}" + path.read_text())


@pytest.fixture(scope="module")
def tok(toy_world: Any) -> Any:
    return _tokenizer(toy_world)


@pytest.fixture
def lm(tmp_path: Path, tok: Any) -> Path:
    return save_lm(tmp_path / "lm", tok)


# --------------------------------------------------------------------------- a Hugging Face cache laid out here

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture
def hub(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``acme/tiny`` in a local HF hub cache (the layout huggingface_hub writes): commit A (seed 0)
    is ``main``, commit B (seed 1) is tag ``v1``.  Offline, as every test here is."""
    from huggingface_hub import constants

    root = tmp_path / "hf-hub"
    repo = root / "models--acme--tiny"
    for sha, seed in ((SHA_A, 0), (SHA_B, 1)):
        save_lm(repo / "snapshots" / sha, tok, seed=seed)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA_A)
    (repo / "refs" / "v1").write_text(SHA_B)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return repo


# --------------------------------------------------------------------------- the fingerprint


def test_fingerprint_is_stable_and_content_addressed(lm: Path, tmp_path: Path) -> None:
    fp = weights_fingerprint(lm)
    assert weights_fingerprint(lm) == fp
    copy = tmp_path / "copy"
    shutil.copytree(lm, copy)
    assert weights_fingerprint(copy) == fp  # the same content elsewhere is the same model
    (lm / "README.md").write_text("# notes\n")  # documentation changes no output
    assert weights_fingerprint(lm) == fp


@pytest.mark.parametrize("change", ["weights", "config", "generation_config", "tokenizer", "chat_template",
                                    "merges.txt", "tokenizer.model", "remote_code"])
def test_fingerprint_changes_with_everything_that_changes_outputs(lm: Path, change: str) -> None:
    def fp() -> str:  # remote code counts only when it may run
        return weights_fingerprint(lm, trust_remote_code=True) if change == "remote_code" else weights_fingerprint(lm)

    before = fp()
    if change == "weights":
        bump_one_weight(lm)
    elif change == "config":
        cfg = json.loads((lm / "config.json").read_text())
        cfg["rms_norm_eps"] = 1e-3
        (lm / "config.json").write_text(json.dumps(cfg))
    elif change == "generation_config":
        (lm / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "do_sample": True}))
    elif change == "tokenizer":
        t = json.loads((lm / "tokenizer.json").read_text())
        t["added_tokens"][0]["content"] += "x"
        (lm / "tokenizer.json").write_text(json.dumps(t))
    elif change == "chat_template":
        edit_chat_template(lm)
    else:  # files other tokenizers and remote code read: a vocabulary, a sentencepiece model, modeling code
        name = {"remote_code": "modeling_tiny.py"}.get(change, change)
        (lm / name).write_text("one\n")
        mid = fp()
        assert mid != before, f"adding {name} must change the fingerprint"
        before = mid
        (lm / name).write_text("two\n")
    assert fp() != before, change


def test_adapter_fingerprint_covers_its_base(tmp_path: Path, tok: Any) -> None:
    """An adapter on a base that was retrained in place is another model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = save_lm(tmp_path / "base", tok)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    tok.save_pretrained(adapter)
    fp = weights_fingerprint(adapter)
    assert weights_fingerprint(adapter) == fp
    bump_one_weight(base)
    assert weights_fingerprint(adapter) != fp


def test_file_hashes_are_memoised_per_file_state(lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps fingerprint the same model in every trial: a second call hashes nothing; a
    rewritten file is hashed again."""
    calls: list[str] = []
    real = identity._hash_file

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(identity, "_hash_file", counting)
    weights_fingerprint(lm)
    weights_fingerprint(lm)
    assert calls.count("model.safetensors") <= 1
    calls.clear()
    assert weights_fingerprint(lm) and calls == []
    bump_one_weight(lm)
    weights_fingerprint(lm)
    assert "model.safetensors" in calls


def test_hub_ids_key_on_the_resolved_commit(hub: Path) -> None:
    main = weights_fingerprint("acme/tiny")
    assert weights_fingerprint("acme/tiny", revision="main") == main
    assert weights_fingerprint("acme/tiny", revision=SHA_A) == main  # the commit main points to
    assert weights_fingerprint("acme/tiny", revision="v1") != main
    (hub / "refs" / "main").write_text(SHA_B)  # main moved on the hub and was pulled
    assert weights_fingerprint("acme/tiny") == weights_fingerprint("acme/tiny", revision="v1") != main


def test_an_unresolvable_hub_revision_is_an_error_not_a_name(hub: Path) -> None:
    from harness.modeling.identity import ModelIdentityError

    with pytest.raises(ModelIdentityError, match=r"'acme/other'.*revision 'main'.*HF_HUB_OFFLINE"):
        weights_fingerprint("acme/other")
    with pytest.raises(ModelIdentityError, match="revision 'v2'"):
        weights_fingerprint("acme/tiny", revision="v2")
    with pytest.raises(ModelIdentityError, match="neither an existing path nor a hub id"):
        weights_fingerprint("/no/such/dir")


def test_remote_code_in_another_repo_is_part_of_the_identity(hub: Path, tmp_path: Path) -> None:
    """With trust_remote_code an ``auto_map`` entry ``repo--module.Class`` runs that repo's code."""
    code = hub.parent / "models--acme--code"
    (code / "refs").mkdir(parents=True)
    (code / "refs" / "main").write_text("c" * 40)
    snap = hub / "snapshots" / SHA_A
    cfg = json.loads((snap / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "acme/code--modeling_tiny.TinyForCausalLM"}
    (snap / "config.json").write_text(json.dumps(cfg))
    before = weights_fingerprint("acme/tiny", trust_remote_code=True)
    assert weights_fingerprint("acme/tiny", trust_remote_code=False) != before
    (code / "refs" / "main").write_text("d" * 40)
    assert weights_fingerprint("acme/tiny", trust_remote_code=True) != before


# --------------------------------------------------------------------------- reference log-prob cache


def _paired_data(path: Path, n: int = 24) -> Path:
    tail = " and the view was really nice" * 4  # long enough that max_length truncates
    rows = [{"prompt": f"Tell me about the park {i}.", "chosen": f"the park was great {i}{tail} .",
             "rejected": f"the park was awful {i}{tail} ."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ALIGN_HARNESS_CACHE", str(root))
    return root


def reference_cache(tmp_path: Path, model: str | Path, *over: str) -> dict[str, int]:
    """Train DPO for one step; what the reference log-prob cache did (hits/misses of train and eval)."""
    from harness.core.config import load_spec
    from harness.training.runner import execute

    data = tmp_path / "pairs.jsonl"
    if not data.exists():
        _paired_data(data)
    spec = load_spec(None, [
        f"model={model}", f"data={data}", "method=dpo", "train.max_steps=1", "train.batch_size=4",
        "train.max_length=48", "train.max_prompt_length=24", "train.progress=false", "eval.enabled=false",
        "tracking.mode=disabled", f"output_dir={tmp_path / 'runs'}", *over,
    ])
    summary = execute(spec, tracking="disabled").summary()
    return summary["reference_cache"]


HIT = {"hits": 2, "misses": 0}
MISS = {"hits": 0, "misses": 2}


@pytest.mark.slow
def test_reference_cache_hits_when_nothing_changed_and_misses_on_each_change(
        tmp_path: Path, lm: Path, fresh_cache: Path) -> None:
    assert reference_cache(tmp_path, lm) == MISS
    assert reference_cache(tmp_path, lm) == HIT
    assert reference_cache(tmp_path, lm, "train.precision=bf16") == MISS
    other = tmp_path / "other-pairs.jsonl"
    other.write_text((tmp_path / "pairs.jsonl").read_text().replace("great", "fine"))
    assert reference_cache(tmp_path, lm, f"data={other}") == MISS
    assert reference_cache(tmp_path, lm, "train.max_length=40") == MISS
    assert reference_cache(tmp_path, lm, "train.max_prompt_length=12") == MISS
    edit_chat_template(lm)
    assert reference_cache(tmp_path, lm) == MISS
    bump_one_weight(lm)  # retrained into the same directory
    assert reference_cache(tmp_path, lm) == MISS
    assert reference_cache(tmp_path, lm) == HIT


@pytest.mark.slow
def test_reference_cache_of_a_separate_reference_model(tmp_path: Path, tok: Any, fresh_cache: Path) -> None:
    policy = save_lm(tmp_path / "policy", tok, seed=0)
    ref = save_lm(tmp_path / "ref", tok, seed=1)
    assert reference_cache(tmp_path, policy, f"model.reference={ref}") == MISS
    assert reference_cache(tmp_path, policy, f"model.reference={ref}") == HIT
    bump_one_weight(ref)
    assert reference_cache(tmp_path, policy, f"model.reference={ref}") == MISS


@pytest.mark.slow
def test_reference_cache_of_a_hub_model_keys_on_its_revision(tmp_path: Path, hub: Path, fresh_cache: Path) -> None:
    """Keyed on the id string, a run at another revision (or after ``main`` moved) would reuse the
    reference log-probs of other weights."""
    assert reference_cache(tmp_path, "acme/tiny") == MISS
    assert reference_cache(tmp_path, "acme/tiny") == HIT
    assert reference_cache(tmp_path, "acme/tiny", "model.revision=v1") == MISS
    assert reference_cache(tmp_path, "acme/tiny", "model.revision=v1") == HIT
    (hub / "refs" / "main").write_text(SHA_B)  # main now is v1's commit: the same weights, a hit
    assert reference_cache(tmp_path, "acme/tiny") == HIT


# --------------------------------------------------------------------------- baseline-sample cache


def baseline_hit(tmp_path: Path, baseline: str | Path, candidate: Path, *over: str) -> bool:
    """Evaluate ``candidate`` against ``baseline``; whether the baseline's samples came from the cache."""
    from harness.core.config import load_spec
    from harness.evaluation.evaluate import evaluate_model_dir

    prompts = tmp_path / "prompts.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": f"Tell me about the lake {i}."}) + "\n" for i in range(4)))
    spec = load_spec(None, [
        f"model={candidate}", "method=dpo", f"data={prompts}", f"eval.prompts={prompts}", "eval.judge=none", "eval.kl_samples=0",
        "eval.num_prompts=4", "eval.max_new_tokens=6", "eval.batch_size=2", "eval.lm_eval_tasks=[]",
        "tracking.mode=disabled", *over,
    ])
    return evaluate_model_dir(candidate, spec, baseline_path=str(baseline))["baseline_cache_hit"]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["eval.temperature=0.3", "eval.top_p=0.5", "eval.max_new_tokens=5", "eval.seed=1",
                                    "eval.stop=['.']",
                                    "eval.batch_size=3",  # HF sampling is seeded per batch: batch size matters
                                    "chat_template", "retrained"])
def test_baseline_samples_hit_when_nothing_changed_and_miss_on_each_change(
        tmp_path: Path, tok: Any, fresh_cache: Path, change: str) -> None:
    cand = save_lm(tmp_path / "cand", tok, seed=3)
    base = save_lm(tmp_path / "base", tok, seed=4)
    assert not baseline_hit(tmp_path, base, cand)
    assert baseline_hit(tmp_path, base, cand)
    assert baseline_hit(tmp_path, base, save_lm(tmp_path / "other", tok, seed=5))  # the candidate is not the key
    over: list[str] = []
    if change == "chat_template":
        edit_chat_template(base)
    elif change == "retrained":
        bump_one_weight(base)
    else:
        over.append(change)
    assert not baseline_hit(tmp_path, base, cand, *over)
    assert baseline_hit(tmp_path, base, cand, *over)


@pytest.mark.slow
def test_baseline_samples_of_a_hub_model_key_on_its_commit(tmp_path: Path, tok: Any, hub: Path,
                                                           fresh_cache: Path) -> None:
    cand = save_lm(tmp_path / "cand", tok, seed=3)
    assert not baseline_hit(tmp_path, "acme/tiny", cand)
    assert baseline_hit(tmp_path, "acme/tiny", cand)
    (hub / "refs" / "main").write_text(SHA_B)  # main moved: other weights answer now
    assert not baseline_hit(tmp_path, "acme/tiny", cand)


# --------------------------------------------------------------------------- judgement cache


def _pairs() -> tuple[list[str], list[str], list[str]]:
    ins = [f"Tell me about the river {i}." for i in range(3)]
    return ins, [f"the river was great {i} ." for i in range(3)], [f"the river was awful {i} ." for i in range(3)]


def cache_hits(judge: Any, cache: Path) -> int:
    from harness.evaluation.judges import judge_pairs

    return judge_pairs(judge, *_pairs(), cache).report.n_cache_hits


@pytest.mark.parametrize("backend, kind", [("reward_model", "reward"), ("hf", "causal_lm")])
def test_local_judges_key_on_weights_and_dtype_not_on_their_path(tmp_path: Path, tok: Any, backend: str,
                                                                 kind: str) -> None:
    from harness.evaluation.judges import build_judge
    from harness.reporting.results import judge_identity

    path = save_lm(tmp_path / "judge", tok, seed=7, kind=kind)
    cache = tmp_path / "judgements"

    def judge(**kw: Any) -> Any:
        return build_judge(backend, model=str(path), model_name="my-judge", device="cpu", **kw)

    first = judge()
    assert cache_hits(first, cache) == 0
    assert cache_hits(judge(), cache) == 6  # 3 pairs x 2 orders, nothing changed
    assert cache_hits(judge(dtype="bfloat16"), cache) == 0
    bump_one_weight(path, kind)  # retrained into the same path
    retrained = judge()
    assert cache_hits(retrained, cache) == 0
    # what reports show stays readable: the display name, plus the content hash beside it
    assert retrained.identity["model"] == "my-judge"
    assert retrained.identity["weights"] != first.identity["weights"]
    assert judge_identity(retrained.identity) == judge_identity(first.identity)
    assert "my-judge" in judge_identity(retrained.identity)


def test_in_memory_judges_key_on_their_weights(tmp_path: Path, tok: Any) -> None:
    from transformers import AutoModelForSequenceClassification

    from harness.evaluation.judges import RewardModelJudge

    path = save_lm(tmp_path / "rm", tok, seed=2, kind="reward")
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    cache = tmp_path / "judgements"
    assert cache_hits(RewardModelJudge(rm, tok, model_name="tiny-rm", device="cpu"), cache) == 0
    assert cache_hits(RewardModelJudge(rm, tok, model_name="tiny-rm", device="cpu"), cache) == 6
    with torch.no_grad():
        rm.score.weight.add_(1.0)  # trained further in memory, same name
    assert cache_hits(RewardModelJudge(rm, tok, model_name="tiny-rm", device="cpu"), cache) == 0


def test_openai_judge_keys_on_endpoint_model_prompt_and_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.evaluation import judges
    from harness.evaluation.judges import OpenAIChatJudge, judgement_key

    def key(**kw: Any) -> str:
        args = {"model": "gpt-x", "base_url": "http://127.0.0.1:9/v1", **kw}
        return judgement_key(OpenAIChatJudge(**args).identity, "ins", "a", "b")

    same = key()
    assert key() == same
    assert key(timeout_s=5.0) == same  # how long to wait changes no answer
    for kw in ({"model": "gpt-y"}, {"base_url": "http://127.0.0.1:10/v1"}, {"max_tokens": 4},
               {"top_logprobs": 5}, {"logprobs": False}):
        assert key(**kw) != same, kw
    monkeypatch.setattr(judges, "_USER_TEMPLATE", judges._USER_TEMPLATE.replace("Which", "Which one"))
    assert key() != same  # the judging prompt's wording, even without a version bump
    monkeypatch.undo()
    monkeypatch.setattr(judges, "PROMPT_VERSION", "pairwise-v2")
    assert key() != same
