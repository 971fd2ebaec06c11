"""Evaluation engine end to end on real tiny toy-world models (harness.evaluation.evaluate, harness.cli.eval).

    .venv/bin/pytest tests/test_evaluate.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.core.config import ConfigError, load_spec
from harness.evaluation.evaluate import (
    PAIRWISE_COLUMNS,
    EvalError,
    evaluate_model_dir,
    evaluate_trained,
    kl_estimate,
)
from harness.modeling.generation import load_causal_lm, resolve_model_dir
from harness.store.runs import Run
from harness.worlds import toy as toyworld
from harness.worlds.base import get_world
from harness.worlds.toy import prompt_subject as toy_subject

FLAT_KEYS = {"gold_reward_mean", "gold_reward_std", "baseline_gold_reward_mean", "kl_mean", "kl_stderr", "judge",
             "lm_eval", "timing_s", *PAIRWISE_COLUMNS}



def _train(out: Path, *overrides: str) -> Run:
    from harness.training.runner import execute

    spec = load_spec(None, ["model=toy:tiny", f"output_dir={out}", "tracking.mode=disabled",
                            "train.progress=false", *overrides])
    return execute(spec, tracking="disabled")


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return _train(out, "method=dpo", "name=dpo", "train.max_steps=12", "train.lr=2e-3", "method.beta=0.1",
                  "eval.lm_eval_tasks=[toy_topic_choice]", "eval.lm_eval_limit=12", "eval.kl_samples=2")


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    return _train(out, "method=reward", "name=rm", "train.max_steps=40", "train.lr=2e-3")


class Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[list[str], list[list]]] = {}

    def log_table(self, name, columns, rows):
        self.tables[name] = (columns, rows)

    def log_summary(self, summary):
        pass


def test_evaluate_trained_through_the_runner(dpo_run):
    ev = dpo_run.summary()["eval"]
    assert FLAT_KEYS <= set(ev), FLAT_KEYS - set(ev)
    n = len(get_world("toy").eval_prompts())
    assert ev["n_prompts"] == n == ev["n_total"]
    assert ev["judge"]["backend"] == "scorer" and ev["judge"]["model"].startswith("gold_reward@")
    assert set(ev["judges"]) == {"gold"} and ev["judges"]["gold"]["judge"] == ev["judge"]
    assert ev["baseline"] == str(resolve_model_dir("toy:tiny"))
    assert set(ev["timing_s"]) >= {"generation", "baseline_generation", "gold_reward", "kl", "judge", "lm_eval",
                                   "total"}
    assert ev["lm_eval"]["toy_topic_choice"]["n_samples"] == 12
    rows = [json.loads(x) for x in (dpo_run.path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == n
    assert {"prompt", "output", "baseline_output", "verdict", "preference", "gold_reward"} <= set(rows[0])
    # the columns agree with the samples they summarise
    gold = [r["gold_reward"] for r in rows]
    assert ev["gold_reward_mean"] == pytest.approx(sum(gold) / n)
    assert ev["baseline_gold_reward_mean"] == pytest.approx(sum(r["baseline_gold_reward"] for r in rows) / n)
    assert [r["gold_reward"] for r in rows] == [toyworld.gold_reward(r["prompt"], r["output"]) for r in rows]
    verdicts = [r["verdict"] for r in rows]
    assert (ev["n_wins"], ev["n_wins_base"], ev["n_draws"]) == (
        verdicts.count("win"), verdicts.count("loss"), verdicts.count("tie"))
    wins = [1.0 if r["gold_reward"] > r["baseline_gold_reward"] else 0.0 if r["gold_reward"] < r["baseline_gold_reward"]
            else 0.5 for r in rows]
    assert ev["win_rate"] == pytest.approx(100 * sum(wins) / n)
    assert ev["avg_length"] == pytest.approx(sum(len(r["output"]) for r in rows) / n)
    assert ev["kl_n_samples"] == 2 * n


def test_kl_to_itself_is_zero_and_to_a_trained_model_positive(dpo_run):
    base, tok = load_causal_lm("toy:tiny", device="cpu")
    trained, _ = load_causal_lm(dpo_run.path, device="cpu")
    prompts = get_world("toy").eval_prompts()[:16]
    same = kl_estimate(base, tok, base, prompts, n_samples=2, max_new_tokens=24, seed=0, batch_size=16)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-5) and same["kl_stderr"] == pytest.approx(0.0, abs=1e-5)
    other = kl_estimate(trained, tok, base, prompts, n_samples=2, max_new_tokens=24, seed=0, batch_size=16)
    assert other["kl_mean"] > 0.05 and other["kl_mean"] > 3 * other["kl_stderr"]
    assert other["kl_n_samples"] == 32


def test_gold_reward_of_real_generations_beats_an_untrained_model(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    world = get_world("toy")
    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    untrained = tmp_path / "untrained"
    LlamaForCausalLM(cfg).save_pretrained(untrained)
    tok.save_pretrained(untrained)
    spec = load_spec(None, ["method=sft", "eval.lm_eval_tasks=[]", "eval.kl_samples=0",
                            "eval.max_new_tokens=20"])
    model, mtok = load_causal_lm("toy:tiny", device="cpu")
    run = Run(tmp_path / "run")
    run.path.mkdir()
    rec = Recorder()
    ev = evaluate_trained(run=run, spec=spec, model=model, tokenizer=mtok, baseline_path=str(untrained), tracker=rec)
    n = len(world.eval_prompts())
    # the SFT base answers on topic (sentiment stays mixed, as in its SFT data); random weights do not
    samples = [json.loads(x) for x in (run.path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == ev["n_total"] == n
    on_topic = sum(toy_subject(r["prompt"]) in r["output"].split() for r in samples) / n
    base_on_topic = sum(toy_subject(r["prompt"]) in r["baseline_output"].split() for r in samples) / n
    assert on_topic > 0.4 and base_on_topic < 0.1
    assert ev["gold_reward_mean"] > ev["baseline_gold_reward_mean"] + 0.1
    assert ev["win_rate"] > 55
    assert ev["skipped"] == {"kl": "eval.kl_samples=0"}
    columns, rows = rec.tables["eval/samples"]
    assert len(rows) == n and "gold_reward" in columns and "baseline_output" in columns
    assert rows[0][columns.index("output")] == samples[0]["output"]


def test_reward_model_accuracy_and_reward_model_judge(reward_run, dpo_run):
    from typer.testing import CliRunner

    from harness.cli.main import app
    from harness.evaluation.judges import RewardModelJudge

    ev = reward_run.summary()["eval"]
    n_pairs = len(get_world("toy").eval_prompts()) * 8
    assert ev["rm_n_pairs"] == n_pairs
    assert ev["rm_accuracy"] > 0.6  # trained on noisy gold labels: clearly above chance on held-out pairs
    # the same accuracy from the reward-model judge's own scoring path (chat-formatted texts)
    judge = RewardModelJudge(str(reward_run.final_dir), device="cpu")
    pairs = get_world("toy").heldout_pairs()
    ins = [p["prompt"][0]["content"] for p in pairs]
    sc = judge.score_batch(list(zip(ins, [p["chosen"] for p in pairs])))
    sr = judge.score_batch(list(zip(ins, [p["rejected"] for p in pairs])))
    assert ev["rm_accuracy"] == pytest.approx(sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(sc, sr)) / n_pairs,
                                              abs=1.5 / n_pairs)

    # re-evaluate the DPO run from the CLI with the reward model: a second judge and RM scores
    before = dpo_run.summary()["eval"]
    result = CliRunner().invoke(app, ["eval", str(dpo_run.path), f"eval.reward_model={reward_run.path}",
                                      "eval.lm_eval_tasks=[]", "eval.kl_samples=2"])
    assert result.exit_code == 0, result.output
    after = dpo_run.summary()["eval"]
    assert set(after["judges"]) == {"gold", "reward_model"}
    assert after["judge"] == before["judge"]  # the main judge on toy data stays gold
    assert after["judges"]["reward_model"]["judge"]["backend"] == "reward_model"
    for col in PAIRWISE_COLUMNS:
        assert col in after["judges"]["reward_model"]
    # same seed, same weights: the same samples, so the same gold numbers and KL
    assert after["gold_reward_mean"] == before["gold_reward_mean"]
    assert after["win_rate"] == before["win_rate"]
    assert after["kl_mean"] == pytest.approx(before["kl_mean"], abs=1e-4)
    assert after["baseline_cache_hit"] is True
    gold = after["judges"]["gold"]["judging"]
    assert gold["n_cache_hits"] == gold["n_judgements"]  # judged before: nothing judged again
    rows = [json.loads(x) for x in (dpo_run.path / "samples.jsonl").read_text().splitlines()]
    assert after["rm_score_mean"] == pytest.approx(sum(r["rm_score"] for r in rows) / len(rows))
    assert "win_rate (reward_model)" in result.output


def test_cli_eval_of_a_model_without_a_run(tmp_path):
    from typer.testing import CliRunner

    from harness.cli.main import app

    result = CliRunner().invoke(app, ["eval", "model=toy:tiny", "eval.baseline=toy:tiny", f"output_dir={tmp_path}",
                                      "eval.lm_eval_tasks=[]", "eval.kl_samples=1", "eval.num_prompts=12",
                                      "tracking.mode=disabled"])
    assert result.exit_code == 0, result.output
    run = Run(tmp_path / "eval-0001")
    assert run.status()["status"] == "completed"
    ev = run.summary()["eval"]
    # a model against itself with the same seed: identical answers, every pair a tie, no KL
    assert ev["n_draws"] == ev["n_total"] == 12
    assert ev["win_rate"] == 50.0 and ev["length_controlled_winrate"] == pytest.approx(50.0)
    assert ev["kl_mean"] == pytest.approx(0.0, abs=1e-5)
    assert run.config()["model"]["name_or_path"] == "toy:tiny"


def test_configuration_errors_come_before_any_model_loads(tmp_path):
    from typer.testing import CliRunner

    from harness.cli.main import app

    with pytest.raises(ConfigError, match="judge_model"):
        load_spec(None, ["method=dpo", "eval.judge=openai"])
    with pytest.raises(ConfigError, match="eval.judgee"):
        load_spec(None, ["method=dpo", "eval.judgee=gold"])
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "hi"}) + "\n")
    spec = load_spec(None, ["method=sft", f"data={data}", "eval.judge=gold"])
    with pytest.raises(EvalError, match="gold scorer.*has none"):
        evaluate_model_dir("toy:tiny", spec)
    spec = load_spec(None, ["method=sft", "eval.judge=openai", "eval.judge_model=gpt-4o-mini",
                            "eval.judge_api_key_env=ALIGN_TEST_NO_SUCH_KEY"])
    with pytest.raises(EvalError, match=r"\$ALIGN_TEST_NO_SUCH_KEY"):
        evaluate_model_dir("toy:tiny", spec)
    spec = load_spec(None, ["method=sft", f"data={data}"])
    with pytest.raises(EvalError, match="eval.prompts"):
        evaluate_model_dir("toy:tiny", spec)
    result = CliRunner().invoke(app, ["eval"])
    assert result.exit_code == 2 and "run directory" in result.output
    result = CliRunner().invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "config.yaml" in result.output


def test_lora_run_evaluates_the_same_in_memory_and_reloaded(tmp_path):
    """A LoRA run is evaluated on the in-memory PeftModel after training and on the adapter
    reloaded from final/ by ``harness eval``: same samples, same numbers."""
    from harness.cli.eval import evaluate_run_dir

    run = _train(tmp_path, "method=dpo", "name=lora", "peft=lora", "train.max_steps=6", "train.lr=5e-3",
                 "eval.lm_eval_tasks=[toy_topic_gen]", "eval.lm_eval_limit=6", "eval.kl_samples=1",
                 "eval.num_prompts=8")
    assert (run.final_dir / "adapter_config.json").is_file()
    first = run.summary()["eval"]
    again = evaluate_run_dir(run.path)
    for key in ("gold_reward_mean", "baseline_gold_reward_mean", "win_rate", "length_controlled_winrate"):
        assert again[key] == first[key], key
    assert again["kl_mean"] == pytest.approx(first["kl_mean"], abs=1e-4) and first["kl_mean"] > 0
    assert again["lm_eval"]["toy_topic_gen"]["metrics"] == first["lm_eval"]["toy_topic_gen"]["metrics"]
    assert run.summary()["eval"]["timing_s"] == again["timing_s"]
