"""The one training core every offline method runs on (accelerate underneath).

``harness.training.runner.execute`` calls :func:`train` after loading model, tokenizer and data;
the method adapter only supplies an objective on per-sequence log-probs.  What the core
does for every method:

* chosen and rejected (or completion and KL) sequences in ONE concatenated forward;
* reference log-probs computed once per (reference weights, tokenised data, lengths,
  precision) with :func:`reference_logps` and cached on disk, so no reference model is
  held or run during training, and later runs / sweep trials sharing them skip the pass;
* gradient accumulation normalised by the step's global counts (``Normalizer``), so
  2 micro-batches of 4 give the same gradient as 1 of 8 (tested);
* fp32 or bf16 autocast, gradient checkpointing, seeded data order, periodic held-out
  evaluation (a sweep's pruning hook sees it), checkpoints and exact resume.

Multi-GPU (``accelerate launch``) shards each step's micro-batches by process; DDP,
mixed precision and gradient sync are accelerate's.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.core.contract import SEGMENTS, MethodAdapter, Normalizer
from harness.data.batching import collate
from harness.modeling.forward import forward_segments
from harness.store.runs import Run, atomic_write_json


class NonFiniteLoss(FloatingPointError):
    pass


@dataclass
class TrainHooks:
    #: called after each periodic evaluation; may raise ``optuna.TrialPruned``
    on_eval: Callable[[int, dict[str, float]], None] | None = None
    #: called with every logged row (trackers)
    on_log: Callable[[dict[str, Any]], None] | None = None
    #: called once when the first optimizer step starts (overhead accounting)
    on_first_step: Callable[[], None] | None = None


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    train_time_s: float
    tokens: int
    tokens_per_s: float
    peak_memory_mb: float
    trainable_params: int
    total_params: int
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- the loop


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def step_examples(n: int, per_step: int, seed: int, step: int) -> list[int]:
    """Indices of the examples of optimizer step ``step`` (0-based); epochs drop the tail."""
    steps_per_epoch = n // per_step
    epoch, pos = divmod(step, steps_per_epoch)
    order = _order(n, seed, epoch)
    return order[pos * per_step:(pos + 1) * per_step]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def count_params(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@dataclass
class LoopConfig:
    lr: float
    schedule: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    batch_size: int
    grad_accum: int
    total_steps: int
    precision: str
    gradient_checkpointing: bool
    log_every: int
    eval_every: int | None
    save_every: int | None
    seed: int
    progress: bool


def total_steps_for(n_examples: int, batch_size: int, grad_accum: int, processes: int, epochs: int, max_steps: int | None) -> int:
    per_step = batch_size * grad_accum * processes
    if n_examples < per_step:
        raise ValueError(
            f"the training data has {n_examples} examples, fewer than one optimizer step needs "
            f"({batch_size} x {grad_accum} x {processes} processes); lower train.batch_size or train.grad_accum"
        )
    return max_steps if max_steps is not None else epochs * (n_examples // per_step)


def train(
    *,
    adapter: MethodAdapter,
    hp: Any,
    model: Any,
    accelerator: Any,
    cfg: LoopConfig,
    train_examples: list[dict[str, Any]],
    eval_examples: list[dict[str, Any]],
    pad_id: int,
    reference: dict[str, torch.Tensor] | None,
    eval_reference: dict[str, torch.Tensor] | None,
    run: Run,
    resume_from: Path | None = None,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    from transformers import get_scheduler

    hooks = hooks or TrainHooks()
    segments = SEGMENTS[adapter.data_kind]
    device = accelerator.device
    P, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * cfg.grad_accum * P

    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable, total = count_params(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup", optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * cfg.total_steps), num_training_steps=cfg.total_steps,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()

    start_step = 0
    history: list[dict[str, Any]] = []
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / "trainer_state.json").read_text())
        start_step = int(state["step"])

    losses: list[float] = []
    last_metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    tokens = 0
    t_train = 0.0
    bar = None
    if cfg.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=start_step, desc=f"{adapter.name}", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0)

    for step in range(start_step, cfg.total_steps):
        if step == start_step and hooks.on_first_step is not None:
            hooks.on_first_step()
        t0 = time.perf_counter()
        idx = step_examples(len(train_examples), per_step, cfg.seed, step)
        micro = [idx[i:i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
        batches = [collate([train_examples[j] for j in m], pad_id, segments) for m in micro]
        norm = Normalizer(
            sequences=len(idx),
            tokens={s: sum(b.n_tokens(s) for b in batches) for s in segments},
        )
        mine = batches[rank * cfg.grad_accum:(rank + 1) * cfg.grad_accum]
        step_loss = 0.0
        sums: dict[str, float] = {}
        n_seen = 0
        for k, batch in enumerate(mine):
            batch = batch.to(device)
            ref = None
            if reference is not None:
                ref = {s: reference[s][batch.idx.cpu()].to(device) for s in segments}
            sync = k == len(mine) - 1
            ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
            with ctx:
                policy = forward_segments(model, batch, adapter.model_kind)
                out = adapter.objective(hp, policy, ref, norm)
                loss = out.loss * P  # DDP averages gradients over processes
                accelerator.backward(loss)
            step_loss += float(out.loss.detach())
            for name, v in out.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach().float().sum())
            n_seen += batch.size
            tokens += int(batch.attention_mask.sum())
        if not math.isfinite(step_loss):
            raise NonFiniteLoss(f"loss is {step_loss} at step {step + 1}; lower train.lr or check the data")
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        t_train += time.perf_counter() - t0
        losses.append(step_loss)
        last_metrics = {"loss": step_loss, **{k: v / max(n_seen, 1) for k, v in sums.items()}}
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.total_steps:
            row = {
                "step": done, **last_metrics, "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": tokens / max(t_train, 1e-9), "epoch": done * per_step / len(train_examples),
            }
            history.append(row)
            if accelerator.is_main_process:
                run.log_metrics(row)
            if hooks.on_log is not None:
                hooks.on_log(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens / max(t_train, 1e-9):,.0f}", refresh=False)
        if cfg.eval_every and eval_examples and (done % cfg.eval_every == 0 or done == cfg.total_steps):
            eval_metrics = evaluate_loss(adapter, hp, model, eval_examples, eval_reference, pad_id, cfg.batch_size, device)
            row = {"step": done, **{f"eval/{k}": v for k, v in eval_metrics.items()}}
            history.append(row)
            if accelerator.is_main_process:
                run.log_metrics(row)
            if hooks.on_log is not None:
                hooks.on_log(row)
            if hooks.on_eval is not None:
                hooks.on_eval(done, eval_metrics)
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.total_steps:
            save_checkpoint(accelerator, run.path / "checkpoints" / f"step-{done}", done)
    if bar is not None:
        bar.close()
    return TrainResult(
        steps=cfg.total_steps, losses=losses, final_metrics=last_metrics, eval_metrics=eval_metrics,
        train_time_s=t_train, tokens=tokens, tokens_per_s=tokens / max(t_train, 1e-9),
        peak_memory_mb=peak_memory_mb(device), trainable_params=trainable, total_params=total,
        history=history,
    )


def save_checkpoint(accelerator: Any, path: Path, step: int) -> None:
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # written last: a checkpoint without it is incomplete and never resumed from
        atomic_write_json(path / "trainer_state.json", {"step": step})


@torch.no_grad()
def evaluate_loss(
    adapter: MethodAdapter, hp: Any, model: Any, examples: list[dict[str, Any]],
    reference: dict[str, torch.Tensor] | None, pad_id: int, batch_size: int, device: torch.device,
) -> dict[str, float]:
    """Held-out objective and method metrics (the periodic eval a sweep prunes on)."""
    segments = SEGMENTS[adapter.data_kind]
    was = model.training
    model.eval()
    batches = [collate(examples[i:i + batch_size], pad_id, segments) for i in range(0, len(examples), batch_size)]
    norm = Normalizer(sequences=len(examples), tokens={s: sum(b.n_tokens(s) for b in batches) for s in segments})
    total = 0.0
    sums: dict[str, float] = {}
    for batch in batches:
        batch = batch.to(device)
        ref = None if reference is None else {s: reference[s][batch.idx.cpu()].to(device) for s in segments}
        out = adapter.objective(hp, forward_segments(model, batch, adapter.model_kind), ref, norm)
        total += float(out.loss)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v.float().sum())
    model.train(was)
    return {"loss": total, **{k: v / len(examples) for k, v in sums.items()}}
