"""Typed run specs: YAML files plus dotted ``key=value`` overrides, validated before any model loads.

    harness run my_run.yaml train.lr=5e-6 method.beta=0.05 seed=3
    harness spec                      # every key: type, default, allowed range, what it does

Every section is a dataclass.  An unknown key, an unknown method or a value of the
wrong type raises :class:`ConfigError` naming the key path, the valid choices and a
"did you mean" hint.  Numeric fields declare their allowed range next to the field
(``lr: float = ranged(1e-4, gt=0, le=1)``); :func:`build` checks every declared range
and rejects NaN/inf in every float, so a range is written once and also feeds
``harness spec`` (:func:`describe`).  Cross-field rules live in a class's ``validate()``.
The method section is typed by the chosen adapter's own hyperparameter class, so
``method.beta`` is checked against DPO's config when ``method=dpo``.  ``to_dict`` gives
the resolved spec that every run saves.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from harness.core.registry import did_you_mean


class ConfigError(ValueError):
    """A spec is invalid; the message names the key path and what is wrong.

    Data errors (``harness.data.load.DataError``) and spec errors found before a model
    loads (``harness.training.runner.SpecError``) are kinds of it: the CLI exits 2 on all."""


# --------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: bounds (None = unbounded), each inclusive or not."""

    lo: float | None = None
    hi: float | None = None
    lo_inclusive: bool = True
    hi_inclusive: bool = True

    def __contains__(self, value: Any) -> bool:
        if self.lo is not None and (value < self.lo if self.lo_inclusive else value <= self.lo):
            return False
        return not (self.hi is not None and (value > self.hi if self.hi_inclusive else value >= self.hi))

    def phrase(self) -> str:
        """``>= 1``, ``> 0 and <= 1``: what an error message says a value must be."""
        parts = []
        if self.lo is not None:
            parts.append(f"{'>=' if self.lo_inclusive else '>'} {_num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<=' if self.hi_inclusive else '<'} {_num(self.hi)}")
        return " and ".join(parts) or "any finite number"

    def __str__(self) -> str:
        """Interval notation for help tables: ``[0, 1)``, ``>= 1``."""
        if self.lo is not None and self.hi is not None:
            return (f"{'[' if self.lo_inclusive else '('}{_num(self.lo)}, "
                    f"{_num(self.hi)}{']' if self.hi_inclusive else ')'}")
        return self.phrase()


def _num(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15:
        n = int(x)
        # 2**31 - 1 reads better than 2147483647 in help and errors
        for k in (31, 32, 63):
            if n == 2**k - 1:
                return f"2^{k}-1"
        return str(n)
    return f"{x:g}"


def ranged(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field whose value must lie in a range; :func:`build` checks it (None passes:
    optional fields are unset).  ``ge``/``gt``: lower bound inclusive/exclusive; ``le``/``lt``: upper."""
    if ge is not None and gt is not None or le is not None and lt is not None:
        raise TypeError("give one lower bound (ge or gt) and one upper bound (le or lt)")
    rng = Range(lo=ge if gt is None else gt, hi=le if lt is None else lt,
                lo_inclusive=gt is None, hi_inclusive=lt is None)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"range": rng})
    return field(default=default, metadata={"range": rng})


#: longest sequence a spec may ask for (tokens); a model's own position limit is checked once it is known
MAX_TOKENS = 1 << 20
#: cap of counts (steps, samples, sizes): far beyond any real run, below what overflows int32 code paths
MAX_COUNT = 2**31 - 1
#: seeds go to torch, numpy and random, whose common range is 32 bits
MAX_SEED = 2**32 - 1


# --------------------------------------------------------------------------- sections


@dataclass
class ModelSpec:
    """The model to train (and the reference of methods that have one)."""

    #: hub id, local directory, or ``<world>[:<size>]`` for a built-in world's SFT base
    #: (``toy:tiny``); None: the data world's default base model (``data=toy`` -> ``toy``)
    name_or_path: str | None = None
    #: hub revision (branch, tag or commit) of name_or_path
    revision: str | None = None
    #: reference model for methods that need one; default: the policy's starting weights
    reference: str | None = None
    #: run the model repository's own Python code (only for models you trust)
    trust_remote_code: bool = False


@dataclass
class MixtureSpec:
    """A FLAN-style multi-task mixture, for ``data=flan:<world>`` (``harness.data.mixture``)."""

    #: training clusters to mix: N = the first N in the world's fixed order, or a list of
    #: cluster names; None: every training cluster (held-out clusters are never mixed)
    clusters: int | list[str] | None = ranged(None, ge=1, le=MAX_COUNT)
    #: examples-proportional mixing's per-task cap K (T5; FLAN uses 3,000): a task's share is
    #: min(its training items, K) over the sum of those; without data.mixture.size it gets exactly that many rows
    cap: int = ranged(3000, ge=1, le=MAX_COUNT)
    #: explicit mixing instead: weight per cluster (shared by its tasks) or per task, covering
    #: every cluster of the mixture; None: examples-proportional
    weights: dict[str, float] | None = None
    #: rows in the mixture; None: the examples-proportional total (sum over tasks of min(items, cap))
    size: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: solved exemplars shown before the query in a few-shot (fs) row
    fs_k: int = ranged(2, ge=1, le=64)
    #: seed of the mixture's draws (items, templates, exemplars, order); independent of the run's
    #: seed, so every seed of a sweep trains on the same mixture
    seed: int = ranged(0, ge=0, le=MAX_SEED)

    def validate(self) -> None:
        if isinstance(self.clusters, list) and not self.clusters:
            raise ValueError("clusters is an empty list; name at least one cluster, or give a number")
        if self.weights is not None:
            if not self.weights:
                raise ValueError("weights is empty; give a weight per cluster or task, or leave it unset")
            for name, w in self.weights.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"weights: {name!r} is not a cluster or task name")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                    raise ValueError(f"weights.{name} must be a finite number >= 0, got {_short(w)}")


@dataclass
class DataSpec:
    """Training data: where it comes from, its format, how much of it, and what is held out."""

    #: hub id, local file/dir (json, jsonl, parquet, csv), or a built-in world (``harness worlds``)
    source: str = "toy"
    #: split to train on (a single local file holds one split, ``train``)
    split: str = "train"
    #: held-out split for periodic eval loss; None: hold out ``eval_fraction`` of the train split
    eval_split: str | None = None
    #: share of the train split held out for periodic eval loss when eval_split is unset
    eval_fraction: float = ranged(0.05, ge=0, lt=1)
    #: None = detect from the columns (prompt/chosen/rejected, prompt/completion/label, ...)
    format: Literal["paired", "sft", "unpaired", "prompt", "alpaca", "messages"] | None = None
    #: keep the first N usable records (None: all)
    max_samples: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: drop malformed rows (listed in the run's skipped_rows.jsonl) instead of stopping with them
    skip_bad_rows: bool = False
    #: built-in worlds: share of desirable examples in the unpaired (KTO) split
    desirable_fraction: float = ranged(0.5, gt=0, lt=1)
    #: built-in worlds: number of examples generated per split
    toy_size: int = ranged(2048, ge=1, le=1_000_000)
    #: flan mixtures: template kinds joined by '+': zs (zero-shot), fs (few-shot, data.mixture.fs_k
    #: exemplars), opt (answer options listed), cot (rationale then answer, tasks with rationales)
    templates: str = "zs"
    #: flan mixtures (data=flan:<world>): clusters, per-task cap or weights, size
    mixture: MixtureSpec = field(default_factory=MixtureSpec)


@dataclass
class LoraSpec:
    """LoRA adapter (Hu et al., arXiv:2106.09685); also the adapter of QLoRA."""

    #: rank of the low-rank update
    r: int = ranged(8, ge=1, le=65536)
    #: scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with use_rslora)
    alpha: float = ranged(16.0, gt=0)
    #: dropout on the adapter's input
    dropout: float = ranged(0.05, ge=0, lt=1)
    #: "all-linear" (every linear layer but the output head) or module names, e.g. [q_proj, v_proj]
    target_modules: Literal["all-linear"] | list[str] = "all-linear"
    #: which biases train along with the adapter
    bias: Literal["none", "all", "lora_only"] = "none"
    #: rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, arXiv:2312.03732)
    use_rslora: bool = False
    #: weight-decomposed LoRA (Liu et al., arXiv:2402.09353)
    use_dora: bool = False

    def validate(self) -> None:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules is an empty list; name modules or use 'all-linear'")


@dataclass
class QuantSpec:
    """4-bit base of QLoRA (Dettmers et al., arXiv:2305.14314), loaded with bitsandbytes."""

    #: 4-bit data type: NormalFloat4 (the paper's) or plain FP4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    #: quantise the quantisation constants too (~0.4 bit/param saved)
    double_quant: bool = True
    #: dtype the 4-bit weights are dequantised to for matmuls
    compute_dtype: Literal["bf16", "fp32"] = "bf16"


@dataclass
class PrefixSpec:
    """Prefix-Tuning (Li & Liang, arXiv:2101.00190): trained key/value prefixes in every layer."""

    #: trained prefix positions per layer
    num_virtual_tokens: int = ranged(16, ge=1, le=MAX_TOKENS)
    #: reparameterise the prefix through an MLP (the paper's stabilising trick)
    prefix_projection: bool = False
    #: hidden size of that MLP; None = the model's hidden size
    encoder_hidden_size: int | None = ranged(None, ge=1, le=MAX_TOKENS)


@dataclass
class PeftSpec:
    """Parameterisation: full fine-tuning (none) or an adapter on a frozen base (harness.modeling.peft_setup)."""

    #: none = full fine-tuning; lora / qlora (4-bit base) / prefix adapters on a frozen base
    kind: Literal["none", "lora", "qlora", "prefix"] = "none"
    #: used by kind=lora and kind=qlora
    lora: LoraSpec = field(default_factory=LoraSpec)
    #: used by kind=qlora
    quant: QuantSpec = field(default_factory=QuantSpec)
    #: used by kind=prefix
    prefix: PrefixSpec = field(default_factory=PrefixSpec)


@dataclass
class TrainSpec:
    """The optimisation: optimizer, schedule, batch shape, lengths, precision, logging and checkpoints."""

    #: AdamW (decoupled weight decay), or plain SGD (no momentum: a step is -lr x the gradient,
    #: what gradient-invariance checks compare)
    optimizer: Literal["adamw", "sgd"] = "adamw"

    #: peak learning rate (no upper bound: a diverging rate stops the run as a non-finite loss)
    lr: float = ranged(1e-4, gt=0)
    #: learning-rate schedule after warmup
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    #: share of the optimizer steps spent warming up linearly from 0
    warmup_ratio: float = ranged(0.0, ge=0, le=1)
    #: AdamW's decoupled weight decay
    weight_decay: float = ranged(0.0, ge=0)
    #: clip the global gradient norm to this; 0 = no clipping
    max_grad_norm: float = ranged(1.0, ge=0)
    #: passes over the training data (ignored when max_steps is set)
    epochs: int = ranged(1, ge=1, le=MAX_COUNT)
    #: optimizer steps; overrides epochs when set
    max_steps: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: per-device micro-batch (pairs for paired data)
    batch_size: int = ranged(8, ge=1, le=MAX_COUNT)
    #: micro-batches per optimizer step
    grad_accum: int = ranged(1, ge=1, le=MAX_COUNT)
    #: tokens per sequence (prompt + completion); also checked against the model's positions
    max_length: int = ranged(128, ge=2, le=MAX_TOKENS)
    #: prompt tokens kept (the end of the prompt); must be below max_length
    max_prompt_length: int = ranged(96, ge=1, le=MAX_TOKENS)
    #: fp32, or bf16 autocast
    precision: Literal["fp32", "bf16"] = "fp32"
    #: label log-probs: chunked over rows and vocabulary without full logits, the plain full-logits
    #: path, or auto (chunked wherever it is exact; the reason is logged when it is not)
    logprobs: Literal["auto", "chunked", "plain"] = "auto"
    #: padding-free batches: auto packs a micro-batch when that removes >= 20% of its token slots
    packing: Literal["auto", "on", "off"] = "auto"
    #: rows repeating a prompt (a GRPO group, a DPO pair) compute it once: auto shares when that
    #: removes >= 20% of the token slots left after packing; chunked log-probs only
    share_prompts: Literal["auto", "on", "off"] = "auto"
    #: online methods' sampling: auto = a batched decode (each chunk seeded as before: the same
    #: samples as hf up to float rounding; a prompt's prefill shared by its samples; finished rows
    #: dropped; in fp32 all chunks of a rollout at once), hf = transformers' generate per chunk
    rollout_engine: Literal["auto", "hf"] = "auto"
    #: recompute activations in the backward pass (less memory, more time)
    gradient_checkpointing: bool = False
    #: write a metrics row every N optimizer steps
    log_every: int = ranged(1, ge=1, le=MAX_COUNT)
    #: periodic held-out evaluation (and sweep pruning) every N optimizer steps
    eval_every: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: save a resumable checkpoint every N optimizer steps
    save_every: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: checkpoint directory to resume from (``runs/<name>/checkpoints/step-N``)
    resume_from: str | None = None
    #: cache reference log-probs and tokenised data on disk, keyed by content (weights, data, lengths, precision)
    ref_cache: bool = True
    #: show a progress bar
    progress: bool = True

    def validate(self) -> None:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}), "
                "or no completion token fits"
            )


@dataclass
class EvalSpec:
    """What ``harness.evaluation.evaluate`` measures after training (and ``harness eval`` on demand)."""

    #: evaluate after training
    enabled: bool = True
    #: the built-in world whose held-out prompts, gold scorer and lm-eval tasks evaluation uses;
    #: None: data.source's (set it when training on a file made from a world, as pipeline rounds do)
    world: str | None = None
    #: how many held-out prompts to sample from (the first N)
    num_prompts: int = ranged(64, ge=1, le=MAX_COUNT)
    #: longest generated answer (tokens)
    max_new_tokens: int = ranged(32, ge=1, le=MAX_TOKENS)
    #: sampling temperature; 0 = greedy
    temperature: float = ranged(0.7, ge=0)
    #: nucleus sampling mass
    top_p: float = ranged(1.0, gt=0, le=1)
    #: prompts per generation batch
    batch_size: int = ranged(32, ge=1, le=MAX_COUNT)
    #: score samples with the data world's gold scorer (built-in worlds with one, on their own prompts)
    gold_reward: bool = True
    #: seed of the evaluation samples (the same for the candidate and the baseline)
    seed: int = ranged(0, ge=0, le=MAX_SEED)
    #: strings that end a generated answer (not included in it)
    stop: list[str] = field(default_factory=list)
    #: instruction set to answer: a file / dir / hub id with prompts (any data format that has
    #: them); None: a built-in world's held-out eval prompts, else ``data.source`` at ``data.eval_split``
    prompts: str | None = None
    #: split of eval.prompts to read
    prompts_split: str = "train"
    #: model whose answers the candidate is judged against and KL is measured to; None: the
    #: run's starting point (its reference for methods that have one), or ``model.reference``
    baseline: str | None = None
    #: pairwise judge for win rates: "auto" = the world's gold scorer on a built-in world's own
    #: prompts, else the reward model if given, else none
    judge: Literal["auto", "gold", "reward_model", "hf", "openai", "none"] = "auto"
    #: judge model: endpoint model name (openai) or local path / hub id (hf)
    judge_model: str | None = None
    #: OpenAI-compatible endpoint of judge=openai
    judge_base_url: str = "https://api.openai.com/v1"
    #: environment variable holding the endpoint's API key (never the key itself)
    judge_api_key_env: str = "OPENAI_API_KEY"
    #: concurrent judge requests
    judge_workers: int = ranged(4, ge=1, le=1024)
    #: retries of a failed judge request
    judge_max_retries: int = ranged(5, ge=0, le=100)
    #: bootstrap resamples for the length-controlled win rate's standard error
    lc_bootstrap: int = ranged(200, ge=0, le=1_000_000)
    #: reward model (a ``method=reward`` run dir, its final/, or any HF sequence-classification
    #: model): scores the samples and, if ``judge`` is another, is a second judge
    reward_model: str | None = None
    #: KL(candidate || baseline) from this many samples per prompt at temperature 1 (0 = off)
    kl_samples: int = ranged(4, ge=0, le=10_000)
    #: lm-eval tasks; None: the data world's default tasks (built-in worlds), none otherwise
    lm_eval_tasks: list[str] | None = None
    #: extra directories of lm-eval task YAMLs
    lm_eval_include: list[str] = field(default_factory=list)
    #: examples per lm-eval task (None: all)
    lm_eval_limit: int | None = ranged(None, ge=1, le=MAX_COUNT)
    #: few-shot examples per lm-eval prompt (None: the task's default)
    lm_eval_num_fewshot: int | None = ranged(None, ge=0, le=1024)
    #: lm-eval batch size
    lm_eval_batch_size: int = ranged(16, ge=1, le=MAX_COUNT)
    #: None: apply the tokenizer's chat template when it has one
    lm_eval_chat_template: bool | None = None
    #: held-out preference pairs for reward-model accuracy (RewardBench's measure); None: fresh
    #: gold-labelled pairs on a built-in world's held-out prompts, else ``data.source`` at ``data.eval_split``
    rm_pairs: str | None = None
    #: split of eval.rm_pairs to read
    rm_pairs_split: str = "train"
    #: generation backend for the judged samples (KL and lm-eval always use HF): vllm needs
    #: the package and a GPU, and serves the saved weights (adapters merged first)
    backend: Literal["hf", "vllm"] = "hf"

    def validate(self) -> None:
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
    batch_size: int = ranged(32, ge=1, le=MAX_COUNT)
    #: judge: the OpenAI-compatible endpoint (reward=judge:openai:<model>)
    judge_base_url: str = "https://api.openai.com/v1"
    #: judge: the environment variable holding the endpoint's API key (never the key itself)
    judge_api_key_env: str = "OPENAI_API_KEY"
    #: judge: retries of a failed call (HTTP 5xx, 429, timeouts) before the run fails
    judge_max_retries: int = ranged(5, ge=0, le=100)
    #: judge: concurrent requests to an HTTP endpoint
    judge_workers: int = ranged(4, ge=1, le=1024)

    def validate(self) -> None:
        if not self.source:
            raise ValueError("source is empty; use gold, a reward model path, judge:<backend>:<model> or module:function")


@dataclass
class TrackingSpec:
    """Experiment tracking (W&B); the run store on disk is always written."""

    #: "auto" follows W&B's own settings (WANDB_MODE, login): online if logged in, else offline
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    #: W&B project
    project: str = "align-harness"
    #: W&B group (a sweep sets it to the sweep's name) and job type (the method)
    group: str | None = None
    #: W&B job type; None: the method's name
    job_type: str | None = None


@dataclass
class RunSpec:
    """One training run: the sections above plus its seed, name and where it is stored."""

    #: the model to train
    model: ModelSpec = field(default_factory=ModelSpec)
    #: the training data
    data: DataSpec = field(default_factory=DataSpec)
    #: resolved by ``load_spec`` into the adapter's typed hyperparameters (``harness spec method=NAME``)
    method: Any = None
    #: full fine-tuning or an adapter
    peft: PeftSpec = field(default_factory=PeftSpec)
    #: the optimisation
    train: TrainSpec = field(default_factory=TrainSpec)
    #: evaluation after training
    eval: EvalSpec = field(default_factory=EvalSpec)
    #: where online methods' rewards come from
    reward: RewardSpec = field(default_factory=RewardSpec)
    #: experiment tracking
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    #: seed of initialisation-free randomness: data order, dropout, sampling
    seed: int = ranged(0, ge=0, le=MAX_SEED)
    #: run name; None picks ``<method>-<NNNN>``
    name: str | None = None
    #: directory that holds the run directories
    output_dir: str = "runs"
    #: free-form labels carried into the run store (sweeps record sweep / trial ids here)
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def method_name(self) -> str:
        return str(self.method.name)

    def validate(self) -> None:
        if self.name is not None and not RUN_NAME.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '.', '_' and '-' (starting with a letter or digit)")
        if not self.output_dir.strip() or "\0" in self.output_dir:
            raise ValueError(f"output_dir {self.output_dir!r} is not a usable directory name")


#: what a run directory may be called (it is a path component)
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
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
        if len(errors) == 1:  # ``float | None``: the float's own message (e.g. "not finite") says more
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_short(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off (train.packing=off) as a bool
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{key}: {_short(value)} is not one of {', '.join(repr(c) for c in choices)}{hint}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_short(value)}")
        (inner,) = get_args(tp)[:1] or (Any,)
        return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_short(value)}")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        # NaN passes every comparison and inf every lower bound: no setting means either
        if not math.isfinite(number):
            raise ConfigError(f"{key} must be a finite number, got {_short(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_short(value)}")
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
        raise ConfigError(f"{where}: expected a mapping, got {_short(raw)}")
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
    for name, f in fields.items():
        check_range(f, getattr(obj, name), _join(key, name))
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            msg = str(e)
            # "max_prompt_length (48) must be ..." -> "train.max_prompt_length (48) must be ..."
            first = re.match(r"[A-Za-z_]\w*", msg)
            if first and first.group(0) in fields:
                raise ConfigError(_join(key, msg)) from None
            raise ConfigError(f"{where}: {msg}") from None
    return obj


def field_range(f: dataclasses.Field) -> Range | None:
    """The range declared with :func:`ranged` on a dataclass field, if any."""
    rng = f.metadata.get("range") if f.metadata else None
    return rng if isinstance(rng, Range) else None


def check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` lies outside the field's declared range."""
    rng = field_range(f)
    if rng is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if value not in rng:
        raise ConfigError(f"{key} must be {rng.phrase()}, got {_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to a readable length (a 300-digit integer is no help in an error message)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} chars)"


# --------------------------------------------------------------------------- help


@dataclass(frozen=True)
class KeyHelp:
    """One key of a spec section as ``harness spec`` shows it."""

    key: str
    type: str
    default: Any
    #: interval notation of the declared range, "" when the field declares none
    range: str
    doc: str


def field_docs(cls: type) -> dict[str, str]:
    """Each field's ``#:`` comment (the lines right above it in the class body), inherited ones included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # no source (a frozen app, a class made at run time)
            continue
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("class ")), 0) + 1
        body = [ln for ln in lines[start:] if ln.strip()]
        indent = min((len(ln) - len(ln.lstrip()) for ln in body), default=4)
        pending: list[str] = []
        for ln in lines[start:]:
            text = ln.strip()
            at_body = len(ln) - len(ln.lstrip()) == indent
            if at_body and text.startswith("#:"):
                pending.append(text[2:].strip())
                continue
            m = re.match(r"([A-Za-z_]\w*)\s*:", text) if at_body else None
            if m and pending:
                docs[m.group(1)] = " ".join(pending)
            if text:
                pending = []
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def describe(cls: type, prefix: str = "") -> list[KeyHelp]:
    """Every key of dataclass ``cls`` (sub-sections flattened to dotted keys), for help output."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[KeyHelp] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        key = _join(prefix, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.extend(describe(tp, key))
            continue
        rng = field_range(f)
        default = _default(f)
        out.append(KeyHelp(key, _type_name(tp), None if default is MISSING else to_dict(default),
                           str(rng) if rng else "", docs.get(f.name, "")))
    return out


def section_doc(cls: type) -> str:
    """The first line of a section class's docstring ("" when it has none of its own)."""
    doc = cls.__dict__.get("__doc__") or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


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
