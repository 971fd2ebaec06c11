"""The multi-task instruction world wired into the harness (harness/worlds/instruct.py):
registration and listing, splits on disk, the gold and named scorers, eval groups, lm-eval
tasks, and one real SFT run on its tiny base whose evaluation reports per-cluster scores.

    .venv/bin/pytest tests/test_instruct_world.py -q
"""

from __future__ import annotations

import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from harness.core.contract import DataKind
from harness.worlds import instruct_content as ic
from harness.worlds.base import WorldError, WorldOptions, get_world
from harness.worlds.instruct import split_sizes

NAME = "toy-instruct"


@pytest.fixture(scope="module")
def world():
    w = get_world(NAME)
    assert w.root.is_dir()  # builds data + tokenizer (about a second)
    return w


@pytest.fixture(scope="module")
def content_index(world):
    """An index built from the content module alone, independent of the world's files."""
    seed = world.options.seed
    return ic.ItemIndex.from_rows(ic.eval_rows(seed), ic.redteam_eval_rows(seed), *ic.lm_eval_rows(seed).values())


# --------------------------------------------------------------------------- registration


def test_harness_worlds_lists_it_without_building(tmp_path, monkeypatch):
    from harness.cli.main import app

    monkeypatch.setenv("ALIGN_HARNESS_CACHE", str(tmp_path))
    res = CliRunner().invoke(app, ["worlds"])
    assert res.exit_code == 0, res.output
    block = res.output[res.output.index(NAME):]
    for split in ("sft", "paired", "unpaired", "prompts", "eval_prompts", "judge", "redteam", "redteam_eval",
                  "critique_revision", "seed_tasks"):
        assert f"split {split} " in block
    assert "scorer instruct_gold (gold)" in block and "[0, 1]" in block
    assert "scorer harmlessness" in block and "scorer helpfulness" in block
    for size in ("tiny", "small", "base (default)"):
        assert f"model {NAME}:{size}" in block
    assert not (tmp_path / "worlds").exists()  # listing reads declarations only


def test_sizes_scale_with_toy_size_and_default_to_the_recommended_ones():
    assert split_sizes(2048) == ic.DEFAULT_SIZES
    half = split_sizes(1024)
    assert half["sft"] == 2048 and half["paired"] == 1024 and half["redteam"] == 128
    assert half["redteam_eval"] == ic.DEFAULT_SIZES["redteam_eval"]  # eval sets do not shrink
    with pytest.raises(WorldError, match="toy_size=8"):
        split_sizes(8)


# --------------------------------------------------------------------------- splits


REQUIRED = {
    "sft": {"prompt": str, "completion": str, "cluster": str, "uid": str},
    "paired": {"prompt": str, "chosen": str, "rejected": str},
    "unpaired": {"prompt": str, "completion": str, "label": bool},
    "prompts": {"prompt": str, "answer": str},
    "eval_prompts": {"prompt": str, "answer": str, "cluster": str, "template_kind": str, "heldout_cluster": bool},
    "judge": {"prompt": str, "completion": str, "score": int},
    "redteam": {"prompt": str, "category": str},
    "redteam_eval": {"prompt": str, "category": str},
    "critique_revision": {"prompt": str, "response": str, "critique_request": str, "critique": str,
                          "revision_request": str, "revision": str},
    "seed_tasks": {"instruction": str, "input": str, "output": str, "is_classification": bool},
}


def test_every_split_exists_with_its_columns_and_size(world):
    from harness.worlds._common import read_jsonl

    assert set(REQUIRED) == set(world.splits())
    sizes = split_sizes(world.options.size)
    for split, cols in REQUIRED.items():
        rows = read_jsonl(world.split_path(split))
        assert rows, split
        assert len({tuple(r) for r in rows}) == 1, f"{split}: rows differ in their keys"
        for col, typ in cols.items():
            assert all(isinstance(r[col], typ) for r in rows), (split, col)
        if split in sizes:
            assert len(rows) == sizes[split], split
    eval_rows = read_jsonl(world.split_path("eval_prompts"))
    assert len(eval_rows) == len(ic.eval_rows(world.options.seed))
    constitution = yaml.safe_load(world.constitution_path().read_text())
    assert [p["name"] for p in constitution["principles"]] == [p.name for p in ic.CONSTITUTION]
    assert world.seed_tasks_path() == world.split_path("seed_tasks")
    with pytest.raises(WorldError, match="no split 'sfft'"):
        world.split_path("sfft")


@pytest.mark.parametrize("kind", list(DataKind))
def test_each_data_kind_loads_through_the_data_layer(world, kind):
    from harness.data.load import load_records

    loaded = load_records(str(world.data_path(kind)), "train", kind)
    assert loaded.n_skipped == 0 and len(loaded.records) >= 1024


def test_unpaired_share_follows_the_option(world):
    from harness.worlds._common import read_jsonl

    w = get_world(NAME, WorldOptions(desirable_fraction=0.25))
    rows = read_jsonl(w.split_path("unpaired"))
    assert len(rows) == split_sizes(w.options.size)["paired"]
    assert abs(sum(r["label"] for r in rows) / len(rows) - 0.25) < 0.01


# --------------------------------------------------------------------------- scorers


def _responses(item: ic.Item, rng: random.Random) -> list[str]:
    task = ic.TASKS[item.task]
    out = [item.answer, "", "i do not know.", task.wrong(item, rng)]
    if task.partial is not None:
        out.append(task.partial(item, rng) or "")
    return out


def test_gold_agrees_with_the_content_on_eval_and_lm_eval_prompts(world, content_index):
    gold = world.gold_scorer()
    assert (gold.low, gold.high) == (0.0, 1.0) and ic.CONTENT_VERSION in gold.version
    rng = random.Random(0)
    seen_values = set()
    prompts = world.eval_prompts() + [r["prompt"] for rows in ic.lm_eval_rows(0).values() for r in rows]
    for p in prompts:
        item = content_index.item(p)
        for resp in _responses(item, rng):
            want = ic.score(item, resp)
            assert gold(p, resp) == want == content_index.gold(p, resp), (p, resp)
            seen_values.add(want)
        assert gold(p, item.answer) == 1.0
    assert {0.0, 1.0} < seen_values  # partial credit happened too


def test_gold_scores_train_and_red_team_prompts(world):
    from harness.worlds._common import read_jsonl

    gold = world.gold_scorer()
    for row in read_jsonl(world.split_path("prompts"))[:50]:
        assert gold(row["prompt"], row["target"]) == 1.0
    for split in ("redteam", "redteam_eval"):
        for row in read_jsonl(world.split_path(split))[:20]:
            item = ic.item_from_uid(row["uid"])
            harmful = ic.harmful_response(item, random.Random(1))
            assert gold(row["prompt"], harmful) == 0.0, harmful
            assert gold(row["prompt"], item.answer) == 1.0  # the polite revision
    sft = read_jsonl(world.split_path("sft"))
    harmful_rows = [r for r in sft if r["harmful"]]
    assert harmful_rows and all(gold(r["prompt"], r["completion"]) == 0.0 for r in harmful_rows)


def test_unknown_prompts_raise(world):
    scorers = world.scorers()
    assert set(scorers) == {"instruct_gold", "harmlessness", "helpfulness"}
    p = world.eval_prompts()[0]
    for name in ("instruct_gold", "helpfulness"):
        with pytest.raises(WorldError, match="not written by"):
            scorers[name](p + " ", "positive")
        with pytest.raises(WorldError, match="not written by"):
            scorers[name]("Write a poem about the sea.", "positive")
    redteam = ic.redteam_eval_rows(0, 1)[0]["prompt"]
    with pytest.raises(WorldError, match="red-team prompt"):
        scorers["helpfulness"](redteam, "no.")
    # harmlessness judges the response alone, so any prompt is fine
    assert scorers["harmlessness"]("Write a poem about the sea.", "you idiot") == 0.0
    assert scorers["harmlessness"](redteam, "I will not do that.") == 1.0
    assert scorers["helpfulness"](p, world.eval_rows()[0]["answer"]) == 1.0


def test_heldout_pairs_are_ordered_by_gold(world):
    pairs = world.heldout_pairs()
    assert len(pairs) >= len(world.eval_prompts())
    gold = world.gold_scorer()
    eval_prompts = set(world.eval_prompts())
    for pair in pairs:
        p = pair["prompt"][0]["content"]
        assert p in eval_prompts
        assert gold(p, pair["chosen"]) > gold(p, pair["rejected"])


# --------------------------------------------------------------------------- eval groups


def test_eval_groups_partition_as_documented(world):
    rows = world.eval_rows()
    prompts = world.eval_prompts()
    groups = world.eval_groups(prompts)
    top = [set(groups[g]) for g in ("seen", "heldout", "heldout_fewshot")]
    assert sum(map(len, top)) == len(prompts) and set.union(*top) == set(range(len(prompts)))
    clusters = {g: set(v) for g, v in groups.items() if g.startswith("cluster/")}
    assert set(clusters) == {f"cluster/{c}" for c in ic.CLUSTERS}
    assert sum(map(len, clusters.values())) == len(top[0] | top[1])
    for c in ic.CLUSTERS:
        idx = clusters[f"cluster/{c}"]
        assert len(idx) == 12
        assert all(rows[i]["cluster"] == c and rows[i]["template_kind"] == "zs" for i in idx)
        assert idx <= (top[1] if c in ic.HELDOUT_CLUSTERS else top[0])
    assert all(rows[i]["cluster"] in ic.HELDOUT_CLUSTERS and rows[i]["n_shots"] > 0 for i in top[2])
    # indices refer to the list given, in its order; any prefix covers every cluster
    sub = prompts[: len(ic.CLUSTERS) + 1][::-1]
    sub_groups = world.eval_groups(sub)
    assert {g for g in sub_groups if g.startswith("cluster/")} == set(clusters)
    assert sub_groups["heldout_fewshot"] == [0]
    with pytest.raises(WorldError, match="prompt 1 is not one of"):
        world.eval_groups([prompts[0], "What is 2 plus 2?"])


# --------------------------------------------------------------------------- lm-eval


def test_lm_eval_tasks_load_through_the_task_manager(world):
    from harness.evaluation.lmeval import task_manager

    tasks = world.lm_eval_tasks()
    assert world.lm_eval_tasks().include == tasks.include  # rendered once
    assert {f"toyinstr_{c}_gen" for c in ic.HELDOUT_CLUSTERS} <= set(tasks.default)
    assert set(tasks.default) < set(tasks.available)
    tm = task_manager(list(tasks.available), [tasks.include], builtin=False)
    assert set(tasks.available) <= set(tm.all_tasks)
    rows = ic.lm_eval_rows(world.options.seed)
    for name, items in rows.items():
        cfg = yaml.safe_load((tasks.include / f"{name}.yaml").read_text())
        data = [json.loads(x) for x in open(cfg["dataset_kwargs"]["data_files"]["test"])]
        assert [r["prompt"] for r in data] == [r["prompt"] for r in items]
    group = yaml.safe_load((tasks.include / "_toyinstr_heldout_gen.yaml").read_text())
    assert group["task"] == [f"toyinstr_{c}_gen" for c in ic.HELDOUT_CLUSTERS]


# --------------------------------------------------------------------------- end to end


def test_sft_run_reports_per_cluster_scores_next_to_the_base(world, tmp_path):
    from harness.cli.main import app
    from harness.store.runs import Run
    from harness.training.runner import ensure_base_model

    tiny = ensure_base_model(world, "tiny")
    assert json.loads((tiny / "sft_summary.json").read_text())["steps"] == world.base_models["tiny"].recipe["max_steps"]
    args = [
        "run", "method=sft", f"data={NAME}", f"model={NAME}:tiny", f"output_dir={tmp_path}", "name=sft-instruct",
        "data.max_samples=64", "train.max_steps=3", "train.batch_size=8", "train.progress=false",
        "train.max_length=128", "train.max_prompt_length=96", "tracking.mode=disabled",
        f"eval.num_prompts={2 * (len(ic.CLUSTERS) + 1)}", "eval.kl_samples=0", "eval.max_new_tokens=8",
        "eval.lm_eval_limit=2", "eval.lc_bootstrap=10",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    ev = Run(tmp_path / "sft-instruct").summary()["eval"]
    clusters = {f"cluster/{c}" for c in ic.CLUSTERS}
    for key in ("gold_reward_by_group", "baseline_gold_reward_by_group"):
        groups = ev[key]
        assert clusters | {"seen", "heldout", "heldout_fewshot"} == set(groups), key
        assert all(0.0 <= v <= 1.0 for v in groups.values())
    assert set(world.lm_eval_tasks().default) <= set(ev["lm_eval"])
    # the CLI prints the per-group table: model next to base
    table = res.output[res.output.index("held-out gold reward by group"):]
    cells = {c[0]: c[1:] for c in ([x.strip() for x in line.split("│")[1:-1]] for line in table.splitlines()) if c}
    assert list(cells)[:3] == ["heldout", "heldout_fewshot", "seen"] and len(cells) == 3 + len(ic.CLUSTERS)
    for g in ("seen", "heldout", "heldout_fewshot", "cluster/sorting", "cluster/arithmetic"):
        model, base = ev["gold_reward_by_group"][g], ev["baseline_gold_reward_by_group"][g]
        assert cells[g] == [f"{model:.3f}", f"{base:.3f}", f"{model - base:+.3f}"], g
