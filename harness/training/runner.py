"""Run one training job end to end: spec -> model, data, reference cache -> train -> save -> evaluate.

    harness run method=dpo                      # CLI entry (harness.cli.main)
    python -c "from harness.training.runner import execute; from harness.core.config import load_spec; execute(load_spec(None, ['method=dpo']))"

Writes ``runs/<name>/`` through ``harness.store.runs`` and keeps its status true to what
happened: ``completed``, ``failed`` (with the error), ``interrupted`` (Ctrl-C) or
``pruned`` (a sweep's pruner stopped it).  Sweeps call :func:`execute` in a trial
process with a pruning hook.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.config import RunSpec, load_spec, spec_to_dict
from harness.core.contract import METHODS, SEGMENTS, DataKind, MethodAdapter, load_methods
from harness.data.batching import fingerprint, tokenize_cached
from harness.modeling import peft_setup
from harness.modeling.identity import weights_fingerprint
from harness.store.cache import build_dir, cache_dir
from harness.store.runs import Run, atomic_write_text
from harness.training.loop import LoopConfig, TrainHooks, total_steps_for, train
from harness.training.refcache import compute_reference_logps, reference_logps
from harness.worlds.base import (
    BaseModel,
    WorldError,
    WorldOptions,
    base_model_target,
    get_world,
    is_world,
    parse_model_name,
    world_options,
)

#: bump when the log-prob computation changes numerically, so cached reference values are recomputed
LOGPS_VERSION = 2


class SpecError(ValueError):
    """The spec cannot run (found before any model loads)."""


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
    if is_world(spec.data.source) and get_world(spec.data.source).base_models:
        return spec.data.source
    raise SpecError(f"model.name_or_path: data={spec.data.source!r} has no base model of its own; name one with model=...")


def resolve_model_path(spec: RunSpec) -> str:
    name = default_model(spec)
    return str(ensure_model(name, world_options(spec.data)) or name)


def resolve_data_source(spec: RunSpec, kind: DataKind) -> str:
    if not is_world(spec.data.source):
        return spec.data.source
    return str(get_world(spec.data.source, world_options(spec.data)).data_path(kind))


LOCAL_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".yaml", ".yml", ".safetensors", ".bin", ".arrow"}


def looks_local(value: str) -> bool:
    """A local path rather than a hub id (``Qwen/Qwen2.5-0.5B-Instruct`` has a dot but is an id)."""
    return value.startswith((".", "/", "~")) or Path(value).suffix.lower() in LOCAL_SUFFIXES


def check_spec(spec: RunSpec) -> MethodAdapter:
    """Cheap checks that need no model: local paths exist, sizes fit."""
    load_methods()
    adapter = METHODS.get(spec.method_name)
    for label, value in (("model.name_or_path", spec.model.name_or_path), ("data.source", spec.data.source),
                         ("model.reference", spec.model.reference)):
        if value and looks_local(value) and not Path(value).expanduser().exists():
            raise SpecError(f"{label}: {value!r} does not exist")
    for section, key in MODEL_FIELDS:
        try:
            parse_model_name(getattr(getattr(spec, section), key) or "")
        except WorldError as e:
            raise SpecError(f"{section}.{key}: {e}") from None
    spec.model.name_or_path = default_model(spec)
    if spec.train.max_prompt_length >= spec.train.max_length:
        raise SpecError(
            f"train.max_prompt_length ({spec.train.max_prompt_length}) must be below train.max_length ({spec.train.max_length})"
        )
    if spec.eval.enabled:
        from harness.evaluation.evaluate import check_eval_spec

        # a bad eval section must not cost a training run; local prompt files are read now
        prompts = spec.eval.prompts or spec.data.source
        check_eval_spec(spec, load_prompts=is_world(prompts) or looks_local(prompts))
    if spec.model.reference and not adapter.needs_reference:
        raise SpecError(f"model.reference is set but method {adapter.name!r} uses no reference model")
    peft_setup.check(spec, adapter.model_kind)
    return adapter


def prepare(spec: RunSpec, adapter: MethodAdapter | None = None) -> Prepared:
    """``adapter``: the result of :func:`check_spec` when the caller already ran it."""
    from transformers import AutoTokenizer

    from harness.data.load import load_records

    adapter = adapter or check_spec(spec)
    kind = adapter.data_kind
    source = resolve_data_source(spec, kind)
    # data first: a malformed row should stop the run before any model loads
    loaded = load_records(source, spec.data.split, kind, fmt=spec.data.format,
                          max_samples=spec.data.max_samples, skip_bad_rows=spec.data.skip_bad_rows)
    records = loaded.records
    if spec.data.eval_split is not None:
        eval_records = load_records(source, spec.data.eval_split, kind, fmt=spec.data.format,
                                    skip_bad_rows=spec.data.skip_bad_rows).records
    else:
        # a fixed split (not the run seed) so every trial of a sweep sees the same held-out set
        n_eval = int(len(records) * spec.data.eval_fraction)
        g = torch.Generator().manual_seed(1234)
        perm = torch.randperm(len(records), generator=g).tolist()
        eval_records = [records[i] for i in perm[:n_eval]]
        records = [records[i] for i in sorted(perm[n_eval:])]
    model_path = resolve_model_path(spec)
    tok = AutoTokenizer.from_pretrained(model_path, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    t = spec.train
    tok_cache = cache_dir("tokenized") if t.ref_cache else None
    train_ex = tokenize_cached(records, tok, kind, t.max_length, t.max_prompt_length, tok_cache)
    eval_ex = tokenize_cached(eval_records, tok, kind, t.max_length, t.max_prompt_length, tok_cache)
    ref = model_path
    if spec.model.reference:
        ref = str(ensure_model(spec.model.reference, world_options(spec.data)) or spec.model.reference)
    return Prepared(adapter, model_path, ref, tok, train_ex, eval_ex, loaded.source, loaded.n_skipped)


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


def _open_run(spec: RunSpec) -> tuple[Run, Path | None]:
    if spec.train.resume_from:
        ckpt = Path(spec.train.resume_from)
        if not (ckpt / "trainer_state.json").exists():
            raise SpecError(f"train.resume_from: {str(ckpt)!r} is not a complete checkpoint (no trainer_state.json)")
        run = Run(ckpt.parent.parent)
        step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
        # rows logged after the checkpoint by the interrupted attempt are replayed by this one
        kept = [r for r in run.metrics() if int(r.get("step", 0)) <= step]
        atomic_write_text(run.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
        return run, ckpt
    return Run.create(spec.output_dir, spec.name, prefix=spec.method_name), None


def execute(spec: RunSpec, hooks: TrainHooks | None = None, tracking: str | None = None) -> Run:
    """Train (and evaluate) one run; returns its store handle.  Raises after recording failures."""
    t_start = time.perf_counter()
    adapter = check_spec(spec)
    ensure_spec_models(spec)
    run, resume = _open_run(spec)
    run.write_config(spec_to_dict(spec))
    run.write_env()
    run.set_status("running", pid=os.getpid(), host=os.uname().nodename)
    tracker = _tracker(spec, run, tracking)
    timing: dict[str, float] = {}
    hooks = hooks or TrainHooks()
    user_first_step = hooks.on_first_step

    def first_step() -> None:
        timing["setup_time_s"] = time.perf_counter() - t_start
        if user_first_step:
            user_first_step()

    user_on_log = hooks.on_log

    def on_log(row: dict[str, Any]) -> None:
        tracker.log(row, step=int(row["step"]))
        if user_on_log:
            user_on_log(row)

    hooks = TrainHooks(on_eval=hooks.on_eval, on_log=on_log, on_first_step=first_step)
    try:
        torch.manual_seed(spec.seed)
        prep = prepare(spec, adapter)
        accelerator = make_accelerator(spec)
        model = load_model(prep.model_path, spec, adapter.model_kind, prep.tokenizer.pad_token_id).to(accelerator.device)
        if peft_setup.uses_adapter(spec.peft):
            peft_setup.register_checkpoint_hooks(accelerator)  # checkpoints hold the adapter only
        ref_train = ref_eval = None
        ref_info: dict[str, Any] = {}
        if adapter.needs_reference:
            ref_train, ref_eval, ref_info = compute_references(prep, spec, model, accelerator)
        t = spec.train
        total = total_steps_for(len(prep.train_examples), t.batch_size, t.grad_accum, accelerator.num_processes, t.epochs, t.max_steps)
        cfg = LoopConfig(
            lr=t.lr, schedule=t.schedule, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm, batch_size=t.batch_size, grad_accum=t.grad_accum, total_steps=total,
            precision=t.precision, gradient_checkpointing=t.gradient_checkpointing, log_every=t.log_every,
            eval_every=t.eval_every, save_every=t.save_every, seed=spec.seed, progress=t.progress,
        )
        result = train(
            adapter=adapter, hp=spec.method.hp, model=model, accelerator=accelerator, cfg=cfg,
            train_examples=prep.train_examples, eval_examples=prep.eval_examples, pad_id=prep.tokenizer.pad_token_id,
            reference=ref_train, eval_reference=ref_eval, run=run, resume_from=resume, hooks=hooks,
        )
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
            "device": str(accelerator.device),
        }
        # adapter runs: parameterisation, and counts with 4-bit weights unpacked
        summary.update(peft_setup.summary_fields(unwrapped, spec, prep.model_path))
        if spec.eval.enabled:
            summary["eval"] = _evaluate(run, spec, prep, unwrapped, tracker)
        summary["teardown_time_s"] = time.perf_counter() - t_after
        summary["wall_time_s"] = time.perf_counter() - t_start
        summary["gpu_hours"] = summary["wall_time_s"] / 3600 * (torch.cuda.device_count() if torch.cuda.is_available() else 0)
        run.write_summary(summary)
        tracker.log_summary(summary)
        run.set_status("completed")
        tracker.finish("completed")
        return run
    except KeyboardInterrupt:
        run.set_status("interrupted")
        tracker.finish("interrupted")
        raise
    except BaseException as e:
        if type(e).__name__ == "TrialPruned":
            run.set_status("pruned", reason=str(e))
            tracker.finish("pruned")
            raise
        run.set_status("failed", error=f"{type(e).__name__}: {e}")
        (run.path / "error.txt").write_text(traceback.format_exc())
        tracker.finish("failed")
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
    if mode == "disabled":
        return Tracker()
    tr = make_tracker(None if mode == "auto" else mode, project=spec.tracking.project)
    tr.start(run.path, run.name, spec_to_dict(spec), group=spec.tracking.group, job_type=spec.tracking.job_type or spec.method_name)
    return tr
