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

from harness.core.registry import did_you_mean


class ConfigError(ValueError):
    """A spec is invalid; the message names the key path and what is wrong."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelSpec:
    #: hub id, local directory, or ``<world>[:<size>]`` for a built-in world's SFT base
    #: (``toy:tiny``); None: the data world's default base model (``data=toy`` -> ``toy``)
    name_or_path: str | None = None
    revision: str | None = None
    #: reference model for methods that need one; default: the policy's starting weights
    reference: str | None = None
    trust_remote_code: bool = False


@dataclass
class DataSpec:
    #: hub id, local file/dir (json, jsonl, parquet, csv), or a built-in world (``harness worlds``)
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
    #: built-in worlds: share of desirable examples in the unpaired (KTO) split
    desirable_fraction: float = 0.5
    #: built-in worlds: number of examples generated per split
    toy_size: int = 2048


@dataclass
class LoraSpec:
    """LoRA adapter (Hu et al., arXiv:2106.09685); also the adapter of QLoRA."""

    r: int = 8
    #: scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with use_rslora)
    alpha: float = 16.0
    dropout: float = 0.05
    #: "all-linear" (every linear layer but the output head) or module names, e.g. [q_proj, v_proj]
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    bias: Literal["none", "all", "lora_only"] = "none"
    #: rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, arXiv:2312.03732)
    use_rslora: bool = False
    #: weight-decomposed LoRA (Liu et al., arXiv:2402.09353)
    use_dora: bool = False

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is an empty list; name modules or use 'all-linear'")


@dataclass
class QuantSpec:
    """4-bit base of QLoRA (Dettmers et al., arXiv:2305.14314), loaded with bitsandbytes."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    #: quantise the quantisation constants too (~0.4 bit/param saved)
    double_quant: bool = True
    #: dtype the 4-bit weights are dequantised to for matmuls
    compute_dtype: Literal["bf16", "fp32"] = "bf16"


@dataclass
class PrefixSpec:
    """Prefix-Tuning (Li & Liang, arXiv:2101.00190): trained key/value prefixes in every layer."""

    num_virtual_tokens: int = 16
    #: reparameterise the prefix through an MLP (the paper's stabilising trick)
    prefix_projection: bool = False
    #: hidden size of that MLP; None = the model's hidden size
    encoder_hidden_size: int | None = None

    def validate(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ValueError(f"encoder_hidden_size must be >= 1, got {self.encoder_hidden_size}")


@dataclass
class PeftSpec:
    """Parameterisation: full fine-tuning (none) or an adapter on a frozen base (harness.modeling.peft_setup)."""

    kind: Literal["none", "lora", "qlora", "prefix"] = "none"
    #: used by kind=lora and kind=qlora
    lora: LoraSpec = field(default_factory=LoraSpec)
    #: used by kind=qlora
    quant: QuantSpec = field(default_factory=QuantSpec)
    #: used by kind=prefix
    prefix: PrefixSpec = field(default_factory=PrefixSpec)


@dataclass
class TrainSpec:
    #: AdamW (decoupled weight decay), or plain SGD (no momentum: a step is -lr x the gradient,
    #: what gradient-invariance checks compare)
    optimizer: Literal["adamw", "sgd"] = "adamw"
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
    #: cache reference log-probs and tokenised data on disk, keyed by content (weights, data, lengths, precision)
    ref_cache: bool = True
    progress: bool = True


@dataclass
class EvalSpec:
    """What ``harness.evaluation.evaluate`` measures after training (and ``harness eval`` on demand)."""

    enabled: bool = True
    #: the built-in world whose held-out prompts, gold scorer and lm-eval tasks evaluation uses;
    #: None: data.source's (set it when training on a file made from a world, as pipeline rounds do)
    world: str | None = None
    #: how many held-out prompts to sample from (the first N)
    num_prompts: int = 64
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 32
    #: score samples with the data world's gold scorer (built-in worlds with one, on their own prompts)
    gold_reward: bool = True
    #: seed of the evaluation samples (the same for the candidate and the baseline)
    seed: int = 0
    #: strings that end a generated answer (not included in it)
    stop: list[str] = field(default_factory=list)
    #: instruction set to answer: a file / dir / hub id with prompts (any data format that has
    #: them); None: a built-in world's held-out eval prompts, else ``data.source`` at ``data.eval_split``
    prompts: str | None = None
    prompts_split: str = "train"
    #: model whose answers the candidate is judged against and KL is measured to; None: the
    #: run's starting point (its reference for methods that have one), or ``model.reference``
    baseline: str | None = None
    #: pairwise judge for win rates: "auto" = the world's gold scorer on a built-in world's own
    #: prompts, else the reward model if given, else none
    judge: Literal["auto", "gold", "reward_model", "hf", "openai", "none"] = "auto"
    #: judge model: endpoint model name (openai) or local path / hub id (hf)
    judge_model: str | None = None
    judge_base_url: str = "https://api.openai.com/v1"
    #: environment variable holding the endpoint's API key (never the key itself)
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_workers: int = 4
    judge_max_retries: int = 5
    #: bootstrap resamples for the length-controlled win rate's standard error
    lc_bootstrap: int = 200
    #: reward model (a ``method=reward`` run dir, its final/, or any HF sequence-classification
    #: model): scores the samples and, if ``judge`` is another, is a second judge
    reward_model: str | None = None
    #: KL(candidate || baseline) from this many samples per prompt at temperature 1 (0 = off)
    kl_samples: int = 4
    #: lm-eval tasks; None: the data world's default tasks (built-in worlds), none otherwise
    lm_eval_tasks: list[str] | None = None
    #: extra directories of lm-eval task YAMLs
    lm_eval_include: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    lm_eval_num_fewshot: int | None = None
    lm_eval_batch_size: int = 16
    #: None: apply the tokenizer's chat template when it has one
    lm_eval_chat_template: bool | None = None
    #: held-out preference pairs for reward-model accuracy (RewardBench's measure); None: fresh
    #: gold-labelled pairs on a built-in world's held-out prompts, else ``data.source`` at ``data.eval_split``
    rm_pairs: str | None = None
    rm_pairs_split: str = "train"
    #: generation backend for the judged samples (KL and lm-eval always use HF): vllm needs
    #: the package and a GPU, and serves the saved weights (adapters merged first)
    backend: Literal["hf", "vllm"] = "hf"

    def validate(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("batch_size", "judge_workers", "lm_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("kl_samples", "judge_max_retries", "lc_bootstrap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.judge in ("hf", "openai") and not self.judge_model:
            raise ValueError(f"judge={self.judge!r} needs judge_model (an endpoint model name or a local model)")
        if self.judge == "reward_model" and not self.reward_model:
            raise ValueError("judge='reward_model' needs reward_model (a reward run dir or a model path)")


@dataclass
class RewardSpec:
    """Where online methods' rewards come from (``reward=...``; offline methods ignore it)."""

    #: ``gold`` (the data world's gold scorer), a reward model (a ``method=reward`` run dir, a model
    #: dir or hub id), ``judge:<openai|hf|reward_model>:<model>`` (a pairwise annotator, for
    #: pairwise methods such as online-dpo), or ``module:function`` (``f(prompts, completions) -> scores``)
    source: str = "gold"
    #: completions scored per call of a local reward model / judge
    batch_size: int = 32
    #: judge: OpenAI-compatible endpoint and the environment variable holding its key
    judge_base_url: str = "https://api.openai.com/v1"
    judge_api_key_env: str = "OPENAI_API_KEY"
    #: judge: retries of a failed call (HTTP 5xx, 429, timeouts) before the run fails
    judge_max_retries: int = 5
    judge_workers: int = 4

    def validate(self) -> None:
        if not self.source:
            raise ValueError("source is empty; use gold, a reward model path, judge:<backend>:<model> or module:function")
        for name in ("batch_size", "judge_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.judge_max_retries < 0:
            raise ValueError(f"judge_max_retries must be >= 0, got {self.judge_max_retries}")


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
    reward: RewardSpec = field(default_factory=RewardSpec)
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
    "reward": "source",
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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
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
    from harness.core.contract import METHODS, load_methods

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
