"""Typed run specs: YAML files plus dotted ``key=value`` overrides, validated before any model loads.

    harness run my_run.yaml train.lr=5e-6 method.beta=0.05 seed=3

Every section is a dataclass.  An unknown key, an unknown method or a value of the
wrong type raises :class:`ConfigError` naming the key path, the valid choices and a
"did you mean" hint.  The method section is typed by the chosen adapter's own
hyperparameter class, so ``method.beta`` is checked against DPO's config when
``method=dpo``.  ``to_dict`` gives the resolved spec that every run saves.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from harness.registry import did_you_mean


class ConfigError(ValueError):
    """A spec is invalid; the message names the key path and what is wrong."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelSpec:
    #: hub id, local directory, or ``toy`` / ``toy:<size>`` for the built-in toy world's SFT base
    name_or_path: str = "toy"
    revision: str | None = None
    #: reference model for methods that need one; default: the policy's starting weights
    reference: str | None = None
    trust_remote_code: bool = False


@dataclass
class DataSpec:
    #: hub id, local file/dir (json, jsonl, parquet, csv), or ``toy`` for the built-in toy world
    source: str = "toy"
    split: str = "train"
    #: held-out split for periodic eval loss; None: hold out ``eval_fraction`` of the train split
    eval_split: str | None = None
    eval_fraction: float = 0.05
    #: None = detect from the columns (prompt/chosen/rejected, prompt/completion/label, ...)
    format: Literal["paired", "sft", "unpaired", "prompt", "alpaca", "messages"] | None = None
    max_samples: int | None = None
    #: drop malformed rows (and report how many) instead of stopping at the first
    skip_bad_rows: bool = False
    #: toy world only: share of desirable examples in the unpaired (KTO) split
    desirable_fraction: float = 0.5
    #: toy world only: number of examples generated per split
    toy_size: int = 2048


@dataclass
class PeftSpec:
    kind: Literal["none"] = "none"


@dataclass
class TrainSpec:
    lr: float = 1e-4
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 1
    #: overrides epochs when set
    max_steps: int | None = None
    #: per-device micro-batch (pairs for paired data)
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 96
    max_prompt_length: int = 48
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    log_every: int = 1
    #: periodic held-out evaluation (and sweep pruning) every N optimizer steps
    eval_every: int | None = None
    save_every: int | None = None
    #: checkpoint directory to resume from (``runs/<name>/checkpoints/step-N``)
    resume_from: str | None = None
    #: cache reference log-probs on disk, keyed by (reference, data, lengths, precision)
    ref_cache: bool = True
    progress: bool = True


@dataclass
class EvalSpec:
    enabled: bool = True
    #: held-out prompts to sample from (toy world: its eval prompts)
    num_prompts: int = 64
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 32
    #: score samples with the toy world's programmatic gold reward (toy data only)
    gold_reward: bool = True


@dataclass
class TrackingSpec:
    #: "auto" follows W&B's own settings (WANDB_MODE, login): online if logged in, else offline
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "align-harness"
    #: W&B group (a sweep sets it to the sweep's name) and job type (the method)
    group: str | None = None
    job_type: str | None = None


@dataclass
class RunSpec:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    #: resolved by ``load_spec`` into the adapter's typed hyperparameters
    method: Any = None
    peft: PeftSpec = field(default_factory=PeftSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    seed: int = 0
    #: run name; None picks ``<method>-<NNNN>``
    name: str | None = None
    output_dir: str = "runs"
    #: free-form labels carried into the run store (sweeps record sweep / trial ids here)
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return str(self.method.name)


#: a scalar given for a section sets this field: ``model=Qwen/...``, ``method=dpo``
SECTION_SHORTHAND = {
    "model": "name_or_path",
    "data": "source",
    "method": "name",
    "peft": "kind",
}


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints pass as floats, nothing else converts."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = get_args(tp)[:1] or (Any,)
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def build(cls: type, raw: Any, key: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    where = key or cls.__name__
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in raw:
        if k not in fields:
            raise ConfigError(
                f"unknown key {_join(key, str(k))!r}{did_you_mean(str(k), list(fields))}; "
                f"valid keys: {', '.join(fields)}"
            )
    kwargs = {k: coerce(v, hints[k], _join(key, k)) for k, v in raw.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=5e-6`` -> ("train.lr", 5e-06); the value is read as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    # YAML reads "5e-6" as a string (it wants a dot); numbers are what users mean
    if isinstance(parsed, str):
        try:
            parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
        except ValueError:
            pass
    return key, parsed


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            short = SECTION_SHORTHAND.get(part) if i == 0 else None
            if short is None:
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, cannot set {key}")
            child = node[part] = {short: child}
        node = child
    last = parts[-1]
    if len(parts) == 1 and last in SECTION_SHORTHAND and not isinstance(value, dict):
        existing = node.get(last)
        section = existing if isinstance(existing, dict) else {}
        section[SECTION_SHORTHAND[last]] = value
        node[last] = section
    else:
        node[last] = value


def _normalise_sections(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    for section, short in SECTION_SHORTHAND.items():
        if section in out and not isinstance(out[section], Mapping):
            out[section] = {short: out[section]}
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def merge_raw(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply dotted overrides to a raw (unvalidated) spec dict, returning a new dict."""
    import copy

    raw = _normalise_sections(copy.deepcopy(base))
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return raw


def resolve(raw: Mapping[str, Any]) -> RunSpec:
    """Validate a raw spec dict (YAML + overrides merged) into a RunSpec."""
    from harness.methods_api import METHODS, load_methods

    load_methods()
    raw = _normalise_sections(dict(raw))
    method_raw = dict(raw.pop("method", None) or {})
    name = method_raw.pop("name", None)
    if name is None:
        raise ConfigError(f"method: no method given; choose from: {', '.join(METHODS.names())}")
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    try:
        adapter = METHODS.get(name)
    except KeyError as e:
        raise ConfigError(f"method: {e}") from None
    spec = build(RunSpec, raw)
    hp = build(adapter.config_cls, method_raw, "method")
    spec.method = MethodConfig(name=name, hp=hp)
    return spec


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> RunSpec:
    """YAML file (optional) + ``key=value`` strings -> validated RunSpec."""
    raw = read_yaml(path) if path is not None else {}
    pairs = dict(parse_override(o) for o in overrides or [])
    return resolve(merge_raw(raw, pairs))


@dataclass
class MethodConfig:
    """The resolved method section: its registry name and the adapter's typed hyperparameters."""

    name: str
    hp: Any

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **to_dict(self.hp)}


def spec_to_dict(spec: RunSpec) -> dict[str, Any]:
    d = to_dict(spec)
    d["method"] = spec.method.as_dict() if isinstance(spec.method, MethodConfig) else d["method"]
    return d
