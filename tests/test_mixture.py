"""FLAN mixtures (harness.data.mixture, ``data=flan:<world>``): counts that honour the cap and the
weights exactly, template kinds, determinism and the content cache, the mixture a run saves
against the rows it trained on, held-out evaluation per cluster, and clear errors.

    .venv/bin/pytest tests/test_mixture.py -q
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from harness.core.config import ConfigError, load_spec
from harness.data import mixture as mx
from harness.training.runner import SpecError, check_spec
from harness.worlds import instruct_content as ic
from harness.worlds.instruct import InstructCatalog

WORLD = "toy-instruct"


def spec(*overrides: str, method: str = "sft"):
    return load_spec(None, [f"method={method}", f"data=flan:{WORLD}", *overrides])


def build(tmp_path, *overrides: str) -> mx.Mixture:
    s = spec(*overrides)
    return mx.build(InstructCatalog(), s.data, s.data.source, root=tmp_path / "mixtures")


def per_task(rows) -> Counter:
    return Counter(r["task"] for r in rows)


# --------------------------------------------------------------------------- counts


def test_apportion_is_exact_largest_remainder():
    assert mx.apportion(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the earlier entry
    assert mx.apportion(401, [1, 1, 1, 0.5, 0.5]) == [101, 100, 100, 50, 50]
    assert mx.apportion(7, [0, 1]) == [0, 7]
    assert sum(mx.apportion(1000, [0.3, 0.3, 0.4, 1e-9])) == 1000
    with pytest.raises(ValueError):
        mx.apportion(3, [0, 0])


def test_examples_proportional_mixing_gives_each_task_min_of_its_items_and_the_cap(tmp_path):
    m = build(tmp_path, "data.mixture.clusters=[sentiment,closed_book,transform]", "data.mixture.cap=100")
    rows = m.rows()
    # train items per task (the content's fixed split): the sampled tasks have far more than 100;
    # capital_qa 9, creature_colour 8, creature_home 8 and pluralise 54 have fewer
    expected = {"review_sentiment": 100, "emotion": 100, "capital_qa": 9, "creature_colour": 8, "creature_home": 8,
                "reverse_words": 100, "uppercase": 100, "pluralise": 54}
    assert per_task(rows) == expected
    # each task's rows are distinct training items (no repeats under examples-proportional mixing)
    for task, n in expected.items():
        uids = [r["uid"] for r in rows if r["task"] == task]
        assert len(set(uids)) == n
    assert all(ic.split_of(r["task"], json.loads(r["uid"].split(":", 1)[1])) == "train" for r in rows)
    info = m.info
    assert info["mixing"] == "examples-proportional" and info["rows"] == len(rows) == sum(expected.values())
    assert {t["task"]: t["rows"] for t in info["tasks"]} == expected
    assert {t["task"]: t["by_template"] for t in info["tasks"]} == {t: {"zs": n} for t, n in expected.items()}
    assert info["by_cluster"] == {"sentiment": 200, "closed_book": 25, "transform": 254}
    assert all(t["rate"] == pytest.approx(t["rows"] / info["rows"]) and t["repeats"] == 0 for t in info["tasks"])


def test_a_size_shares_rows_in_the_capped_proportions(tmp_path):
    m = build(tmp_path, "data.mixture.clusters=[closed_book,word_relations]", "data.mixture.cap=20",
              "data.mixture.size=100")
    # capped sizes 9, 8, 8, 20 (antonym: 26 items), 19 (synonym) = 64; 100 rows in those proportions:
    # quotas 14.06, 12.5, 12.5, 31.25, 29.69 -> floors 14, 12, 12, 31, 29 = 98; the two largest
    # remainders (0.69 synonym, 0.5 creature_colour) get one more
    assert per_task(m.rows()) == {"capital_qa": 14, "creature_colour": 13, "creature_home": 12, "antonym": 31,
                                  "synonym": 30}
    tasks = {t["task"]: t for t in m.info["tasks"]}
    assert tasks["capital_qa"]["repeats"] == 14 - 9 and tasks["antonym"]["repeats"] == 31 - 26


def test_explicit_weights_per_cluster_and_per_task_are_honoured_exactly(tmp_path):
    m = build(tmp_path, "data.mixture.clusters=[sentiment,topic,arithmetic]",
              "data.mixture.weights={sentiment: 2, topic: 1, arithmetic: 1}", "data.mixture.size=401")
    # a cluster's weight is shared by its tasks: rates 1, 1 (sentiment), 1 (topic), 0.5, 0.5 (arithmetic);
    # 401 rows -> quotas 100.25 x 3, 50.125 x 2 -> 100, 100, 100, 50, 50 and the one left to the first
    assert per_task(m.rows()) == {"review_sentiment": 101, "emotion": 100, "topic": 100, "add": 50, "subtract": 50}
    assert m.info["mixing"] == "weights"
    m = build(tmp_path, "data.mixture.clusters=[sentiment]", "data.mixture.weights={review_sentiment: 3, emotion: 1}",
              "data.mixture.size=100")
    assert per_task(m.rows()) == {"review_sentiment": 75, "emotion": 25}
    # more rows than a task has items: its items repeat, and mixture.json says how often
    m = build(tmp_path, "data.mixture.clusters=[closed_book]", "data.mixture.weights={closed_book: 1}",
              "data.mixture.size=50")
    assert per_task(m.rows()) == {"capital_qa": 17, "creature_colour": 17, "creature_home": 16}
    caps = [r for r in m.rows() if r["task"] == "capital_qa"]
    assert len({r["uid"] for r in caps}) == 9
    assert {t["task"]: t["repeats"] for t in m.info["tasks"]} == {"capital_qa": 8, "creature_colour": 9,
                                                                  "creature_home": 8}


def test_template_kinds_are_split_evenly_and_rendered_as_asked(tmp_path):
    m = build(tmp_path, "data.mixture.clusters=[comparison]", "data.mixture.cap=40", "data.templates=zs+fs+opt+cot",
              "data.mixture.fs_k=2")
    rows = m.rows()
    for task in ("larger_number", "longer_word"):
        assert Counter(r["template_kind"] for r in rows if r["task"] == task) == {"zs": 10, "fs": 10, "opt": 10,
                                                                                  "cot": 10}
    for r in rows:
        item = ic.item_from_uid(r["uid"])
        assert r["template"].split(".")[0] == r["task"] and ic.TASKS[r["task"]].templates_of(r["template_kind"])
        if r["template_kind"] == "cot":
            assert r["completion"] == f"{item.rationale} So the answer is {item.answer}."
        else:
            assert r["completion"] == item.answer
        if r["template_kind"] == "opt":
            assert ", ".join(item.options) in r["prompt"]
        if r["template_kind"] == "fs":
            assert r["n_shots"] == 2 and r["prompt"].count("\n") >= 2 and r["prompt"].endswith(
                ic.render(item, next(t for t in ic.TASKS[r["task"]].templates if t.id == r["template"]))[0]
                .splitlines()[-1])
        else:
            assert r["n_shots"] == 0


def test_a_kind_a_task_lacks_goes_to_its_other_kinds_or_drops_the_task(tmp_path):
    m = build(tmp_path, "data.mixture.clusters=[sentiment]", "data.mixture.cap=30", "data.templates=zs+cot")
    assert m.info["by_template"] == {"zs": 60} and not m.info["dropped_tasks"]  # sentiment has no rationales
    m = build(tmp_path, "data.mixture.clusters=[sentiment,transform]", "data.mixture.cap=30", "data.templates=opt")
    assert m.info["dropped_tasks"] == ["reverse_words", "uppercase", "pluralise"]  # transform has no options
    assert set(per_task(m.rows())) == {"review_sentiment", "emotion"}


def test_the_build_is_deterministic_and_cached_by_content(tmp_path, monkeypatch):
    args = ("data.mixture.clusters=3", "data.mixture.cap=50", "data.templates=zs+fs")
    a = build(tmp_path / "a", *args)
    b = build(tmp_path / "b", *args)
    assert a.path.read_bytes() == b.path.read_bytes() and a.info == b.info
    # the same content key is read back, never rebuilt
    monkeypatch.setattr(InstructCatalog, "render", lambda *x, **k: pytest.fail("rebuilt a cached mixture"))
    again = build(tmp_path / "a", *args)
    assert again.path == a.path and again.info["key"] == a.info["key"]
    monkeypatch.undo()
    other = build(tmp_path / "a", *args, "data.mixture.seed=1")
    assert other.info["key"] != a.info["key"] and other.info["by_template"] == a.info["by_template"]
    assert other.path.read_bytes() != a.path.read_bytes()


def test_clusters_by_number_follow_the_documented_order(tmp_path):
    cat = InstructCatalog()
    assert cat.train_clusters == ("sentiment", "topic", "extraction", "transform", "arithmetic", "comparison",
                                  "counting", "format", "closed_book", "word_relations", "generation", "chat")
    s = spec("data.mixture.clusters=4")
    assert mx.resolve(cat, s.data).clusters == cat.train_clusters[:4]
    assert mx.resolve(cat, spec().data).clusters == cat.train_clusters  # unset: every training cluster
    assert not set(cat.heldout_clusters) & set(mx.resolve(cat, spec().data).clusters)


# --------------------------------------------------------------------------- errors before any model loads


@pytest.mark.parametrize("overrides, method, message", [
    (["data.mixture.clusters=[sentimnt]"], "sft", r"unknown cluster 'sentimnt' \(did you mean 'sentiment'\?\)"),
    (["data.mixture.clusters=[sorting]"], "sft", r"'sorting' is held out for zero-shot evaluation"),
    (["data.mixture.clusters=13"], "sft", r"data.mixture.clusters=13: the catalog has 12 training clusters"),
    (["data.mixture.clusters=[topic,topic]"], "sft", r"topic listed twice"),
    (["data.templates=zs+cots"], "sft", r"unknown template kind 'cots' \(did you mean 'cot'\?\); the catalog has zs"),
    (["data.templates=zs+"], "sft", r"give template kinds joined by '\+'"),
    (["data.templates=cot", "data.mixture.clusters=[sentiment]"], "sft",
     r"no task of the chosen clusters \(sentiment\) has such templates; training clusters that do: arithmetic, "
     r"comparison, counting"),
    (["data.mixture.clusters=[sentiment,topic]", "data.mixture.weights={sentiment: 1}"], "sft",
     r"no weight for task\(s\) topic"),
    (["data.mixture.weights={sentimen: 1}"], "sft", r"unknown cluster or task 'sentimen' \(did you mean"),
    (["data.mixture.clusters=[topic]", "data.mixture.weights={topic: 1, arithmetic: 1}"], "sft",
     r"cluster 'arithmetic' has a weight but is not in data.mixture.clusters"),
    (["data.mixture.weights={topic: 0}", "data.mixture.clusters=[topic]"], "sft", r"every weight is 0"),
    ([], "dpo", r"a FLAN mixture is SFT data .* method 'dpo' trains on paired data"),
    ([], "spin", r"method 'spin' is a pipeline"),
    (["data.eval_split=test"], "sft", r"leave data.split, data.eval_split and data.format unset"),
])
def test_bad_mixtures_fail_before_any_model_loads_naming_the_key(overrides, method, message):
    with pytest.raises(SpecError, match=message):
        check_spec(spec(*overrides, method=method))


def test_bad_sources_and_stray_settings_are_errors():
    with pytest.raises(SpecError, match=r"world 'toy' defines no task catalog .*worlds that can: toy-instruct"):
        check_spec(load_spec(None, ["method=sft", "data=flan:toy"]))
    with pytest.raises(SpecError, match=r"'nowhere' is not a built-in world"):
        check_spec(load_spec(None, ["method=sft", "data=flan:nowhere", "model=toy:tiny"]))
    with pytest.raises(mx.MixtureError, match=r"name the world after 'flan:'"):
        mx.parse_source("flan: ")
    with pytest.raises(SpecError, match=r"data.mixture.clusters, data.templates: set for data='toy-instruct', but "
                                        r"only a FLAN mixture"):
        check_spec(load_spec(None, ["method=sft", f"data={WORLD}", "data.mixture.clusters=3", "data.templates=zs+fs"]))
    with pytest.raises(ConfigError, match=r"data.mixture.weights.topic must be a finite number >= 0"):
        spec("data.mixture.weights={topic: -1}")
    with pytest.raises(ConfigError, match=r"data.mixture.cap must be >= 1"):
        spec("data.mixture.cap=0")


def test_cli_names_the_problem_and_exits_2(tmp_path):
    from harness.cli.main import app

    res = CliRunner().invoke(app, ["run", "method=sft", "data=flan:toy", f"output_dir={tmp_path}"])
    assert res.exit_code == 2 and "defines no task catalog" in res.output
    assert not list(tmp_path.iterdir())  # nothing was written


# --------------------------------------------------------------------------- a real run


def test_a_run_saves_the_mixture_it_trained_on_and_reports_heldout_clusters(tmp_path):
    """Trains for real on a 2-cluster mixture: mixture.json's counts are the mixture file's rows,
    split into the rows trained on and those held out for eval loss; evaluation reports the
    held-out clusters zero- and few-shot (gold, per cluster) and through lm-eval per cluster."""
    from harness.cli.main import app
    from harness.store.runs import Run

    args = ["run", "method=sft", f"data=flan:{WORLD}", f"model={WORLD}:tiny", f"output_dir={tmp_path}", "name=flan",
            "data.mixture.clusters=2", "data.mixture.cap=40", "data.templates=zs+fs", "data.eval_fraction=0.1",
            "train.max_steps=3", "train.batch_size=8", "train.max_length=128", "train.max_prompt_length=96",
            "train.progress=false", "tracking.mode=disabled", f"eval.num_prompts={2 * (len(ic.CLUSTERS) + 1)}",
            "eval.kl_samples=0", "eval.max_new_tokens=8", "eval.lc_bootstrap=0", "eval.lm_eval_limit=2",
            "eval.lm_eval_tasks=[toyinstr_heldout_gen,toyinstr_heldout_mc]"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = Run(tmp_path / "flan")
    saved = json.loads((run.path / "mixture.json").read_text())
    rows = [json.loads(x) for x in open(saved["file"])]
    counted = mx.counts_of(rows)
    assert saved["clusters"] == ["sentiment", "topic"] and saved["templates"] == ["zs", "fs"]
    assert {t["task"]: t["by_template"] for t in saved["tasks"]} == counted
    merged: dict[str, Counter] = {}
    for part in (saved["train_rows"], saved["eval_loss_rows"]):
        for task, kinds in part.items():
            merged.setdefault(task, Counter()).update(kinds)
    assert {t: dict(c) for t, c in merged.items()} == counted
    s = run.summary()
    assert s["n_train_examples"] == saved["n_train_rows"] == sum(sum(k.values()) for k in saved["train_rows"].values())
    assert s["n_eval_examples"] == saved["n_eval_loss_rows"] == int(len(rows) * 0.1)
    assert s["mixture"]["rows"] == len(rows) and s["mixture"]["clusters"] == ["sentiment", "topic"]
    ev = s["eval"]
    for key in ("gold_reward_by_group", "baseline_gold_reward_by_group"):
        groups = ev[key]
        assert {"heldout", "heldout_fewshot", "seen"} <= set(groups)
        assert {f"cluster/{c}" for c in ic.HELDOUT_CLUSTERS} <= set(groups)
    lm = ev["lm_eval"]
    assert {f"toyinstr_{c}_gen" for c in ic.HELDOUT_CLUSTERS} <= set(lm)
    assert {"toyinstr_entailment_mc", "toyinstr_categorize_mc", "toyinstr_heldout_gen", "toyinstr_heldout_mc"} <= set(lm)
    assert all(0.0 <= lm[f"toyinstr_{c}_gen"]["metrics"]["exact_match"] <= 1.0 for c in ic.HELDOUT_CLUSTERS)
