"""Claims files of ``harness reproduce``: the schema is strict, every file in sweeps/claims/ loads, every
spec it names validates at every budget it defines, budgets edit specs as declared, derived data is
what it says.

    .venv/bin/pytest tests/test_reproduce_claims.py -q
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from harness.core.config import ConfigError
from harness.reproduce.claims import CLAIMS_DIR, ROOT, claims_files, find_paper, for_budget, load_claims
from harness.reproduce.plan import BudgetUnavailable, estimate, generated_raw, plan_experiment
from harness.reproduce.prepare import relabel_pairs
from harness.sweeps.spec import load_sweep

FILES = claims_files()

GOOD = {
    "paper": {"title": "A paper", "authors": "Someone", "arxiv": "0000.00000"},
    "experiments": {
        "main": {"spec": "sweeps/simpo-vs-dpo.yaml",
                 "budgets": {"quick": {"seeds": 2}, "full": {"hardware": "gpu", "model": "Qwen/Qwen2.5-0.5B-Instruct",
                                                             "metrics": {"gold_reward_mean": "rm_score_mean"},
                                                             "agreements": {"c1": {"direction": "at_least",
                                                                                   "threshold": -0.2}}}},
                 "unavailable": {"tiny": "because"}},
    },
    "claims": [{"id": "c1", "claim": "simpo beats dpo", "source": "Table 4", "paper_numbers": "+6.4",
                "experiment": "main",
                "statistic": {"kind": "difference", "metric": "gold_reward_mean", "a": {"arm": "simpo"},
                              "b": {"arm": "dpo"}},
                "agreement": {"direction": "greater", "threshold": 0.0}}],
}


def write(tmp_path: Path, raw: dict, name: str = "paper.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def edited(path: str, value) -> dict:
    raw = copy.deepcopy(GOOD)
    node = raw
    keys = path.split("/")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


_DELETE = object()


def test_derived_metrics_load(tmp_path):
    # a pipeline's per-round numbers, the gain over a run's own starting model, a trend placed at a metric
    raw = edited("claims/0/statistic/metric", "rounds/2/harmlessness")
    assert load_claims(write(tmp_path, raw)).claims[0].statistic.metric == "rounds/2/harmlessness"
    for m in ("gain/gold_reward_mean", "gain/gold_reward_by_group/heldout", "baseline_gold_reward_by_group/seen"):
        assert load_claims(write(tmp_path, edited("claims/0/statistic/metric", m))).claims[0].statistic.metric == m
    raw = edited("claims/0/statistic", {"kind": "trend", "metric": "gold_reward_mean", "a": {"arm": "simpo"},
                                        "over": "method.beta", "x_value": "total_params"})
    assert load_claims(write(tmp_path, raw)).claims[0].statistic.x_value == "total_params"
    raw["claims"][0]["statistic"]["x_value"] = "total_parms"
    with pytest.raises(ConfigError, match="unknown metric 'total_parms'"):
        load_claims(write(tmp_path, raw))


def test_a_good_file_loads(tmp_path):
    cf = load_claims(write(tmp_path, GOOD))
    assert cf.key == "paper" and cf.status == "active"
    c = cf.claims[0]
    assert c.statistic.a.arm == "simpo" and c.agreement.words() == "> 0"
    full = cf.experiment("main").budgets["full"]
    eff = for_budget(c, full)
    assert eff.statistic.metric == "rm_score_mean" and eff.agreement.words() == ">= -0.2"
    assert for_budget(c, cf.experiment("main").budgets["quick"]).statistic.metric == "gold_reward_mean"


@pytest.mark.parametrize("path, value, message", [
    ("bootstrp", {"resamples": 10}, "unknown key 'bootstrp' (did you mean 'bootstrap'?)"),
    ("claims/0/statistc", {}, "(did you mean 'statistic'?)"),
    ("claims/0/statistic/kind", "diference", "'diference' is not one of"),
    ("claims/0/statistic/kind", "slope", "'slope' is not one of 'difference', 'spread', 'trend', 'value', 'frontier'"),
    ("claims/0/statistic/metric", "gold_reward_maen", "unknown metric 'gold_reward_maen' (did you mean 'gold_reward_mean'?)"),
    ("claims/0/statistic/b", None, "a difference statistic needs 'b'"),
    ("claims/0/statistic/over", "method.beta", "'over' has no meaning for a difference statistic"),
    ("claims/0/statistic/x_value", "total_params", "'x_value' has no meaning for a difference statistic"),
    ("claims/0/statistic/metric", "gain/win_rate", "'win_rate' has no baseline_win_rate column to subtract"),
    ("claims/0/statistic/metric", "gain/gold_reward_maen", "unknown metric 'gold_reward_maen'"),
    ("claims/0/agreement/direction", "bigger", "'bigger' is not one of"),
    ("claims/0/agreement/threshold", "zero", "threshold: expected"),
    ("claims/0/agreement", {"direction": "within", "low": 0.2, "high": 0.1}, "low (0.2) is above high (0.1)"),
    ("claims/0/agreement", {"direction": "greater"}, "direction 'greater' needs a threshold"),
    ("claims/0/experiment", "mian", "unknown experiment 'mian' (did you mean 'main'?)"),
    ("claims/0/id", "has space", "use letters, digits"),
    ("experiments/main/budgets/quick/seeds", "two", "seeds: expected"),
    ("experiments/main/budgets/quick/steps", 0, "steps must be >= 1"),
    ("experiments/main/budgets/quick/hardware", "tpu", "'tpu' is not one of 'cpu', 'gpu'"),
    ("experiments/main/budgets/quik", {"seeds": 1}, "unknown budget 'quik' (did you mean 'quick'?)"),
    ("experiments/main/budgets/quick/sets", {}, "unknown key 'experiments.main.budgets.quick.sets' (did you mean 'set'?)"),
    ("experiments/main/budgets/full/agreements", {"c2": {"direction": "greater", "threshold": 0}},
     "no claim 'c2' uses experiment 'main'"),
    ("experiments/main/budgets/full/metrics", {"gold_reward_mean": "rm_scor_mean"}, "unknown metric 'rm_scor_mean'"),
    ("experiments/main/unavailable", {"quick": "why"}, "budget 'quick' is both defined and unavailable"),
    ("experiments/main/prepare", {"kind": "relabel", "world": "toy", "target": [["base"]]}, "'relabel' is not one of"),
    ("experiments/main/prepare", {"world": "toy", "flip_fraction": 0.6, "target": [["base"]]}, "flip_fraction"),
    ("status", "pending", "a pending paper says why"),
    ("paper/title", "", "paper.title and paper.authors are required"),
    ("claims", [], "an active paper needs at least one claim"),
])
def test_schema_errors_name_the_key(tmp_path, path, value, message):
    raw = edited(path, value)
    with pytest.raises(ConfigError) as e:
        load_claims(write(tmp_path, raw))
    assert message in str(e.value) and "paper.yaml" in str(e.value)


def test_duplicate_claim_ids_and_pending_files(tmp_path):
    raw = copy.deepcopy(GOOD)
    raw["claims"].append(copy.deepcopy(raw["claims"][0]))
    with pytest.raises(ConfigError, match="id 'c1' is used twice"):
        load_claims(write(tmp_path, raw))
    pending = {"paper": GOOD["paper"], "status": "pending", "reason": "the method is being built",
               "claims": [{"id": "later", "claim": "it works", "source": "Fig. 1"}]}
    cf = load_claims(write(tmp_path, pending, "later.yaml"))
    assert cf.status == "pending" and cf.active_claims() == []


def test_claims_are_checked_against_the_sweep(tmp_path):
    # arms, grid keys and equal budgets are checked once the sweep is loaded, before anything runs
    bad_arm = edited("claims/0/statistic/b", {"arm": "dop"})
    cf = load_claims(write(tmp_path, bad_arm))
    with pytest.raises(ConfigError, match=r"no arm 'dop' \(did you mean 'dpo'\?\)"):
        plan_experiment(cf, "main", "quick", tmp_path / "runs", write=False, check_runs=False)
    bad_at = edited("claims/0/statistic/a", {"arm": "simpo", "at": {"method.gama": 1.0}})
    cf = load_claims(write(tmp_path, bad_at))
    with pytest.raises(ConfigError, match="'method.gama' is not searched by arm 'simpo'"):
        plan_experiment(cf, "main", "quick", tmp_path / "runs", write=False, check_runs=False)
    unequal = edited("experiments/main/budgets/quick/set",
                     {"methods": {"simpo": {"search_space": {"method.beta": [2.0, 5.0, 10.0]}}}})
    cf = load_claims(write(tmp_path, unequal))
    with pytest.raises(ConfigError, match=r"unequal budgets \(simpo=6, dpo=4 trials\)"):
        plan_experiment(cf, "main", "quick", tmp_path / "runs", write=False, check_runs=False)
    cf = load_claims(write(tmp_path, GOOD))
    with pytest.raises(BudgetUnavailable, match="no 'tiny' budget: because"):
        plan_experiment(cf, "main", "tiny", tmp_path / "runs", write=False, check_runs=False)


def test_budgets_edit_the_spec_as_declared(tmp_path):
    raw = edited("experiments/main/budgets/quick", {
        "seeds": [3, 4], "steps": 7, "model": "toy:base",
        "set": {"base": {"eval": {"num_prompts": 5}}, "methods": {"dpo": {"search_space": {"train.lr": [1e-3, 2e-3]}}}},
        "overrides": ["base.train.batch_size=4"]})
    cf = load_claims(write(tmp_path, raw))
    g = generated_raw(cf, "main", "quick", tmp_path / "out")
    assert g["seeds"] == [3, 4] and g["output_dir"] == str(tmp_path / "out")
    assert g["base"]["train"]["max_steps"] == 7 and g["base"]["train"]["batch_size"] == 4
    assert g["base"]["model"] == {"name_or_path": "toy:base"} and g["base"]["data"] == {"source": "toy"}
    assert g["base"]["eval"]["num_prompts"] == 5 and g["base"]["eval"]["lm_eval_tasks"] == []  # merged, not replaced
    # a search-space key with dots stays one key; the arm's other keys are kept
    assert g["methods"]["dpo"]["search_space"] == {"method.beta": [0.1, 0.5], "train.lr": [1e-3, 2e-3]}
    sw = load_sweep(None, raw=g, check_runs=False)
    assert sw.seeds == [3, 4] and len(sw.arm("dpo").grid) == 4
    # a budget's steps cannot silently lose to an arm that searches train.max_steps
    raw = copy.deepcopy(GOOD)
    raw["experiments"]["main"]["spec"] = "sweeps/dpo-vs-ppo-frontier.yaml"
    raw["experiments"]["main"]["budgets"]["quick"] = {"steps": 5}
    raw["claims"][0]["statistic"] = {"kind": "value", "metric": "gold_reward_mean", "a": {"arm": "dpo"}}
    cf = load_claims(write(tmp_path, raw))
    with pytest.raises(ConfigError, match="arm 'dpo' searches train.max_steps"):
        generated_raw(cf, "main", "quick", tmp_path / "out")


def test_relabel_pairs_counts_and_flips_exactly():
    def gold(prompt, response):
        return float(len(response))

    rows = [{"prompt": "p", "chosen": "a" * (i % 5), "rejected": "b" * (4 - i % 5)} for i in range(100)]
    out, counts = relabel_pairs(rows, gold, 0.0, seed=0, max_rows=None)
    assert counts["ties_dropped"] == 20 and counts["rows"] == 80  # i % 5 == 2: equal lengths
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in out)
    noisy, counts = relabel_pairs(rows, gold, 0.25, seed=0, max_rows=None)
    wrong = sum(len(r["chosen"]) < len(r["rejected"]) for r in noisy)
    assert wrong == counts["flipped"] == 20
    again, _ = relabel_pairs(rows, gold, 0.25, seed=0, max_rows=None)
    assert again == noisy and relabel_pairs(rows, gold, 0.25, seed=1, max_rows=None)[0] != noisy
    assert relabel_pairs(rows, gold, 0.0, seed=0, max_rows=10)[1]["rows"] == 10


# --------------------------------------------------------------------------- the files in sweeps/claims


def test_the_claims_directory_has_every_paper():
    keys = {p.stem for p in FILES}
    active = {"dpo", "ipo", "cdpo", "lora", "prefix", "qlora", "orpo", "kto", "simpo", "christiano", "instructgpt",
              "oaif", "flan", "spin", "self-rewarding", "flan-scaling", "self-instruct", "alpaca", "cai"}
    pending: set[str] = set()
    assert active | pending <= keys
    for k in pending:
        cf = find_paper(k)
        assert cf.status == "pending" and cf.reason
    for k in active:
        assert find_paper(k).status == "active"
    assert CLAIMS_DIR == ROOT / "sweeps" / "claims"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_claims_file_loads_and_its_specs_validate(path, toy_world):
    cf = load_claims(path)
    for name, exp in cf.experiments.items():
        assert exp.spec_path.is_file(), exp.spec
        load_sweep(exp.spec_path)  # the spec as it is in sweeps/
        for budget in exp.budgets:
            # every run spec of the generated sweep resolved and checked, offline (hub ids are not fetched)
            p = plan_experiment(cf, name, budget, "runs/reproduce", write=False)
            assert p.sweep.arms
        if cf.status == "active":
            assert exp.budgets or exp.unavailable, f"{name}: no budget and no reason"
    for c in cf.active_claims():
        assert c.source and c.paper_numbers, f"{c.id}: cite the paper's figure/table and its numbers"


def test_cpu_estimate_adds_up_the_declared_runs(tmp_path):
    # dpo-vs-ppo-frontier at its quick budget: per arm 16 grid points (half at 40 steps, half at 120) x 2 seeds
    cf = find_paper("dpo")
    p = plan_experiment(cf, "frontier", "quick", tmp_path / "runs", write=False, check_runs=False)
    cal = {"imports_s": 10.0, "entries": {
        "dpo/frontier@quick": {"cold_s": 5.0},
        "dpo/frontier/dpo@quick": {"fixed_s": 1.0, "per_step_s": 0.01},
        "dpo/frontier/ppo@quick": {"fixed_s": 2.0, "per_step_s": 0.1}}}
    e = estimate(p, cal)
    dpo = 2 * 8 * ((1.0 + 0.01 * 40) + (1.0 + 0.01 * 120))
    ppo = 2 * 8 * ((2.0 + 0.1 * 40) + (2.0 + 0.1 * 120))
    assert e.runs == 64 and e.seconds == pytest.approx(10.0 + 5.0 + dpo + ppo) and not e.missing
    del cal["entries"]["dpo/frontier/ppo@quick"]
    e = estimate(p, cal)
    assert e.seconds is None and e.missing == ["ppo"] and e.runs == 64
