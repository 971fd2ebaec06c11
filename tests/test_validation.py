"""Never silently wrong (issue 14): every bad setting, bad data row or unusable source fails
before any model loads, with one message naming the key, file or row, and exit code 2.

    pytest -q tests/test_validation.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.core.config import ConfigError, load_spec
from harness.core.contract import DataKind

PAIR = {"prompt": "How was the film?", "chosen": "a lovely film .", "rejected": "a dull film ."}


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> str:
    """Rows as JSON lines; ``raw_lines`` puts literal text at those 1-based lines instead."""
    lines = [json.dumps(r) for r in rows]
    for n, text in sorted((raw_lines or {}).items()):
        lines.insert(n - 1, text)
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Tell me about film {i}.", "chosen": f"film {i} is lovely .", "rejected": f"film {i} is dull ."}
            for i in range(n)]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Records every model load the runner starts; validation errors must come before any."""
    from harness.training import runner

    calls: list[str] = []
    real = runner.load_model

    def spy(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(runner, "load_model", spy)
    return calls


# --------------------------------------------------------------------------- ranges when the spec is parsed


OUT_OF_RANGE = [
    ("train.batch_size=-1", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.max_steps=0", "train.max_steps"),
    ("train.max_steps=-3", "train.max_steps"),
    ("train.epochs=0", "train.epochs"),
    ("train.log_every=0", "train.log_every"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.save_every=0", "train.save_every"),
    ("train.lr=-1e-4", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.lr=.nan", "train.lr"),
    ("train.lr=1e999", "train.lr"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.weight_decay=.nan", "train.weight_decay"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("train.warmup_ratio=-0.1", "train.warmup_ratio"),
    ("train.max_grad_norm=-1", "train.max_grad_norm"),
    ("train.max_grad_norm=.inf", "train.max_grad_norm"),
    ("train.max_length=0", "train.max_length"),
    ("train.max_length=1000000000", "train.max_length"),
    ("train.max_prompt_length=0", "train.max_prompt_length"),
    ("train.max_prompt_length=200", "train.max_prompt_length"),
    ("data.eval_fraction=1.0", "data.eval_fraction"),
    ("data.eval_fraction=-0.1", "data.eval_fraction"),
    ("data.max_samples=0", "data.max_samples"),
    ("data.desirable_fraction=0", "data.desirable_fraction"),
    ("data.desirable_fraction=1", "data.desirable_fraction"),
    ("data.toy_size=0", "data.toy_size"),
    ("eval.top_p=0", "eval.top_p"),
    ("eval.num_prompts=0", "eval.num_prompts"),
    ("eval.temperature=-1", "eval.temperature"),
    ("eval.kl_samples=-1", "eval.kl_samples"),
    ("seed=-1", "seed"),
    ("seed=1099511627776", "seed"),
    ("peft.lora.dropout=1.0", "peft.lora.dropout"),
    ("name=a/b", "name"),
]


@pytest.mark.parametrize("override,key", OUT_OF_RANGE)
def test_out_of_range_settings_fail_when_the_spec_is_parsed(override, key):
    with pytest.raises(ConfigError) as e:
        load_spec(None, ["method=dpo", override])
    msg = str(e.value)
    assert msg.startswith(key), msg  # the full dotted key, first
    assert "\n" not in msg


METHOD_OUT_OF_RANGE = [
    ("simpo", "method.gamma=-1", "method.gamma"),
    ("simpo", "method.label_smoothing=0.5", "method.label_smoothing"),
    ("kto", "method.desirable_weight=0", "method.desirable_weight"),
    ("kto", "method.undesirable_weight=-1", "method.undesirable_weight"),
    ("ipo", "method.beta=0", "method.beta"),
    ("cdpo", "method.label_smoothing=0.5", "method.label_smoothing"),
    ("dpo", "method.beta=.nan", "method.beta"),
    ("orpo", "method.beta=.inf", "method.beta"),
    ("cpo", "method.nll_weight=-1", "method.nll_weight"),
    ("reward", "method.margin=-1", "method.margin"),
]


@pytest.mark.parametrize("method,override,key", METHOD_OUT_OF_RANGE)
def test_method_hyperparameters_are_range_checked(method, override, key):
    with pytest.raises(ConfigError) as e:
        load_spec(None, [f"method={method}", override])
    assert str(e.value).startswith(key), str(e.value)


def test_range_edges_are_accepted():
    spec = load_spec(None, ["method=simpo", "train.warmup_ratio=1", "train.max_grad_norm=0", "data.eval_fraction=0",
                            "method.gamma=0", "method.label_smoothing=0.49", "eval.temperature=0", "seed=4294967295"])
    assert spec.train.warmup_ratio == 1.0 and spec.train.max_grad_norm == 0.0 and spec.method.hp.gamma == 0.0


def test_every_numeric_field_declares_a_range():
    """A range is declared next to each number (and so shown by ``harness spec``): none is forgotten."""
    import dataclasses
    import typing

    from harness.core.config import RunSpec, field_range
    from harness.core.contract import METHODS, load_methods

    load_methods()

    def numeric(tp) -> bool:
        args = typing.get_args(tp) or (tp,)
        return any(a in (int, float) for a in args)

    missing = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
            elif numeric(tp) and field_range(f) is None:
                missing.append(prefix + f.name)

    walk(RunSpec, "")
    for name in METHODS.names():
        walk(METHODS.get(name).config_cls, f"method[{name}].")
    assert not missing, f"numeric fields without a declared range: {missing}"


# --------------------------------------------------------------------------- zero work, lengths: before the model loads


def test_zero_step_runs_never_complete(run_spec, no_model_loads):
    from harness.training.runner import execute

    for override in ("train.max_steps=0", "train.epochs=0", "train.batch_size=-1"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            execute(run_spec("method=dpo", override))
    assert no_model_loads == []


def test_too_few_examples_for_one_step_fails_before_the_model_loads(run_spec, tmp_path, no_model_loads):
    from harness.training.runner import SpecError, check_spec, execute

    # knowable from the spec alone: 6 samples cannot fill a step of 8
    with pytest.raises(SpecError, match=r"zero optimizer steps.*data.max_samples=6.*train.batch_size=8"):
        check_spec(run_spec("method=dpo", "data.max_samples=6", "train.batch_size=8"))
    # known once the data is read: 3 pairs in the file, 4 per step
    data = write_jsonl(tmp_path / "three.jsonl", pairs(3))
    spec = run_spec("method=dpo", f"data={data}", "train.batch_size=4", "data.eval_fraction=0", "name=few")
    with pytest.raises(SpecError, match=r"zero optimizer steps: the training data has 3 examples"):
        execute(spec)
    assert no_model_loads == []
    status = json.loads((Path(spec.output_dir) / "few" / "status.json").read_text())
    assert status["status"] == "failed" and "zero optimizer steps" in status["error"]


def test_periodic_eval_with_nothing_held_out_is_an_error(run_spec, no_model_loads):
    from harness.training.runner import SpecError, execute

    with pytest.raises(SpecError, match="train.eval_every=2: .*no examples"):
        execute(run_spec("method=dpo", "data.max_samples=16", "data.eval_fraction=0.01", "train.eval_every=2"))
    assert no_model_loads == []


def test_max_length_beyond_the_models_positions_fails_before_training(run_spec, no_model_loads):
    from harness.training.runner import SpecError, execute

    spec = run_spec("method=dpo", "train.max_length=4096", "train.max_prompt_length=32")
    with pytest.raises(SpecError, match=r"train.max_length=4096 exceeds the 256 positions of model.name_or_path 'toy:tiny'"):
        execute(spec)
    assert no_model_loads == []


# --------------------------------------------------------------------------- bad data


def test_every_bad_row_is_listed_in_one_message(tmp_path):
    from harness.data.load import DataError, load_records

    rows = pairs(30)
    for i in range(3, 28):  # rows 4..28 have no rejected reply
        rows[i]["rejected"] = None
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records(path, "train", DataKind.PAIRED)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}: row 4: column 'rejected': missing (null)"
    assert [ln.split(": ")[1] for ln in lines[:20]] == [f"row {n}" for n in range(4, 24)]
    assert lines[20] == "... and 5 more (25 in all)"
    assert e.value.row == 4 and e.value.column == "rejected"


def test_every_broken_json_line_is_listed(tmp_path):
    from harness.data.load import DataError, load_records

    path = write_jsonl(tmp_path / "prefs.jsonl", pairs(6), raw_lines={2: '{"prompt": "x", ', 5: "[1, 2]", 7: "{oops}"})
    with pytest.raises(DataError) as e:
        load_records(path, "train", DataKind.PAIRED, hint_skip="data.skip_bad_rows=true skips them")
    msg = str(e.value)
    for line in (2, 5, 7):
        assert f"{path}: line {line}: " in msg, msg
    assert "got list" in msg and msg.splitlines()[-1] == "data.skip_bad_rows=true skips them"


def test_skip_bad_rows_skips_broken_json_lines_and_lists_every_row(tmp_path):
    from harness.data.load import load_records

    rows = pairs(6)
    rows[4]["chosen"] = 7  # the 5th object, the 7th non-blank line once two broken lines are in
    path = write_jsonl(tmp_path / "prefs.jsonl", rows, raw_lines={2: '{"prompt": ', 4: "not json at all"})
    got = load_records(path, "train", DataKind.PAIRED, skip_bad_rows=True)
    assert [r["chosen"] for r in got.records] == [rows[i]["chosen"] for i in (0, 1, 2, 3, 5)]
    assert got.n_skipped == 3
    lines = [s for s in got.skipped if "line" in s]
    assert [(s["source"], s["line"]) for s in lines] == [(path, 2), (path, 4)]
    assert all(s["reason"].startswith("invalid JSON") for s in lines)
    (row,) = [s for s in got.skipped if "row" in s]
    # numbered as in the original file: the 7th row (blank lines are not rows, broken lines are)
    assert row == {"source": path, "row": 7, "column": "chosen",
                   "reason": "expected a string or a list of chat messages, got int"}


def test_csv_rows_with_extra_fields_are_listed_and_skippable(tmp_path):
    from harness.data.load import DataError, load_records

    p = tmp_path / "sft.csv"
    p.write_text("prompt,completion\na,b\nc,d,e\nf,g\nh,i,j,k\n")
    with pytest.raises(DataError) as e:
        load_records(str(p), "train", DataKind.SFT)
    assert f"{p}: line 3: 3 fields, but the header has 2" in str(e.value)
    assert f"{p}: line 5: 4 fields, but the header has 2" in str(e.value)
    got = load_records(str(p), "train", DataKind.SFT, skip_bad_rows=True)
    assert [r["completion"] for r in got.records] == ["b", "g"]
    assert [s["line"] for s in got.skipped] == [3, 5]


def test_skipped_rows_are_written_to_the_run_directory(run_spec, tmp_path):
    from harness.training.runner import execute

    rows = pairs(40)
    rows[10]["rejected"] = rows[10]["chosen"]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows, raw_lines={5: "{broken"})
    run = execute(run_spec("method=dpo", f"data={path}", "data.skip_bad_rows=true", "train.max_steps=1"))
    skipped = [json.loads(line) for line in (run.path / "skipped_rows.jsonl").read_text().splitlines()]
    assert skipped == [
        {"source": path, "line": 5, "reason": "invalid JSON: Expecting property name enclosed in double quotes (column 2)"},
        {"source": path, "row": 12, "column": "chosen",
         "reason": "identical to 'rejected' (a pair needs two different responses)"},
    ]
    assert run.summary()["n_skipped_rows"] == 2


def test_unknown_hub_dataset_names_the_id_and_that_the_process_is_offline(tmp_path, monkeypatch):
    from harness.data.load import DataError, load_records

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_records("no-such-org/no-such-data", "train", DataKind.PAIRED)
    msg = str(e.value)
    assert msg.startswith("no-such-org/no-such-data[train]: could not load: 'no-such-org/no-such-data' is not a local")
    assert "this process is offline (" in msg and "HF_DATASETS_OFFLINE=1" in msg
    assert "\n" not in msg


def test_unknown_hub_model_fails_before_training_naming_the_id(run_spec, tmp_path, no_model_loads, monkeypatch):
    from harness.training.runner import SpecError, execute

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(20))
    spec = run_spec("method=dpo", "model=no-such-org/no-such-model", f"data={data}")
    with pytest.raises(SpecError) as e:
        execute(spec)
    msg = str(e.value)
    assert msg.startswith("model.name_or_path: 'no-such-org/no-such-model' is not a local directory")
    assert "offline (" in msg and "HF_HUB_OFFLINE=1" in msg
    # a hub id only evaluation uses must not fail after training either
    spec = run_spec("method=dpo", f"data={data}", "eval.enabled=true", f"eval.prompts={data}",
                    "eval.baseline=no-such-org/baseline")
    with pytest.raises(SpecError, match="^eval.baseline: 'no-such-org/baseline' is not a local directory"):
        execute(spec)
    assert no_model_loads == []


def test_a_single_data_file_gets_an_eval_hint_that_works(tmp_path, tiny_base):
    from harness.training.runner import SpecError, check_spec

    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(20))
    base = ["method=dpo", "model=toy:tiny", f"data={data}"]
    with pytest.raises(ConfigError) as e:
        check_spec(load_spec(None, base))
    msg = str(e.value)
    assert f"eval.prompts={data}" in msg and "data.eval_split" not in msg
    check_spec(load_spec(None, [*base, f"eval.prompts={data}"]))  # the hint works
    with pytest.raises(SpecError, match="data.eval_split='test': .* is a single file"):
        check_spec(load_spec(None, [*base, "data.eval_split=test", "eval.enabled=false"]))


# --------------------------------------------------------------------------- the CLI: exit 2, one message, no traceback


def _cli(*args: str):
    from harness.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_bad_setting_exits_2_without_a_traceback(tmp_path, tiny_base):
    res = _cli("run", "method=dpo", "model=toy:tiny", "train.batch_size=-1", f"output_dir={tmp_path}",
               "train.max_steps=2", "eval.enabled=false", "tracking.mode=disabled", "train.progress=false")
    assert res.exit_code == 2, res.output
    assert "train.batch_size must be >= 1" in res.output and "Traceback" not in res.output
    assert not list(tmp_path.iterdir())  # nothing started


def test_cli_bad_data_exits_2_listing_the_rows(tmp_path, tiny_base):
    rows = pairs(12)
    rows[2]["chosen"] = None
    data = write_jsonl(tmp_path / "prefs.jsonl", rows, raw_lines={6: "{nope"})
    res = _cli("run", "method=dpo", "model=toy:tiny", f"data={data}", f"output_dir={tmp_path / 'runs'}",
               "train.max_steps=2", "eval.enabled=false", "tracking.mode=disabled", "train.progress=false")
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())  # the console wraps long lines
    assert "line 6: invalid JSON" in out and "data.skip_bad_rows=true" in out and "Traceback" not in res.output


def test_cli_zero_work_exits_2(tmp_path, tiny_base):
    data = write_jsonl(tmp_path / "prefs.jsonl", pairs(3))
    res = _cli("run", "method=dpo", "model=toy:tiny", f"data={data}", f"output_dir={tmp_path / 'runs'}",
               "eval.enabled=false", "tracking.mode=disabled", "train.progress=false")
    assert res.exit_code == 2, res.output
    assert "zero optimizer steps" in " ".join(res.output.split()) and "Traceback" not in res.output


# --------------------------------------------------------------------------- harness spec


def test_spec_help_shows_every_key_with_type_default_range_and_doc():
    from harness.core.config import RunSpec, describe

    res = _cli("spec")
    assert res.exit_code == 0, res.output
    text = res.output
    assert all(len(line) <= 80 for line in text.splitlines()), [ln for ln in text.splitlines() if len(ln) > 80]
    keys = [k for k in describe(RunSpec) if k.key != "method"]
    for k in keys:
        assert f"  {k.key}  " in text, k.key
        assert k.doc, f"{k.key} has no #: doc"
    assert "  train.warmup_ratio  float = 0.0  range [0, 1]" in text
    assert "  train.batch_size  int = 8  range [1, 2^31-1]" in text
    assert "harness spec method=NAME" in text


def test_spec_help_for_one_method_and_for_a_typo():
    res = _cli("spec", "method=simpo")
    assert res.exit_code == 0, res.output
    assert "  method.gamma  float = 1.0  range >= 0" in res.output
    assert "target reward margin" in res.output
    bad = _cli("spec", "trian")
    assert bad.exit_code == 2 and "did you mean 'train'" in bad.output


def test_run_help_points_to_spec():
    res = _cli("run", "--help")
    assert res.exit_code == 0 and "harness spec" in res.output


def test_nan_never_reaches_training():
    """NaN compares false with every bound; it must be caught as NaN, in every float field."""
    from harness.core.config import RunSpec, describe

    floats = [k.key for k in describe(RunSpec) if k.type.split(" |")[0] == "float"]
    assert "train.lr" in floats and len(floats) > 8
    for key in floats:
        with pytest.raises(ConfigError, match=rf"^{key} must be a finite number, got nan"):
            load_spec(None, ["method=dpo", f"{key}=.nan"])
