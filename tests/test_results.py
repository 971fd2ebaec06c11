"""The results table: one row per run of a store, whatever state each run is in."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from report_store import GROUPS, JUDGE, JUDGE_ID, PLAN, Store, make_store

from harness.reporting.results import BASE_COLUMNS, by_group_columns, group_scores, results_table
from harness.store.runs import Run, atomic_write_json


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store(tmp_path_factory.mktemp("runs") / "quickstart", methods=("dpo", "simpo", "kto"),
                      seeds=(0, 1), study=None, groups=GROUPS)


@pytest.fixture(scope="module")
def table(store: Store) -> pd.DataFrame:
    return results_table(store.root)


def test_one_row_per_run_with_status(store: Store, table: pd.DataFrame) -> None:
    assert sorted(table["relpath"]) == sorted(store.runs)
    by_run = table.set_index("relpath")
    for name, (method, _cfg, seed, status) in store.runs.items():
        assert by_run.loc[name, "status"] == status
        assert by_run.loc[name, "method"] == method
        assert by_run.loc[name, "seed"] == seed
        assert by_run.loc[name, "model"] == "toy" and by_run.loc[name, "data"] == "toy"
        assert by_run.loc[name, "peft"] == "none"
        assert by_run.loc[name, "sweep_name"] == "quickstart" and by_run.loc[name, "arm"] == method
        assert by_run.loc[name, "run"] == Path(name).name and by_run.loc[name, "trial_number"] >= 0
    assert set(BASE_COLUMNS) <= set(table.columns)


def test_spec_fields_flattened_and_config_ids(store: Store, table: pd.DataFrame) -> None:
    done = table[table["status"] == "completed"]
    for _, row in done.iterrows():
        method, cfg, _seed, _ = store.runs[row["relpath"]]
        key, values, _ = PLAN[method]
        assert row[f"method.{key}"] == pytest.approx(values[cfg])
        assert row["train.lr"] == pytest.approx(1e-4) and row["train.max_steps"] == 20
        assert row["method.name"] == method
    # seeds of one configuration share an id; configurations differ
    cfg_index = done["relpath"].map(lambda n: store.runs[n][1])
    ids = done.assign(cfg=cfg_index).groupby(["method", "cfg"])["config_id"].nunique()
    assert (ids == 1).all() and len(ids) == 4
    assert done.groupby("method")["config_id"].nunique().eq(2).all()
    assert table["config_id"].nunique() == len({(m, c) for m, c, _, _ in store.runs.values()})


def test_eval_and_cost_columns(store: Store, table: pd.DataFrame) -> None:
    by_run = table.set_index("relpath")
    assert set(table.attrs["eval_columns"]) >= {"win_rate", "length_controlled_winrate", "gold_reward_mean",
                                                "kl_mean", "lm_eval/toy_mc/metrics/acc", "judge/backend",
                                                "judges/reward_model/win_rate"}
    for name, ev in store.values.items():
        row = by_run.loc[name]
        for col in ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error",
                    "gold_reward_mean", "kl_mean", "avg_length", "n_total"):
            assert row[col] == pytest.approx(ev[col]), col
        assert row["lm_eval/toy_mc/metrics/acc"] == pytest.approx(ev["lm_eval"]["toy_mc"]["metrics"]["acc"])
        assert row["lm_eval/toy_gen/n_shot"] == 0
        assert row["judges/reward_model/win_rate"] == pytest.approx(ev["judges"]["reward_model"]["win_rate"])
        assert row["judge/backend"] == "scorer" and row["judge/model"] == JUDGE["model"]
        assert row["judge"] == JUDGE_ID
        assert row["wall_time_s"] > 0 and row["tokens_per_s"] > 0 and row["gpu_hours"] == 0
        assert row["trainable_params"] == 3_700_000 and row["peak_memory_mb"] >= 350
        assert row["final_metrics/loss"] == pytest.approx(0.15)
        assert pd.isna(row["sweep_storage"])  # no study in this store
        # the summary's own "data"/"method" keys do not overwrite the spec's
        assert row["summary/data"] == "toy:paired"
        assert row["last_step"] == 20 and row["last/eval/loss"] > 0
        assert isinstance(row["env/packages/torch"], str) and row["env/python"]


def test_per_group_means_are_columns(store: Store, table: pd.DataFrame) -> None:
    """``gold_reward_by_group`` lands as one column per group, named ``gold_reward_by_group/<group>``
    even when the group name holds ``/``; by_group_columns maps the columns back to group names."""
    assert group_scores(table) == ["gold_reward"]
    cols = by_group_columns(table)
    assert cols == {g: f"gold_reward_by_group/{g}" for g in sorted(GROUPS)}
    base = by_group_columns(table, "baseline_gold_reward")
    assert list(base) == sorted(GROUPS)
    assert set(cols.values()) | set(base.values()) <= set(table.attrs["eval_columns"])
    by_run = table.set_index("relpath")
    for name, ev in store.values.items():
        for g in GROUPS:
            assert by_run.loc[name, cols[g]] == pytest.approx(ev["gold_reward_by_group"][g])
            assert by_run.loc[name, base[g]] == pytest.approx(ev["baseline_gold_reward_by_group"][g])
        assert by_run.loc[name, "baseline"] == "toy" and by_run.loc[name, "kl_stderr"] == pytest.approx(ev["kl_stderr"])
    unfinished = table[table["status"] != "completed"]
    assert unfinished[list(cols.values())].isna().all().all()


def test_partial_runs_have_status_and_nan(store: Store, table: pd.DataFrame) -> None:
    by_run = table.set_index("relpath")
    failed = [n for n, v in store.runs.items() if v[3] == "failed"]
    running = [n for n, v in store.runs.items() if v[3] == "running"]
    pruned = [n for n, v in store.runs.items() if v[3] == "pruned"]
    assert failed and running and pruned
    for name in failed + running + pruned:
        row = by_run.loc[name]
        for col in ("win_rate", "gold_reward_mean", "wall_time_s", "gpu_hours", "judge"):
            assert pd.isna(row[col]), (name, col)
        assert row["last_step"] > 0
        # placed in their sweep by the spec's tags although they wrote no summary
        assert row["sweep_name"] == "quickstart" and row["arm"] == store.runs[name][0]
        assert row["trial_number"] >= 0
    assert "OutOfMemoryError" in by_run.loc[failed[0], "error"]
    assert by_run.loc[pruned[0], "error"].startswith("trial pruned")
    assert by_run.loc[running[0], "last_step"] in (6, 7)  # the torn last line is skipped


def _bare_run(root: Path, name: str) -> Run:
    run = Run.create(root, name, prefix="x")
    run.write_config({"method": {"name": "dpo", "beta": 0.1}, "seed": 0, "sweep": "adhoc"})
    return run


def test_broken_and_missing_files_never_crash(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _bare_run(root, "no-status")  # killed before its first status write
    bad = _bare_run(root, "bad-summary")
    bad.set_status("completed")
    (bad.path / "summary.json").write_text('{"wall_time_s": 3.0, "eval": {"win_')  # torn by hand
    weird = Run.create(root, "weird-config", prefix="x")
    (weird.path / "config.yaml").write_text("- just\n- a list\n")
    gpu = _bare_run(root, "gpu-run")
    gpu.set_status("completed")
    gpu.write_summary({"wall_time_s": 7200.0, "sweep_name": "from-summary", "trial_number": 4,
                       "eval": {"judge": "gpt-4o-mini", "win_rate": 55.0}})
    atomic_write_json(gpu.path / "env.json", {"hardware": {"cuda": True, "gpus": ["H100", "H100"]}})
    ckpt = gpu.path / "checkpoints" / "step-1"  # config files inside checkpoints are not runs
    ckpt.mkdir(parents=True)
    (ckpt / "config.yaml").write_text("method: dpo\n")
    mirror = gpu.path / "wandb" / "run-20260101_000000-abc" / "files"  # what W&B writes online
    mirror.mkdir(parents=True)
    (mirror / "config.yaml").write_text("method:\n  value: {name: dpo}\n")

    df = results_table(root).set_index("run")
    assert sorted(df.index) == ["bad-summary", "gpu-run", "no-status", "weird-config"]
    assert df.loc["no-status", "status"] == "unknown" and df.loc["no-status", "sweep_name"] == "adhoc"
    assert df.loc["bad-summary", "status"] == "completed"
    assert "summary: JSONDecodeError" in df.loc["bad-summary", "error"]
    assert pd.isna(df.loc["bad-summary", "wall_time_s"])
    assert df.loc["weird-config", "status"] == "unknown" and pd.isna(df.loc["weird-config", "method"])
    row = df.loc["gpu-run"]
    assert row["gpu_hours"] == pytest.approx(4.0)  # 2 h on 2 GPUs, from env.json when the summary has none
    assert row["sweep_name"] == "from-summary" and row["trial_number"] == 4
    assert row["judge"] == "gpt-4o-mini" and row["win_rate"] == 55.0


def test_empty_and_missing_store(tmp_path: Path) -> None:
    df = results_table(tmp_path)
    assert df.empty and set(BASE_COLUMNS) <= set(df.columns)
    with pytest.raises(FileNotFoundError, match="nope"):
        results_table(tmp_path / "nope")


def test_single_run_directory_is_a_store(store: Store) -> None:
    name = next(iter(store.values))
    df = results_table(store.root / name)
    assert list(df["run"]) == [Path(name).name] and not math.isnan(df["win_rate"].iloc[0])
