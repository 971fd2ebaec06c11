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
from typing import Any, Protocol, cast

import torch

from harness.core.contract import SEGMENTS, MethodAdapter, Normalizer
from harness.data.batching import Batch, collate
from harness.modeling.critic import token_values
from harness.modeling.forward import forward_segments
from harness.modeling.logprobs import eval_mode
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
    #: why training ended before total_steps (an annotation budget), else None
    stopped_early: str | None = None


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
    optimizer: str = "adamw"


def total_steps_for(n_examples: int, batch_size: int, grad_accum: int, processes: int, epochs: int, max_steps: int | None) -> int:
    per_step = batch_size * grad_accum * processes
    if n_examples < per_step:
        raise ValueError(
            f"the training data has {n_examples} examples, fewer than one optimizer step needs "
            f"({batch_size} x {grad_accum} x {processes} processes); lower train.batch_size or train.grad_accum"
        )
    return max_steps if max_steps is not None else epochs * (n_examples // per_step)


# --------------------------------------------------------------------------- where a step's batches come from


@dataclass
class StepBatches:
    """This process's micro-batches of one optimizer step and what goes with them."""

    batches: list[Batch]
    #: per micro-batch, tensors handed to the objective as its third argument (cached reference
    #: log-probs of offline methods; rollout tensors of online ones); None when there are none
    given: list[dict[str, torch.Tensor] | None]
    #: global counts of the whole step (all micro-batches, all processes)
    norm: Normalizer
    #: step-level values to log (rollout reward statistics, generation time)
    metrics: dict[str, float] = field(default_factory=dict)
    #: seconds of this step spent outside training (generation and scoring), excluded from train time
    outside_s: float = 0.0
    #: auxiliary SFT micro-batches (PPO-ptx), one per micro-batch, weighted by ``aux_coef``
    aux: list[Batch] = field(default_factory=list)
    aux_coef: float = 0.0


class StopTraining(Exception):
    """A clean early stop (an online run's annotation budget is spent): the steps done are kept."""


class StepSource(Protocol):
    """What the loop asks for each optimizer step: fixed data (offline) or fresh rollouts (online)."""

    def step(self, step: int) -> StepBatches: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OfflineSource:
    """Step ``k`` = a fixed slice of a per-epoch permutation seeded by ``(seed, epoch)``, so
    resuming from a checkpoint replays exactly the same batches; each process takes its
    ``grad_accum`` micro-batches of the step, and cached reference log-probs go with them."""

    def __init__(self, examples: list[dict[str, Any]], reference: dict[str, torch.Tensor] | None,
                 segments: tuple[str, ...], pad_id: int, batch_size: int, grad_accum: int, processes: int,
                 rank: int, seed: int) -> None:
        self.examples, self.reference, self.segments, self.pad_id = examples, reference, segments, pad_id
        self.batch_size, self.grad_accum, self.rank, self.seed = batch_size, grad_accum, rank, seed
        self.per_step = batch_size * grad_accum * processes

    def step(self, step: int) -> StepBatches:
        idx = step_examples(len(self.examples), self.per_step, self.seed, step)
        micro = [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        batches = [collate([self.examples[j] for j in m], self.pad_id, self.segments) for m in micro]
        norm = Normalizer(sequences=len(idx), tokens={s: sum(b.n_tokens(s) for b in batches) for s in self.segments})
        mine = batches[self.rank * self.grad_accum:(self.rank + 1) * self.grad_accum]
        given: list[dict[str, torch.Tensor] | None] = [
            None if self.reference is None else {s: self.reference[s][b.idx] for s in self.segments} for b in mine
        ]
        return StepBatches(mine, given, norm, {"epoch": (step + 1) * self.per_step / len(self.examples)})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# --------------------------------------------------------------------------- the loop


def segment_rows(batch: Batch, name: str) -> Batch:
    """The rows of one segment of a concatenated batch, as a batch of its own."""
    s = batch.segments.index(name)
    sl = slice(s * batch.size, (s + 1) * batch.size)
    return Batch(batch.input_ids[sl], batch.attention_mask[sl], batch.loss_mask[sl], (name,), batch.size,
                 batch.idx, batch.label)


class StepStatisticsAdapter(Protocol):
    """The optional capability of a :class:`MethodAdapter` whose objective needs statistics of the
    whole step (KTO's z0): per-micro-batch sums over its ``step_statistics_segments``."""

    step_statistics_segments: tuple[str, ...]

    def step_statistics(self, hp: Any, policy: dict[str, Any],
                        reference: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]: ...


@torch.no_grad()
def step_statistics(adapter: MethodAdapter, hp: Any, model: Any, batches: list[Batch],
                    given: list[dict[str, torch.Tensor] | None], accelerator: Any | None,
                    device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Statistics an objective needs over the WHOLE step before any loss (KTO's KL reference
    point z0): the adapter's per-micro-batch sums, added over micro-batches and processes, so
    2 x 4 micro-batches and 2 processes x 4 give exactly the value of 1 x 8."""
    segs = tuple(getattr(adapter, "step_statistics_segments", ()))
    totals: dict[str, torch.Tensor] = {}
    device = accelerator.device if accelerator is not None else device
    assert device is not None, "step_statistics needs an accelerator or a device"
    for batch, g in zip(batches, given):
        batch = batch.to(device)
        rows = {s: forward_segments(model, segment_rows(batch, s), adapter.model_kind)[s] for s in segs}
        # callers check hasattr(adapter, "step_statistics") first
        for k, v in cast(StepStatisticsAdapter, adapter).step_statistics(hp, rows, _to(g, device)).items():
            totals[k] = totals.get(k, 0) + v.detach().double()
    # accelerator=None: a statistic of data every process holds whole (held-out evaluation)
    return {f"step:{k}": _all_sum(v, accelerator) if accelerator is not None else v for k, v in sorted(totals.items())}


def _all_sum(x: torch.Tensor, accelerator: Any) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return x
    return accelerator.reduce(x.to(accelerator.device).contiguous(), reduction="sum")


def _to(g: dict[str, torch.Tensor] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    return None if g is None else {k: v.to(device) for k, v in g.items()}


@dataclass
class StepOutcome:
    """One optimizer step's totals over every micro-batch and process."""

    loss: float
    metrics: dict[str, float]
    tokens: int
    grad_norm: float | None


class _Loop:
    """The state of one training loop; :func:`train` is its public entry.  Each method does one
    job: set up the optimisation, run one optimizer step, record it (log, eval, checkpoint)."""

    def __init__(self, adapter: MethodAdapter, hp: Any, accelerator: Any, cfg: LoopConfig, source: Any,
                 run: Run, hooks: TrainHooks) -> None:
        self.adapter, self.hp, self.acc, self.cfg, self.source, self.run, self.hooks = (
            adapter, hp, accelerator, cfg, source, run, hooks)
        self.token_level = bool(getattr(adapter, "token_level", False))
        self.history: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self.eval_metrics: dict[str, float] = {}
        self.tokens = 0
        self.t_train = 0.0

    def setup(self, model: Any, critic: Any, critic_lr: float | None) -> None:
        """Optimizer over the policy (and critic) parameters, schedule, accelerate's wrapping."""
        from transformers import get_scheduler

        cfg = self.cfg
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(model, "enable_input_require_grads"):
                model.enable_input_require_grads()
        self.trainable, self.total = count_params(model)
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        if critic is not None:
            groups.append({"params": [p for p in critic.parameters() if p.requires_grad], "lr": critic_lr or cfg.lr})
        optimizer = (torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "sgd"
                     else torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay))
        scheduler = get_scheduler(
            cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup", optimizer,
            num_warmup_steps=int(cfg.warmup_ratio * cfg.total_steps), num_training_steps=cfg.total_steps,
        )
        if critic is not None:
            model, critic, optimizer, scheduler = self.acc.prepare(model, critic, optimizer, scheduler)
        else:
            model, optimizer, scheduler = self.acc.prepare(model, optimizer, scheduler)
        model.train()
        self.model, self.critic, self.optimizer, self.scheduler = model, critic, optimizer, scheduler
        self.trained = [model] + ([critic] if critic is not None else [])
        if hasattr(self.source, "bind"):
            self.source.bind(self.acc.unwrap_model(model), critic)

    def resume(self, checkpoint: Path) -> int:
        """Optimizer, model(s), schedule and the source's state from a checkpoint; its step."""
        self.acc.load_state(str(checkpoint))
        src_state = checkpoint / f"source_state-{self.acc.process_index}.pt"
        if src_state.exists():
            self.source.load_state_dict(torch.load(src_state, weights_only=False))
        return int(json.loads((checkpoint / "trainer_state.json").read_text())["step"])

    def step(self, step: int, sb: StepBatches) -> StepOutcome:
        """Forward, objective and backward over this process's micro-batches, then one update;
        totals summed over processes (all of them stop together on a non-finite loss)."""
        acc, device, P = self.acc, self.acc.device, self.acc.num_processes
        stats = (step_statistics(self.adapter, self.hp, self.model, sb.batches, sb.given, acc)
                 if hasattr(self.adapter, "step_statistics") else {})
        step_loss = torch.zeros((), dtype=torch.float64)
        sums: dict[str, torch.Tensor] = {}
        n_seen = step_tokens = 0
        for k, (batch, g) in enumerate(zip(sb.batches, sb.given)):
            batch = batch.to(device)
            given = _to(g, device)
            if stats:
                given = {**(given or {}), **stats}
            ctx = contextlib.ExitStack()
            if k < len(sb.batches) - 1:  # gradients are synchronised on the last micro-batch only
                for m in self.trained:
                    ctx.enter_context(acc.no_sync(m))
            with ctx:
                policy = forward_segments(self.model, batch, self.adapter.model_kind, tokens=self.token_level)
                if self.critic is not None:
                    policy["completion"].values = token_values(self.critic, batch)[0]
                out = self.adapter.objective(self.hp, policy, given, sb.norm)
                loss = out.loss
                if sb.aux:
                    nll = -forward_segments(self.model, sb.aux[k].to(device), "causal_lm")["completion"].logps.sum()
                    loss = loss + sb.aux_coef * nll / max(sb.norm.tokens.get("aux", 1), 1)
                acc.backward(loss * P)  # DDP averages gradients over processes
            step_loss += loss.detach().double().cpu()
            for name, v in out.metrics.items():
                sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64)) + v.detach().double().sum().cpu()
            n_seen += batch.size
            step_tokens += int(batch.attention_mask.sum())
        packed = torch.stack([step_loss, torch.tensor(float(n_seen), dtype=torch.float64),
                              torch.tensor(float(step_tokens), dtype=torch.float64), *[sums[k] for k in sorted(sums)]])
        packed = _all_sum(packed, acc).double().cpu()
        loss_value, n_all = float(packed[0]), float(packed[1])
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss is {loss_value} at step {step + 1}; lower train.lr or check the data")
        params = [p for m in self.trained for p in m.parameters()]
        grad_norm = acc.clip_grad_norm_(params, self.cfg.max_grad_norm) if self.cfg.max_grad_norm > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_value, {k: float(v) / max(n_all, 1.0) for k, v in zip(sorted(sums), packed[3:])},
                           int(packed[2]), float(grad_norm) if grad_norm is not None else None)

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.acc.is_main_process:
            self.run.log_metrics(row)
        if self.hooks.on_log is not None:
            self.hooks.on_log(row)

    def record(self, done: int, outcome: StepOutcome, sb: StepBatches, eval_examples: list[dict[str, Any]],
               eval_reference: dict[str, torch.Tensor] | None, pad_id: int) -> None:
        """Log the step; evaluate (and let a sweep prune) and checkpoint on their cadence."""
        cfg = self.cfg
        self.losses.append(outcome.loss)
        self.last_metrics = {"loss": outcome.loss, **outcome.metrics}
        if done % cfg.log_every == 0 or done == cfg.total_steps:
            self._log({"step": done, **self.last_metrics, **sb.metrics, "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": outcome.grad_norm, "tokens_per_s": self.tokens / max(self.t_train, 1e-9)})
        if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.total_steps):
            # online methods have no fixed held-out data: their periodic signal is the rollout's reward
            self.eval_metrics = (
                evaluate_loss(self.adapter, self.hp, self.model, eval_examples, eval_reference, pad_id, cfg.batch_size,
                              self.acc.device) if eval_examples else
                {k.removeprefix("rollout/"): v for k, v in sb.metrics.items() if k.startswith("rollout/")})
            self._log({"step": done, **{f"eval/{k}": v for k, v in self.eval_metrics.items()}})
            if self.hooks.on_eval is not None:
                self.hooks.on_eval(done, self.eval_metrics)
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.total_steps:
            save_checkpoint(self.acc, self.run.path / "checkpoints" / f"step-{done}", done, self.source)


def train(
    *,
    adapter: MethodAdapter,
    hp: Any,
    model: Any,
    accelerator: Any,
    cfg: LoopConfig,
    source: Any,
    eval_examples: list[dict[str, Any]],
    pad_id: int,
    eval_reference: dict[str, torch.Tensor] | None,
    run: Run,
    resume_from: Path | None = None,
    hooks: TrainHooks | None = None,
    critic: Any = None,
    critic_lr: float | None = None,
) -> TrainResult:
    """Run ``cfg.total_steps`` optimizer steps of ``adapter``'s objective on batches from ``source``.

    ``source`` is an :class:`OfflineSource` or an online rollout source with a ``bind(model,
    critic)`` method; ``critic`` (PPO's value model) is trained beside the policy in the same
    optimizer (its own learning rate ``critic_lr``)."""
    hooks = hooks or TrainHooks()
    loop = _Loop(adapter, hp, accelerator, cfg, source, run, hooks)
    loop.setup(model, critic, critic_lr)
    start = loop.resume(resume_from) if resume_from is not None else 0
    done, stopped = start, None
    bar = None
    if cfg.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=start, desc=f"{adapter.name}", unit="step", dynamic_ncols=True,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0)
    for step in range(start, cfg.total_steps):
        if step == start and hooks.on_first_step is not None:
            hooks.on_first_step()
        t0 = time.perf_counter()
        try:
            sb = source.step(step)
        except StopTraining as e:
            stopped = str(e)
            break
        outcome = loop.step(step, sb)
        loop.t_train += time.perf_counter() - t0 - sb.outside_s
        loop.tokens += outcome.tokens
        done = step + 1
        loop.record(done, outcome, sb, eval_examples, eval_reference, pad_id)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{outcome.loss:.4f}", tok_s=f"{loop.tokens / max(loop.t_train, 1e-9):,.0f}",
                            refresh=False)
    if bar is not None:
        bar.close()
    return TrainResult(
        steps=done, losses=loop.losses, final_metrics=loop.last_metrics, eval_metrics=loop.eval_metrics,
        train_time_s=loop.t_train, tokens=loop.tokens, tokens_per_s=loop.tokens / max(loop.t_train, 1e-9),
        peak_memory_mb=peak_memory_mb(accelerator.device), trainable_params=loop.trainable, total_params=loop.total,
        history=loop.history, stopped_early=stopped,
    )


def save_checkpoint(accelerator: Any, path: Path, step: int, source: Any = None) -> None:
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    state = source.state_dict() if source is not None else {}
    if state:  # an online source's rollout buffer and method state, one file per process
        torch.save(state, path / f"source_state-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
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
    with eval_mode(model):  # keeps bitsandbytes' 4-bit layers from re-packing their weights on CPU
        return _evaluate_loss(adapter, hp, model, examples, reference, pad_id, batch_size, device, segments)


def _evaluate_loss(adapter: MethodAdapter, hp: Any, model: Any, examples: list[dict[str, Any]],
                   reference: dict[str, torch.Tensor] | None, pad_id: int, batch_size: int, device: torch.device,
                   segments: tuple[str, ...]) -> dict[str, float]:
    batches = [collate(examples[i:i + batch_size], pad_id, segments) for i in range(0, len(examples), batch_size)]
    norm = Normalizer(sequences=len(examples), tokens={s: sum(b.n_tokens(s) for b in batches) for s in segments})
    given = [None if reference is None else {s: reference[s][b.idx] for s in segments} for b in batches]
    stats = (step_statistics(adapter, hp, model, batches, given, None, device)
             if hasattr(adapter, "step_statistics") else {})
    total = 0.0
    sums: dict[str, float] = {}
    for batch, g in zip(batches, given):
        batch = batch.to(device)
        ref = _to(g, device)
        if stats:
            ref = {**(ref or {}), **stats}
        out = adapter.objective(hp, forward_segments(model, batch, adapter.model_kind), ref, norm)
        total += float(out.loss)
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v.float().sum())
    return {"loss": total, **{k: v / len(examples) for k, v in sums.items()}}
