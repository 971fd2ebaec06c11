"""lm-eval through its Python API on the toy world's local tasks (harness.evaluation.lmeval).

    .venv/bin/pytest tests/test_lmeval.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from harness.evaluation.lmeval import LMEvalError, _metrics, run_lm_eval, task_manager
from harness.worlds.base import get_world
from harness.worlds.toy import LM_EVAL_TASKS as TOY_TASKS
from harness.worlds.toy import lm_eval_items, prompt_subject


def toy_task_items(world):
    return lm_eval_items(world.eval_prompts(), world.options.seed)


def toy_include() -> list[Path]:
    return [get_world("toy").lm_eval_tasks().include]


def test_toy_task_items_are_deterministic_and_well_formed():
    world = get_world("toy")
    a, b = toy_task_items(world), toy_task_items(world)
    assert a == b
    prompts = world.eval_prompts()
    assert [r["prompt"] for r in a["toy_topic_gen"]] == prompts
    for row in a["toy_topic_choice"]:
        subject = prompt_subject(row["prompt"])
        assert len(row["choices"]) == 4 and len(set(row["choices"])) == 4
        # exactly the labelled choice is about the subject asked for
        about = [i for i, c in enumerate(row["choices"]) if subject in c.split()]
        assert about == [row["label"]]
    labels = [r["label"] for r in a["toy_topic_choice"]]
    assert len(set(labels)) > 1  # the answer is not always in the same position
    d = world.lm_eval_tasks().include
    for name in TOY_TASKS:
        cfg = yaml.safe_load((d / f"{name}.yaml").read_text())
        data_file = Path(cfg["dataset_kwargs"]["data_files"]["test"])
        assert data_file.parent == d and data_file.is_file()
        assert [json.loads(x) for x in data_file.read_text().splitlines()] == a[name]


def _manual_choice_accuracy(model, tok, items):
    """Accuracy of argmax_i log p(choice_i | chat prompt), computed without lm-eval."""
    from harness.modeling.generation import Completion, completion_logprobs, encode_prompts

    prompt_ids = encode_prompts(tok, [r["prompt"] for r in items])
    comps, owners = [], []
    for k, (row, pids) in enumerate(zip(items, prompt_ids)):
        for choice in row["choices"]:
            comps.append(Completion(k, 0, choice, pids, tok(choice, add_special_tokens=False)["input_ids"]))
            owners.append(k)
    lps = completion_logprobs(model, comps, tok.pad_token_id).tolist()
    correct = 0
    for k, row in enumerate(items):
        mine = [lp for lp, o in zip(lps, owners) if o == k]
        correct += int(max(range(len(mine)), key=mine.__getitem__) == row["label"])
    return correct / len(items)


def test_lm_eval_on_both_toy_tasks_with_a_real_tiny_model(tiny_base):
    from harness.modeling.generation import load_causal_lm

    model, tok = load_causal_lm("toy:tiny", device="cpu")
    res = run_lm_eval(model, tok, list(TOY_TASKS), include=toy_include(), batch_size=32)
    assert set(res) == set(TOY_TASKS)
    choice, gen = res["toy_topic_choice"], res["toy_topic_gen"]
    n = len(get_world("toy").eval_prompts())
    for r in (choice, gen):
        assert r["version"] == 1.0 and r["n_shot"] == 0 and r["n_samples"] == n and r["chat_template"] is True
    assert set(choice["metrics"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert set(gen["metrics"]) == {"exact_match", "exact_match_stderr"}
    assert gen["filters"] == ["first_subject"]
    # lm-eval's accuracy is the argmax of the choices' log-likelihoods after the chat prompt
    items = toy_task_items(get_world("toy"))["toy_topic_choice"]
    assert choice["metrics"]["acc"] == pytest.approx(_manual_choice_accuracy(model, tok, items))
    # the SFT base stays on topic: far above chance (0.25 for four choices, ~0 for exact match)
    assert choice["metrics"]["acc"] > 0.6
    assert gen["metrics"]["exact_match"] > 0.6
    # a limit and a few-shot setting are honoured and recorded
    res2 = run_lm_eval(model, tok, ["toy_topic_choice"], include=toy_include(), limit=8, num_fewshot=1,
                       batch_size=32)
    assert res2["toy_topic_choice"]["n_samples"] == 8 and res2["toy_topic_choice"]["n_shot"] == 1


def test_untrained_model_scores_at_chance_on_exact_match():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    world = get_world("toy")
    tok = AutoTokenizer.from_pretrained(world.tokenizer_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    res = run_lm_eval(model, tok, ["toy_topic_gen"], include=toy_include(), limit=12, batch_size=32)
    assert res["toy_topic_gen"]["metrics"]["exact_match"] < 0.2


def test_unknown_tasks_and_dirs_are_named():
    with pytest.raises(LMEvalError, match=r"unknown lm-eval task 'toy_topic_choise'.*did you mean.*toy_topic_choice"):
        task_manager(["toy_topic_choise", "toy_topic_gen"], toy_include(), builtin=False)
    with pytest.raises(LMEvalError, match="does not exist"):
        task_manager(["x"], ["/no/such/dir"])
    with pytest.raises(LMEvalError, match=r"lm_eval_tasks\[1\]"):
        task_manager(["toy_topic_gen", ""])


def test_metric_names_drop_a_single_filter_and_keep_several():
    m, f = _metrics({"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 1.0,
                     "exact_match,flex": 0.0, "exact_match_stderr,strict": 0.0, "exact_match_stderr,flex": 0.0})
    assert m == {"acc": 0.5, "acc_stderr": 0.1, "exact_match/strict": 1.0, "exact_match/flex": 0.0,
                 "exact_match_stderr/strict": 0.0, "exact_match_stderr/flex": 0.0}
    assert f == ["flex", "none", "strict"]
