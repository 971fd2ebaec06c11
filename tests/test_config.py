"""Run-spec parsing and validation: every bad key or type fails before a model loads."""

import pytest
import yaml

from harness.core.config import ConfigError, load_spec, parse_override, spec_to_dict


def test_defaults_and_shorthand():
    spec = load_spec(None, ["method=dpo", "model=Qwen/Qwen2.5-0.5B-Instruct", "data=HuggingFaceH4/ultrafeedback_binarized"])
    assert spec.method.name == "dpo" and spec.method.hp.beta == 0.1
    assert spec.model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert spec.data.source == "HuggingFaceH4/ultrafeedback_binarized"


def test_yaml_plus_overrides(tmp_path):
    p = tmp_path / "my_run.yaml"
    p.write_text(yaml.safe_dump({"method": {"name": "dpo", "beta": 0.2}, "train": {"lr": 1e-4}, "seed": 1}))
    spec = load_spec(p, ["train.lr=5e-6", "method.beta=0.05", "seed=3"])
    assert spec.train.lr == 5e-6 and spec.method.hp.beta == 0.05 and spec.seed == 3
    d = spec_to_dict(spec)
    assert d["method"] == {"name": "dpo", "beta": 0.05, "label_smoothing": 0.0}


@pytest.mark.parametrize("override,needle", [
    (["method=dpo", "train.lrr=1e-5"], "unknown key 'train.lrr' (did you mean 'lr'?)"),
    (["method=dpoo"], "unknown method 'dpoo' (did you mean 'dpo'?)"),
    (["method=dpo", "method.betta=0.1"], "unknown key 'method.betta' (did you mean 'beta'?)"),
    (["method=dpo", "train.batch_size=2.5"], "train.batch_size: expected an integer, got 2.5"),
    (["method=dpo", "train.precision=fp16"], "train.precision: 'fp16' is not one of 'fp32', 'bf16'"),
    (["method=dpo", "method.beta=-1"], "beta must be > 0"),
    (["method=dpo", "train.gradient_checkpointing=maybe"], "expected true/false"),
    (["method=simpo", "method.beta=0.1", "trian.lr=1"], "unknown key 'trian' (did you mean 'train'?)"),
    ([], "no method given"),
])
def test_bad_specs_fail_with_key_and_choices(override, needle):
    with pytest.raises(ConfigError) as e:
        load_spec(None, override)
    assert needle in str(e.value)


def test_method_hyperparameters_are_typed_per_method():
    # kto has desirable_weight, dpo does not
    assert load_spec(None, ["method=kto", "method.desirable_weight=1.33"]).method.hp.desirable_weight == 1.33
    with pytest.raises(ConfigError, match="unknown key 'method.desirable_weight'"):
        load_spec(None, ["method=dpo", "method.desirable_weight=1.33"])


def test_parse_override_reads_numbers_and_lists():
    assert parse_override("train.lr=5e-6") == ("train.lr", 5e-6)
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    assert parse_override("name=run-1") == ("name", "run-1")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")


def test_on_off_choices_survive_yaml_booleans():
    """YAML 1.1 reads a bare on/off as a boolean; the forward-path switches mean the words."""
    t = load_spec(None, ["method=dpo", "train.packing=off", "train.share_prompts=on"]).train
    assert (t.packing, t.share_prompts) == ("off", "on")
    with pytest.raises(ConfigError, match="train.precision"):
        load_spec(None, ["method=dpo", "train.precision=off"])  # no on/off choice there: still an error


def test_missing_or_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_spec(bad)


def test_hub_ids_with_dots_are_not_mistaken_for_missing_paths(tmp_path):
    from harness.training.runner import SpecError, check_spec

    check_spec(load_spec(None, ["method=dpo", "model=Qwen/Qwen2.5-0.5B-Instruct", "data=HuggingFaceH4/ultrafeedback_binarized", "eval.enabled=false"]))
    with pytest.raises(SpecError, match="does not exist"):
        check_spec(load_spec(None, ["method=dpo", f"data={tmp_path / 'missing.jsonl'}", "eval.enabled=false"]))
