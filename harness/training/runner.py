"""Run one training job end to end: spec -> model, data, reference cache -> train -> save -> evaluate.

    harness run method=dpo                      # CLI entry (harness.cli.main)
    python -c "from harness.training.runner import execute; from harness.core.config import load_spec; execute(load_spec(None, ['method=dpo']))"

Writes ``runs/<name>/`` through ``harness.store.runs`` and keeps its status true to what
happened: ``completed``, ``failed`` (with the error), ``interrupted`` (Ctrl-C or SIGTERM)
or ``pruned`` (a sweep's pruner stopped it); while it runs, a heartbeat thread shows it
alive (a SIGKILLed run reads ``stale``).  Sweeps call :func:`execute` in a trial
process with a pruning hook.

Everything that can be known without a model fails before one loads, as a
:class:`SpecError` naming the key: :func:`check_spec` (no data, no model: sweeps call it
to validate every trial), then :func:`prepare` (the model's config, the data, the number
of optimizer steps).  A run that would take zero optimizer steps is such an error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.core.config import ConfigError, DataSpec, RunSpec, load_spec, spec_to_dict, to_dict
from harness.core.contract import METHODS, SEGMENTS, DataKind, MethodAdapter, load_methods
from harness.data import mixture as mixtures
from harness.data.batching import fingerprint, tokenize_cached
from harness.modeling import peft_setup
from harness.modeling.forward import ForwardOptions, configure
from harness.modeling.generation import resolve_model_dir
from harness.modeling.identity import weights_fingerprint
from harness.store.cache import build_dir, cache_dir
from harness.store.runs import Heartbeat, Run, atomic_write_text, now
from harness.training.loop import LoopConfig, OfflineSource, StepSource, TrainHooks, total_steps_for, train
from harness.training.online import is_online, setup_online
from harness.training.refcache import compute_reference_logps, reference_logps
from harness.training.rewards import check_source
from harness.worlds.base import (
    BaseModel,
    WorldError,
    WorldOptions,
    base_model_target,
    find_base_model,
    get_world,
    is_world,
    parse_model_name,
    source_world,
    world_options,
)

#: bump when the log-prob computation changes numerically, so cached reference values are recomputed
LOGPS_VERSION = 2


log = logging.getLogger(__name__)


class SpecError(ConfigError):
    """The spec cannot run (found before any model loads); the message names the key."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop request), handled like Ctrl-C: the run is marked
    ``interrupted`` and its checkpoints stay resumable."""


@dataclass
class Prepared:
    """What a run needs before training: resolved sources, tokenizer, tokenised splits."""

    adapter: MethodAdapter
    model_path: str
    reference_path: str
    tokenizer: Any
    train_examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    data_desc: str
    n_skipped: int
    #: every row skipped by data.skip_bad_rows=true: {"source", "row" or "line", "column", "reason"}
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: optimizer steps the run will take (at least 1)
    total_steps: int = 0
    #: the normalised training records (online methods read their prompts)
    train_records: list[dict[str, Any]] = field(default_factory=list)
    #: data=flan:<world>: the resolved mixture (mixture.json) plus the rows this run trains on
    mixture: dict[str, Any] | None = None


# --------------------------------------------------------------------------- worlds' base models


def ensure_base_model(world: Any, size: str) -> Path:
    """A world's base model ``size``: a Llama of the declared shape, SFT-trained by :func:`execute`
    on the world's sft split on first use, then cached (a cross-process lock makes parallel
    sweep workers build it once).  It lives here, beside :func:`execute`, because building a
    base model is a run."""
    bm: BaseModel = world.base_models[size]
    sft_data = world.data_path(DataKind.SFT)

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(world.tokenizer_dir())
        shape: dict[str, Any] = dict(bm.shape)
        cfg = LlamaConfig(
            vocab_size=len(tok), max_position_embeddings=bm.max_positions, tie_word_embeddings=True,
            num_key_value_heads=shape["num_attention_heads"], bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape,
        )
        torch.manual_seed(world.options.seed)
        init_dir = tmp / "init"
        LlamaForCausalLM(cfg).save_pretrained(init_dir)
        tok.save_pretrained(init_dir)
        spec = load_spec(None, [
            f"model={init_dir}", f"data={sft_data}", "method=sft",
            *(f"train.{k}={v}" for k, v in bm.recipe.items()),
            f"train.max_length={bm.max_length}", f"train.max_prompt_length={bm.max_prompt_length}",
            "eval.enabled=false", f"seed={world.options.seed}", f"output_dir={tmp / 'runs'}", "name=sft-base",
        ])
        run = execute(spec, tracking="disabled")
        for f in run.final_dir.iterdir():
            shutil.move(str(f), tmp / f.name)
        shutil.copy(run.path / "summary.json", tmp / "sft_summary.json")
        shutil.rmtree(tmp / "runs")
        shutil.rmtree(init_dir)

    return build_dir(base_model_target(world, size), build)


def ensure_model(name: str | None, options: WorldOptions | None = None) -> Path | None:
    """``<world>[:<size>]`` -> its base model directory (built if needed); None for other names."""
    if not name:
        return None
    parsed = parse_model_name(name)
    if parsed is None:
        return None
    return ensure_base_model(get_world(parsed[0], options), parsed[1])


#: every spec field that may name a model
MODEL_FIELDS = (("model", "name_or_path"), ("model", "reference"), ("eval", "baseline"),
                ("eval", "reward_model"), ("eval", "judge_model"))


def ensure_spec_models(spec: RunSpec) -> None:
    """Build every world base model the spec names, before anything loads one."""
    options = world_options(spec.data)
    for section, key in MODEL_FIELDS:
        ensure_model(getattr(getattr(spec, section), key), options)


def default_model(spec: RunSpec) -> str:
    """``model.name_or_path``, or the data world's default base model when it is not set."""
    if spec.model.name_or_path:
        return spec.model.name_or_path
    try:
        world = source_world(spec.data.source)
    except WorldError as e:
        raise SpecError(str(e)) from None
    if world is not None and get_world(world).base_models:
        return world
    raise SpecError(f"model.name_or_path: data={spec.data.source!r} has no base model of its own; name one with model=...")


def resolve_model_path(spec: RunSpec) -> str:
    """The directory (or hub id) to load: a world base model built if needed, a run dir's final/."""
    name = default_model(spec)
    return resolve_model_dir(str(ensure_model(name, world_options(spec.data)) or name))


def resolve_data_source(spec: RunSpec, kind: DataKind) -> str:
    """The file or hub id a run's data loads from: a world's split for its data kind, a FLAN
    mixture's rows (built and cached on first use), or ``data.source`` itself."""
    if mixtures.parse_source(spec.data.source) is not None:
        return str(flan_mixture(spec).path)
    if not is_world(spec.data.source):
        return spec.data.source
    return str(get_world(spec.data.source, world_options(spec.data)).data_path(kind))


# --------------------------------------------------------------------------- data recipes (flan:<world>)


def recipe_catalog(spec: RunSpec) -> Any:
    """The task catalog behind ``data=flan:<world>``; a :class:`SpecError` when the world has none."""
    try:
        name = source_world(spec.data.source)
    except (WorldError, mixtures.MixtureError) as e:
        raise SpecError(str(e)) from None
    world = get_world(name, world_options(spec.data)) if name is not None else None
    make = getattr(world, "task_catalog", None)
    if not callable(make):
        from harness.worlds.base import WORLDS, load_worlds

        load_worlds()
        able = [w for w in WORLDS.names() if callable(getattr(WORLDS.get(w), "task_catalog", None))]
        raise SpecError(
            f"data.source={spec.data.source!r}: world {name!r} defines no task catalog (tasks in clusters with "
            f"instruction templates), so it cannot make a FLAN mixture; worlds that can: {', '.join(able) or 'none'}")
    return make()


def check_recipe(spec: RunSpec, adapter: MethodAdapter) -> None:
    """Before any model loads: a ``flan:`` source names a world with a task catalog, feeds a method
    that trains on SFT rows directly, and its clusters / templates / weights resolve; ``data.mixture``
    and ``data.templates`` are not set for any other source (they would be ignored)."""
    recipe = mixtures.parse_source(spec.data.source) if spec.data.source else None
    if recipe is None:
        defaults = DataSpec()
        changed = [f"data.mixture.{k}" for k, v in to_dict(spec.data.mixture).items() if v != to_dict(defaults.mixture)[k]]
        changed += ["data.templates"] if spec.data.templates != defaults.templates else []
        # a pipeline's train stage inherits its pipeline's data section with a file as its source
        if changed and "stage" not in spec.tags:
            raise SpecError(f"{', '.join(changed)}: set for data={spec.data.source!r}, but only a FLAN mixture "
                            f"(data={mixtures.RECIPES[0]}:<world>) reads them")
        return
    if callable(getattr(adapter, "pipeline", None)):
        raise SpecError(f"data={spec.data.source!r}: method {adapter.name!r} is a pipeline, which reads its world's "
                        f"own splits, not a mixture; use data={recipe.world} (or a mixture with method=sft)")
    if adapter.data_kind != DataKind.SFT:
        raise SpecError(f"data={spec.data.source!r}: a FLAN mixture is SFT data (prompt/completion rows), but method "
                        f"{adapter.name!r} trains on {adapter.data_kind.value} data")
    if spec.data.split != "train" or spec.data.eval_split is not None or spec.data.format not in (None, "sft"):
        raise SpecError(f"data={spec.data.source!r}: a mixture is one split of prompt/completion rows; leave "
                        "data.split, data.eval_split and data.format unset (data.eval_fraction holds rows out)")
    try:
        mixtures.resolve(recipe_catalog(spec), spec.data)
    except mixtures.MixtureError as e:
        raise SpecError(str(e)) from None


def flan_mixture(spec: RunSpec) -> mixtures.Mixture:
    """The mixture ``data=flan:<world>`` asks for (built once per content key, then read from the cache)."""
    try:
        return mixtures.build(recipe_catalog(spec), spec.data, spec.data.source)
    except mixtures.MixtureError as e:
        raise SpecError(str(e)) from None


LOCAL_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".yaml", ".yml", ".safetensors", ".bin", ".arrow"}


def looks_local(value: str) -> bool:
    """A local path rather than a hub id (``Qwen/Qwen2.5-0.5B-Instruct`` has a dot but is an id)."""
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in LOCAL_SUFFIXES


def check_spec(spec: RunSpec) -> MethodAdapter:
    """Cheap checks that need no model and no data: local paths exist, sizes fit, the run would
    take at least one optimizer step when that is knowable from the spec, evaluation has
    something to evaluate.  This is the dry run: sweeps call it on every trial spec."""
    load_methods()
    adapter = METHODS.get(spec.method_name)
    for label, value in (("model.name_or_path", spec.model.name_or_path), ("data.source", spec.data.source),
                         ("model.reference", spec.model.reference), ("eval.prompts", spec.eval.prompts),
                         ("eval.rm_pairs", spec.eval.rm_pairs), ("eval.baseline", spec.eval.baseline),
                         ("eval.reward_model", spec.eval.reward_model)):
        if value and looks_local(value) and not Path(value).expanduser().exists():
            raise SpecError(f"{label}: {value!r} does not exist")
    for section, key in MODEL_FIELDS:
        try:
            parse_model_name(getattr(getattr(spec, section), key) or "")
        except WorldError as e:
            raise SpecError(f"{section}.{key}: {e}") from None
    spec.model.name_or_path = default_model(spec)
    check_recipe(spec, adapter)
    # also a TrainSpec rule at parse time; a spec changed after parsing arrives here unchecked
    if spec.train.max_prompt_length >= spec.train.max_length:
        raise SpecError(
            f"train.max_prompt_length ({spec.train.max_prompt_length}) must be below train.max_length ({spec.train.max_length})"
        )
    _check_work_bound(spec)
    _check_single_file(spec, adapter)
    if spec.eval.enabled:
        from harness.evaluation.evaluate import check_eval_spec

        # a bad eval section must not cost a training run; local prompt files are read now
        prompts = spec.eval.prompts or spec.eval.world or spec.data.source
        check_eval_spec(spec, load_prompts=is_world(prompts) or looks_local(prompts)
                        or (spec.eval.prompts is None and mixtures.parse_source(prompts) is not None))
    if spec.model.reference and not adapter.needs_reference:
        raise SpecError(f"model.reference is set but method {adapter.name!r} uses no reference model")
    if is_online(adapter):
        try:
            check_source(spec, pairwise_method=bool(getattr(adapter, "pairwise", False)))
        except ValueError as e:
            raise SpecError(str(e)) from None
    peft_setup.check(spec, adapter.model_kind)
    return adapter


def processes() -> int:
    """Data-parallel processes this run will have (``accelerate launch`` / torchrun set WORLD_SIZE)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def _per_step(spec: RunSpec) -> tuple[int, str]:
    """Examples one optimizer step consumes (prompts of one rollout for online methods)."""
    t = spec.train
    n = processes()
    what = f"train.batch_size={t.batch_size} x train.grad_accum={t.grad_accum}" + (f" x {n} processes" if n > 1 else "")
    adapter = METHODS.get(spec.method_name)
    if is_online(adapter):
        m = adapter.rollout_plan(spec.method.hp).minibatches  # type: ignore[attr-defined]
        if m > 1:
            return t.batch_size * t.grad_accum * n * m, what + f" x {m} minibatches (prompts of one rollout)"
    return t.batch_size * t.grad_accum * n, what


def check_work(spec: RunSpec, n_train: int, n_eval: int) -> int:
    """The number of optimizer steps the run will take, from the real example counts; a run
    that would take none (or that asks for periodic eval with nothing held out) is a
    :class:`SpecError`, raised before any model loads."""
    t = spec.train
    per_step, what = _per_step(spec)
    if n_train < per_step:
        held = f" ({n_eval} more held out for evaluation)" if n_eval and spec.data.eval_split is None else ""
        raise SpecError(
            f"the run would take zero optimizer steps: the training data has {n_train} examples{held}, fewer "
            f"than one optimizer step needs ({what} = {per_step}); lower train.batch_size / train.grad_accum or "
            "use more data (data.max_samples)"
        )
    if t.eval_every and n_eval == 0:
        raise SpecError(
            f"train.eval_every={t.eval_every}: there are no held-out examples to evaluate (data.eval_fraction="
            f"{spec.data.eval_fraction} of {n_train} examples is none); raise data.eval_fraction, set "
            "data.eval_split, or unset train.eval_every"
        )
    return t.max_steps if t.max_steps is not None else t.epochs * (n_train // per_step)


def _check_work_bound(spec: RunSpec) -> None:
    """With ``data.max_samples`` the data can hold no more examples than that: zero work is knowable now."""
    d = spec.data
    if d.max_samples is None or d.eval_split is not None:
        return
    n_eval = int(d.max_samples * d.eval_fraction)
    per_step, what = _per_step(spec)
    if d.max_samples - n_eval < per_step:
        held = f" with data.eval_fraction={d.eval_fraction}" if n_eval else ""
        raise SpecError(
            f"the run would take zero optimizer steps: data.max_samples={d.max_samples}{held} leaves at most "
            f"{d.max_samples - n_eval} training examples, fewer than one optimizer step needs ({what} = {per_step})"
        )
    if spec.train.eval_every and n_eval == 0:
        raise SpecError(
            f"train.eval_every={spec.train.eval_every}: data.eval_fraction={d.eval_fraction} of "
            f"data.max_samples={d.max_samples} holds out no examples; raise data.eval_fraction, set "
            "data.eval_split, or unset train.eval_every"
        )


def _check_single_file(spec: RunSpec, adapter: MethodAdapter) -> None:
    """A single local data file holds one split: say what works instead of a hint that cannot."""
    src = spec.data.source
    if is_world(src) or not Path(src).expanduser().is_file():
        return
    if spec.data.eval_split is not None:
        raise SpecError(
            f"data.eval_split={spec.data.eval_split!r}: data.source {src!r} is a single file, which holds one "
            "split (train); drop data.eval_split (data.eval_fraction holds out part of the file) or point "
            "data.source at a directory with one file per split (train.jsonl, test.jsonl, ...)"
        )
    if not spec.eval.enabled or spec.eval.world is not None:  # eval.world provides held-out prompts and pairs
        return
    if adapter.model_kind == "reward":
        if spec.eval.rm_pairs is None:
            raise SpecError(
                f"eval: data.source {src!r} is a single file, so there are no held-out preference pairs for "
                "reward-model accuracy; set eval.rm_pairs=<file of held-out pairs>, or eval.enabled=false"
            )
    elif spec.eval.prompts is None:
        raise SpecError(
            f"eval: data.source {src!r} is a single file, so there are no held-out instructions to evaluate "
            f"on; set eval.prompts=<file with a prompt column> (eval.prompts={src} reuses the training "
            "prompts), eval.world=<a built-in world>, or eval.enabled=false"
        )


def check_model_source(label: str, path: str, spec: RunSpec, shown: str | None = None, positions: bool = True) -> Any:
    """Read a model's config (a few KB, no weights) before any data or weights load: an unknown
    or unreachable hub id fails naming the id (and whether the process is offline), and a
    ``train.max_length`` beyond the model's positions fails before training.  Returns the config
    (None for a local directory without one, e.g. a bare adapter, which loading will judge).
    ``shown``: the name the user gave (``toy:tiny``) when ``path`` is what it resolved to;
    ``positions``: whether train.max_length must fit the model (the trained model and its reference)."""
    from transformers import AutoConfig

    from harness.data.load import hub_unavailable

    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").is_file():
        return None
    try:
        # model.revision names a revision of the model (and its reference), not of evaluation's models
        revision = spec.model.revision if label.startswith("model.") else None
        cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=spec.model.trust_remote_code)
    except Exception as e:  # hub, network and parsing errors come in many types
        if local.exists():
            raise SpecError(f"{label}: {path!r}: cannot read its config: {type(e).__name__}: {e}") from None
        raise SpecError(f"{label}: {hub_unavailable('model', path, e)}") from None
    cfg = getattr(cfg, "text_config", None) or cfg
    limit = next((v for a in ("max_position_embeddings", "n_positions", "max_sequence_length")
                  if isinstance(v := getattr(cfg, a, None), int) and v > 0), None)
    if positions and limit is not None and spec.train.max_length > limit:
        raise SpecError(
            f"train.max_length={spec.train.max_length} exceeds the {limit} positions of {label} {shown or path!r}; "
            f"use train.max_length<={limit}"
        )
    return cfg


SKIP_HINT = "data.skip_bad_rows=true skips malformed rows and lists them in the run's skipped_rows.jsonl"


def prepare(spec: RunSpec, adapter: MethodAdapter | None = None) -> Prepared:
    """``adapter``: the result of :func:`check_spec` when the caller already ran it.

    Every check here still comes before any weights load: the model's config (hub id,
    positions), then the data (malformed rows), then the number of optimizer steps."""
    from transformers import AutoTokenizer

    from harness.data.load import load_records

    adapter = adapter or check_spec(spec)
    kind = adapter.data_kind
    model_path = resolve_model_path(spec)
    check_model_source("model.name_or_path", model_path, spec, spec.model.name_or_path)
    ref = model_path
    if spec.model.reference:
        ref = resolve_model_dir(str(ensure_model(spec.model.reference, world_options(spec.data)) or spec.model.reference))
        check_model_source("model.reference", ref, spec, spec.model.reference)
    if spec.eval.enabled:  # a hub id evaluation would use must not fail only after training
        for label, name in (("eval.baseline", spec.eval.baseline), ("eval.reward_model", spec.eval.reward_model)):
            if name and parse_model_name(name) is None and not Path(name).expanduser().exists():
                check_model_source(label, name, spec, positions=False)
    mixture = flan_mixture(spec) if mixtures.parse_source(spec.data.source) is not None else None
    source = str(mixture.path) if mixture is not None else resolve_data_source(spec, kind)
    # data first: a malformed row should stop the run before any model loads
    loaded = load_records(source, spec.data.split, kind, fmt=spec.data.format, max_samples=spec.data.max_samples,
                          skip_bad_rows=spec.data.skip_bad_rows, hint_skip=SKIP_HINT)
    records = loaded.records
    skipped = list(loaded.skipped)
    train_idx: list[int] = list(range(len(records)))
    eval_idx: list[int] = []
    if spec.data.eval_split is not None:
        held = load_records(source, spec.data.eval_split, kind, fmt=spec.data.format,
                            skip_bad_rows=spec.data.skip_bad_rows, hint_skip=SKIP_HINT)
        eval_records = held.records
        skipped += held.skipped
    else:
        # a fixed split (not the run seed) so every trial of a sweep sees the same held-out set
        n_eval = int(len(records) * spec.data.eval_fraction)
        g = torch.Generator().manual_seed(1234)
        perm = torch.randperm(len(records), generator=g).tolist()
        eval_idx, train_idx = perm[:n_eval], sorted(perm[n_eval:])
        eval_records = [records[i] for i in eval_idx]
        records = [records[i] for i in train_idx]
    mixture_info = _mixture_used(mixture, loaded.records, train_idx, eval_idx) if mixture is not None else None
    total = check_work(spec, len(records), len(eval_records))
    tok = AutoTokenizer.from_pretrained(model_path, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    t = spec.train
    tok_cache = cache_dir("tokenized") if t.ref_cache else None
    train_ex = tokenize_cached(records, tok, kind, t.max_length, t.max_prompt_length, tok_cache)
    eval_ex = tokenize_cached(eval_records, tok, kind, t.max_length, t.max_prompt_length, tok_cache)
    return Prepared(adapter, model_path, ref, tok, train_ex, eval_ex, loaded.source, len(skipped),
                    skipped=skipped, total_steps=total, train_records=records, mixture=mixture_info)


def _mixture_used(mixture: mixtures.Mixture, records: list[dict[str, Any]], train_idx: list[int],
                  eval_idx: list[int]) -> dict[str, Any]:
    """mixture.json plus the rows this run trains on and holds out, counted per task and template
    from the mixture's own rows (records are its rows in order: one record per row, none skipped)."""
    rows = mixture.rows()[: len(records)]  # data.max_samples keeps the first N
    if len(rows) != len(records) or any(r["prompt"] != rec["prompt"][-1]["content"] for r, rec in zip(rows, records)):
        raise RuntimeError(f"{mixture.path}: the loaded records are not the mixture's rows in order; "
                           "the mixture and what the run trains on would differ")
    return {**mixture.info, "file": str(mixture.path),
            "train_rows": mixtures.counts_of([rows[i] for i in train_idx]), "n_train_rows": len(train_idx),
            "eval_loss_rows": mixtures.counts_of([rows[i] for i in eval_idx]), "n_eval_loss_rows": len(eval_idx)}


def load_model(path: str, spec: RunSpec, model_kind: str, pad_id: int, with_peft: bool = True) -> Any:
    """The model to train (``with_peft``: the spec's adapter on its base) or a plain reference."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kw: dict[str, Any] = {"revision": spec.model.revision, "trust_remote_code": spec.model.trust_remote_code,
                          "dtype": torch.float32}
    if with_peft:
        # a target module the model lacks fails here, before the weights load
        peft_setup.check_targets_for(path, spec.peft, model_kind, spec.model.revision, spec.model.trust_remote_code)
        kw.update(peft_setup.load_kwargs(spec.peft))
    if model_kind == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kw)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kw)
    model.config.pad_token_id = pad_id
    return peft_setup.apply(model, spec, model_kind) if with_peft else model


def make_accelerator(spec: RunSpec) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    # accelerate keeps one global state per process; runs made one after another in a
    # single-process session (tests, the quickstart) may each ask for another precision
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision="bf16" if spec.train.precision == "bf16" else "no",
        cpu=not torch.cuda.is_available(),
        # total_steps counts global optimizer steps; accelerate would otherwise advance the
        # schedule once per process per step (it assumes per-process step counts)
        step_scheduler_with_optimizer=False,
    )


def autocast_for(spec: RunSpec, device: torch.device) -> torch.autocast | None:
    if spec.train.precision != "bf16":
        return None
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compute_references(prep: Prepared, spec: RunSpec, model: Any, accelerator: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Reference log-probs of train and eval examples (cached); loads a reference model
    only when it differs from the policy's starting weights and the cache misses."""
    adapter = prep.adapter
    segs = SEGMENTS[adapter.data_kind]
    info: dict[str, Any] = {"hits": 0, "misses": 0}
    # the reference loads at the run's revision (a hub id's commit, not its name) with its remote code
    fp = weights_fingerprint(prep.reference_path, revision=spec.model.revision,
                             trust_remote_code=spec.model.trust_remote_code)
    # an adapter's frozen base is the reference even on resume: it is the policy with the
    # adapter disabled (peft_setup.reference_context), never a second copy
    adapted = peft_setup.is_adapter_model(model)
    same_as_policy = prep.reference_path == prep.model_path and (spec.train.resume_from is None or adapted)
    base_key = peft_setup.reference_key(spec) if same_as_policy else None
    ref_model: list[Any] = []

    def ref() -> Any:
        if same_as_policy:
            return model  # the policy before its first update is the reference
        if not ref_model:
            ref_model.append(load_model(prep.reference_path, spec, "causal_lm", prep.tokenizer.pad_token_id,
                                        with_peft=False).to(accelerator.device))
            configure(ref_model[0], ForwardOptions(spec.train.logprobs, spec.train.packing, spec.train.share_prompts))
        return ref_model[0]

    def compute(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        m = ref()
        with peft_setup.reference_context(m):
            return compute_reference_logps(m, examples, segs, prep.tokenizer.pad_token_id, spec.train.batch_size,
                                           autocast_for(spec, accelerator.device), accelerator.device)

    out: list[dict[str, torch.Tensor] | None] = []
    for examples in (prep.train_examples, prep.eval_examples):
        if not examples:
            out.append(None)
            continue
        # the token ids carry the data, tokenizer, chat template and lengths; the weights and the
        # precision the rest (batch size only pads, which the attention mask hides)
        key: dict[str, Any] = {"v": LOGPS_VERSION, "weights": fp, "data": fingerprint(examples),
                               "segments": list(segs), "precision": spec.train.precision}
        if base_key is not None:
            key["base"] = base_key
        values, hit = reference_logps(
            key,
            functools.partial(compute, examples),
            cache_dir("refcache") if spec.train.ref_cache else None,
        )
        info["hits" if hit else "misses"] += 1
        out.append(values)
    ref_model.clear()
    return out[0], out[1], info


class _FollowerRun(Run):
    """The run as seen by processes other than the main one of a multi-process run: the same
    directory, read-only (the main process writes status, metrics, summary and weights)."""

    def write_config(self, config: dict[str, Any]) -> None:
        return None

    def write_env(self) -> None:
        return None

    def set_status(self, status: str, **extra: Any) -> None:
        return None

    def log_metrics(self, row: dict[str, Any]) -> None:
        return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        return None

    def beat(self) -> bool:
        return False


def _processes() -> Any:
    from accelerate.state import PartialState

    # on a CPU-only host a launched group is only seen with cpu=True (gloo); a GPU host uses NCCL
    return PartialState(cpu=not torch.cuda.is_available())


def _open_run(spec: RunSpec) -> tuple[Run, Path | None]:
    """The run directory; with several processes (torchrun / accelerate launch) the main one
    creates it and the others follow it read-only."""
    state = _processes()
    if state.num_processes == 1:
        return _open_run_here(spec)
    box: list[Any] = [None]
    if state.is_main_process:
        run, ckpt = _open_run_here(spec)
        box = [(str(run.path), None if ckpt is None else str(ckpt))]
    torch.distributed.broadcast_object_list(box, src=0)
    path, ckpt_s = box[0]
    run = Run(path) if state.is_main_process else _FollowerRun(path)
    return run, None if ckpt_s is None else Path(ckpt_s)


#: spec keys a resume may change because they cannot alter the trained weights: evaluation,
#: tracking, labels, logging / eval / checkpoint cadence, caching, the progress bar, where the
#: spec says the run lives (the checkpoint decides that).  How long training goes
#: (train.max_steps / train.epochs) may grow: see :func:`_check_resume_length`.
RESUME_SAFE = ("eval.", "tracking.", "tags", "train.resume_from", "train.progress", "train.log_every",
               "train.eval_every", "train.save_every", "train.ref_cache", "name", "output_dir")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d and prefix:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _resume_safe(key: str) -> bool:
    return any(key == s or key.startswith(s if s.endswith(".") else s + ".") for s in RESUME_SAFE)


def _check_resume_length(saved: dict[str, Any], now_: dict[str, Any], step: int) -> None:
    """More steps or epochs may be trained than the run first asked for; never fewer (the
    schedule the finished steps followed would change), never a switch between the two."""
    old_steps, new_steps = saved.get("train.max_steps"), now_.get("train.max_steps")
    old_epochs, new_epochs = saved.get("train.epochs"), now_.get("train.epochs")
    if (old_steps is None) != (new_steps is None):
        raise SpecError(
            f"train.max_steps: the run was set to {'max_steps=' + str(old_steps) if old_steps else f'epochs={old_epochs}'};"
            " a resume may raise that number but not switch between train.max_steps and train.epochs"
        )
    if new_steps is not None and new_steps < old_steps:
        raise SpecError(f"train.max_steps={new_steps}: the run was set to {old_steps} steps; a resume may only train longer")
    if new_steps is not None and new_steps <= step:
        raise SpecError(f"train.max_steps={new_steps}: the checkpoint is at step {step}, so nothing is left to train")
    if new_steps is None and isinstance(old_epochs, int) and isinstance(new_epochs, int) and new_epochs < old_epochs:
        raise SpecError(f"train.epochs={new_epochs}: the run was set to {old_epochs} epochs; a resume may only train longer")


def _open_run_here(spec: RunSpec) -> tuple[Run, Path | None]:
    """A new run directory, or the run a checkpoint belongs to when resuming.  A resume is
    refused, before anything is written, when the run is completed or alive, or when the spec
    differs from the run's own (config.yaml) in anything but :data:`RESUME_SAFE` keys."""
    if not spec.train.resume_from:
        return Run.create(spec.output_dir, spec.name, prefix=spec.method_name), None
    ckpt = Path(spec.train.resume_from).expanduser()
    if not (ckpt / "trainer_state.json").exists():
        raise SpecError(f"train.resume_from: {str(ckpt)!r} is not a complete checkpoint (no trainer_state.json)")
    run = Run(ckpt.parent.parent)
    if ckpt.parent.name != "checkpoints" or not (run.path / "config.yaml").is_file():
        raise SpecError(f"train.resume_from: {str(ckpt)!r} is not inside a run directory (<run>/checkpoints/step-N "
                        "next to the run's config.yaml)")
    status = run.live_status()
    state = status.get("status")
    if state == "completed":
        raise SpecError(f"train.resume_from: run {str(run.path)!r} is completed and is never reopened; "
                        "start a new run (another name=) to train further")
    if state == "running":
        raise SpecError(f"train.resume_from: run {str(run.path)!r} is running (pid {status.get('pid')} on "
                        f"{status.get('host')}); resume it once it has ended")
    if spec.name is not None and spec.name != run.name:
        raise SpecError(f"name={spec.name!r}: train.resume_from belongs to run {run.name!r}; drop name= or make it match")
    step = int(json.loads((ckpt / "trainer_state.json").read_text())["step"])
    try:
        saved = _flat(run.config())
    except Exception as e:  # a hand-edited or torn file: the resume cannot be checked, so it is refused
        raise SpecError(f"train.resume_from: cannot read run {run.name!r}'s config.yaml to check the resume against: "
                        f"{type(e).__name__}: {e}") from None
    current = _flat(spec_to_dict(spec))
    changed = sorted(k for k in saved.keys() | current.keys()
                     if not _resume_safe(k) and k not in ("train.max_steps", "train.epochs")
                     and saved.get(k, "<unset>") != current.get(k, "<unset>"))
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {current.get(k, '<unset>')!r}" for k in changed[:12])
        more = f" and {len(changed) - 12} more" if len(changed) > 12 else ""
        raise SpecError(
            f"train.resume_from: the spec differs from run {run.name!r}'s own in {', '.join(changed[:12])}{more} "
            f"({shown}); a resume may change only evaluation, tracking, logging and checkpoint cadence, "
            "and train longer (train.max_steps / train.epochs): start a new run for another configuration"
        )
    _check_resume_length(saved, current, step)
    # rows logged after the checkpoint by the interrupted attempt are replayed by this one
    kept = [r for r in run.metrics() if int(r.get("step", 0)) <= step]
    atomic_write_text(run.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    return run, ckpt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (like Ctrl-C's KeyboardInterrupt), so
    the run records ``interrupted`` instead of dying with ``running`` on disk.  Only the main
    thread can own signal handlers; elsewhere the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated by SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def record_end(run: Run, tracker: Any, status: str, exc: BaseException | None = None, **extra: Any) -> None:
    """Record how a run ended without hiding why: when a bookkeeping write fails too (full disk,
    the directory gone), that is logged and noted on the original error, which the caller re-raises."""
    steps: list[tuple[str, Any]] = [("status.json", lambda: run.set_status(status, **extra))]
    if status == "failed" and not isinstance(run, _FollowerRun):
        trace = traceback.format_exc()
        steps.append(("error.txt", lambda: (run.path / "error.txt").write_text(trace)))
    if tracker is not None:
        steps.append(("tracker", lambda: tracker.finish(status)))
    for what, step in steps:
        try:
            step()
        except Exception as e:
            note = f"could not record status {status!r} ({what}) in {run.path}: {type(e).__name__}: {e}"
            log.error(note)
            if exc is not None and hasattr(exc, "add_note"):
                exc.add_note(note)


def execute(spec: RunSpec, hooks: TrainHooks | None = None, tracking: str | None = None) -> Run:
    """Train (and evaluate) one run; returns its store handle.  Raises after recording failures."""
    t_start = time.perf_counter()
    adapter = check_spec(spec)
    if _processes().num_processes > 1:
        # a base-model build is itself a (single-process) run: it cannot happen inside a launched group
        for section, key in MODEL_FIELDS:
            name = getattr(getattr(spec, section), key)
            try:
                find_base_model(name or "", world_options(spec.data))
            except WorldError as e:
                raise SpecError(f"{section}.{key}: {e}; build it before launching several processes") from None
    else:
        ensure_spec_models(spec)
    run, resume = _open_run(spec)
    main = not isinstance(run, _FollowerRun)
    run.write_config(spec_to_dict(spec))
    run.write_env()
    timing: dict[str, float] = {}
    hooks = hooks or TrainHooks()
    user_first_step = hooks.on_first_step
    tracker: Any = None

    def first_step() -> None:
        timing["setup_time_s"] = time.perf_counter() - t_start
        # from here on the run has trained: its directory is a record worth keeping (see Run.never_trained)
        if "first_step_at" not in run.status():
            run.set_status("running", first_step_at=now())
        if user_first_step:
            user_first_step()

    user_on_log = hooks.on_log

    def on_log(row: dict[str, Any]) -> None:
        tracker.log(row, step=int(row["step"]))
        if user_on_log:
            user_on_log(row)

    hooks = TrainHooks(on_eval=hooks.on_eval, on_log=on_log, on_first_step=first_step)
    heartbeat = Heartbeat(run, extra={"resumed_from": str(resume)} if resume else None)
    with sigterm_interrupts(), heartbeat:
        try:
            tracker = _tracker(spec, run, tracking)
            torch.manual_seed(spec.seed)
            prep = prepare(spec, adapter)
            if prep.skipped:
                atomic_write_text(run.path / "skipped_rows.jsonl", "".join(json.dumps(r) + "\n" for r in prep.skipped))
            if prep.mixture is not None and main:
                atomic_write_text(run.path / "mixture.json", json.dumps(prep.mixture, indent=1) + "\n")
            accelerator = make_accelerator(spec)
            model = load_model(prep.model_path, spec, adapter.model_kind, prep.tokenizer.pad_token_id).to(accelerator.device)
            configure(model, ForwardOptions(spec.train.logprobs, spec.train.packing, spec.train.share_prompts))
            if peft_setup.uses_adapter(spec.peft):
                peft_setup.register_checkpoint_hooks(accelerator)  # checkpoints hold the adapter only
            ref_train = ref_eval = None
            ref_info: dict[str, Any] = {}
            t = spec.train
            online = setup_online(prep, spec, model, accelerator, load_reference=functools.partial(
                load_model, prep.reference_path, spec, "causal_lm", prep.tokenizer.pad_token_id, with_peft=False)
            ) if is_online(adapter) else None
            source: StepSource  # rollouts (online) or fixed batches (offline)
            if online is not None:
                source, critic, total = online.source, online.critic, online.total_steps
            else:
                if adapter.needs_reference:
                    ref_train, ref_eval, ref_info = compute_references(prep, spec, model, accelerator)
                total = total_steps_for(len(prep.train_examples), t.batch_size, t.grad_accum,
                                        accelerator.num_processes, t.epochs, t.max_steps)
                source = OfflineSource(prep.train_examples, ref_train, SEGMENTS[adapter.data_kind],
                                       prep.tokenizer.pad_token_id, t.batch_size, t.grad_accum,
                                       accelerator.num_processes, accelerator.process_index, spec.seed)
                critic = None
            cfg = LoopConfig(
                lr=t.lr, schedule=t.schedule, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
                max_grad_norm=t.max_grad_norm, batch_size=t.batch_size, grad_accum=t.grad_accum, total_steps=total,
                precision=t.precision, gradient_checkpointing=t.gradient_checkpointing, log_every=t.log_every,
                eval_every=t.eval_every, save_every=t.save_every, seed=spec.seed, progress=t.progress,
                optimizer=t.optimizer,
            )
            result = train(
                adapter=adapter, hp=spec.method.hp, model=model, accelerator=accelerator, cfg=cfg, source=source,
                eval_examples=[] if online is not None else prep.eval_examples, pad_id=prep.tokenizer.pad_token_id,
                eval_reference=ref_eval, run=run, resume_from=resume, hooks=hooks, critic=critic,
                critic_lr=getattr(spec.method.hp, "value_lr", None),
            )
            if result.steps == 0:
                raise RuntimeError(f"no optimizer step was taken ({result.stopped_early or 'nothing to train on'}); "
                                   "nothing was saved as final")
            t_after = time.perf_counter()
            unwrapped = accelerator.unwrap_model(model)
            if accelerator.is_main_process:
                unwrapped.save_pretrained(run.final_dir)
                prep.tokenizer.save_pretrained(run.final_dir)
                peft_setup.save_meta(run.final_dir, spec, prep.model_path)
            summary: dict[str, Any] = {
                "method": adapter.name, "status": "completed", "steps": result.steps,
                "final_loss": result.losses[-1] if result.losses else None,
                "final_metrics": result.final_metrics, "eval_loss_metrics": result.eval_metrics,
                "train_time_s": result.train_time_s, "tokens": result.tokens, "tokens_per_s": result.tokens_per_s,
                "peak_memory_mb": result.peak_memory_mb, "trainable_params": result.trainable_params,
                "total_params": result.total_params,
                "trainable_share": result.trainable_params / max(result.total_params, 1),
                "n_train_examples": len(prep.train_examples), "n_eval_examples": len(prep.eval_examples),
                "n_skipped_rows": prep.n_skipped, "data": prep.data_desc, "model_path": prep.model_path,
                "reference_cache": ref_info, "setup_time_s": timing.get("setup_time_s"),
                "device": str(accelerator.device), "processes": accelerator.num_processes,
            }
            if prep.mixture is not None:
                m = prep.mixture
                summary["mixture"] = {k: m[k] for k in ("source", "mixing", "clusters", "templates", "rows",
                                                         "by_cluster", "by_template", "n_train_rows", "key")}
                summary["mixture"]["details"] = "mixture.json"
            if resume is not None:
                summary["resumed_from"] = str(resume)
            if result.stopped_early:
                summary["stopped_early"] = result.stopped_early
            if online is not None:
                summary["online"] = online.summary()
            # adapter runs: parameterisation, and counts with 4-bit weights unpacked
            summary.update(peft_setup.summary_fields(unwrapped, spec, prep.model_path))
            if spec.eval.enabled and main:
                summary["eval"] = _evaluate(run, spec, prep, unwrapped, tracker)
            summary["teardown_time_s"] = time.perf_counter() - t_after
            summary["wall_time_s"] = time.perf_counter() - t_start
            summary["gpu_hours"] = summary["wall_time_s"] / 3600 * (torch.cuda.device_count() if torch.cuda.is_available() else 0)
            run.write_summary(summary)
            tracker.log_summary(summary)
            run.set_status("completed")
            tracker.finish("completed")
            return run
        except KeyboardInterrupt as e:
            record_end(run, tracker, "interrupted", e,
                        reason="terminated by SIGTERM" if isinstance(e, Terminated) else "interrupted (Ctrl-C)")
            raise
        except BaseException as e:
            if type(e).__name__ == "TrialPruned":
                record_end(run, tracker, "pruned", e, reason=str(e))
                raise
            record_end(run, tracker, "failed", e, error=f"{type(e).__name__}: {e}")
            raise


def _evaluate(run: Run, spec: RunSpec, prep: Prepared, model: Any, tracker: Any) -> dict[str, Any]:
    from harness.evaluation.evaluate import evaluate_trained

    # KL and win rates are measured against the starting point: the reference when the
    # method has one, else the model the run started from
    return evaluate_trained(run=run, spec=spec, model=model, tokenizer=prep.tokenizer,
                            baseline_path=prep.reference_path if prep.adapter.needs_reference else prep.model_path,
                            tracker=tracker)


def _tracker(spec: RunSpec, run: Run, override: str | None) -> Any:
    from harness.store.tracking import Tracker, make_tracker

    mode = override or spec.tracking.mode
    if mode == "disabled" or isinstance(run, _FollowerRun):
        return Tracker()
    tr = make_tracker(None if mode == "auto" else mode, project=spec.tracking.project)
    tr.start(run.path, run.name, spec_to_dict(spec), group=spec.tracking.group, job_type=spec.tracking.job_type or spec.method_name)
    return tr
