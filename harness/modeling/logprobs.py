"""Log-probs of the given next tokens without the [N, V] logits ever existing whole.

Why: the plain path (``harness.modeling.forward.sequence_logps`` on the model's logits) holds
``[rows, T, V]`` logits, their fp32 copy and the log-softmax temporaries at once.  For a DPO
micro-batch of 4 pairs (8 rows) × 2048 tokens on Qwen2.5's 151,936-token vocabulary that is
16,384 × 151,936 × 4 B ≈ 10 GB per fp32 copy (plus the bf16 logits, 5 GB, and the same again
for their gradient) — more than the 7B model's LoRA activations.  Only one number per
completion token is needed: ``log softmax(h Wᵀ + b)[label] = z_label − logsumexp(z)``.

:class:`ChunkedLabelLogprob` computes it from the final hidden states ``h`` [N, H] and the
output-embedding weight ``W`` [V, H] in blocks of ``chunk_rows × chunk_vocab`` logits, with an
online (running max / running sum) logsumexp across vocabulary blocks, always in fp32.  The block
matmuls take their operands in the dtype the plain head would use (the autocast dtype under
bf16 autocast, else the weights' dtype) and their products are upcast, so under bf16 the chunked
and plain heads round the logits alike and the head runs at bf16 matmul speed.  It saves
only ``h``, ``labels`` and the per-row logsumexp (N floats) and RECOMPUTES each block in backward,
so the peak extra memory is one block (1024 × 32768 × 4 B = 128 MiB at the defaults, with its
softmax/gradient written in place) plus an fp32 [N, H] accumulator for ``∂h`` and, when ``W``
trains, one fp32 [chunk_vocab, H] accumulator for ``∂W``.  Cost: the head's matmuls run
3 times in training (forward, recompute, ``∂h``) plus once more for ``∂W`` when the head trains,
versus 1 + 2 on the plain path; with a frozen head (LoRA) that is 3 vs 2.  The head is a few
percent of a 7B model's FLOPs, so the memory is bought for little time.

:func:`completion_token_logps` is the model-level entry the training core calls: the same
contract as a forward + ``sequence_logps`` (per-row sums over completion tokens, counts), but the
vocabulary projection is done by the chunked function on completion positions only.

How the hidden states are obtained: the model's own top-level ``forward`` runs with the output
head's ``forward`` temporarily replaced by the identity, so the "logits" it returns are the final
(normed) hidden states.  Going through the top-level forward rather than calling
``model.get_decoder()`` keeps everything wrappers put on that call: accelerate's autocast and
fp32-output wrapper on a prepared model (calling the decoder directly would silently run it in
fp32 under ``accelerator.prepare``), DDP's forward (gradient-sync bookkeeping), and
``PeftModel.forward`` — LoRA layers live inside the decoder either way, and prompt-learning
methods (prefix tuning's injected past key values, prompt tuning's virtual tokens) also work
because they are applied before the head.  Linear post-head scalings (Cohere's ``logit_scale``,
Granite's ``logits_scaling``) commute with the projection, so applying them to ``h`` instead of
``z`` is exact up to rounding.

The plain path (:func:`plain_token_logps`, identical arithmetic to ``sequence_logps``) is taken,
with the reason from :func:`chunked_unsupported_reason`, when the head is not ``h Wᵀ + b``:

* final-logit soft-capping (Gemma 2/3: ``z ← c·tanh(z/c)`` after the head) is non-linear, and the
  model's forward would apply it to the hidden states;
* the head is not a plain ``nn.Linear`` (LoRA or ``modules_to_save`` on ``lm_head``, a quantised
  head) or its weight is not a whole local tensor (FSDP / DeepSpeed ZeRO-3 shards, meta-device
  offload);
* the model has no output embedding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

#: rows of hidden states per block; with DEFAULT_CHUNK_VOCAB a block is 128 MiB in fp32
DEFAULT_CHUNK_ROWS = 1024
#: vocabulary columns per block; Qwen2.5 (151,936) is 5 blocks, Llama 3 (128,256) is 4
DEFAULT_CHUNK_VOCAB = 32768


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    # under bf16 autocast the block matmuls would silently run in bf16; fp32 is the point here
    return torch.autocast(device_type=device.type, enabled=False)


def _blocks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)


class ChunkedLabelLogprob(torch.autograd.Function):
    """``log softmax(hidden @ weight.T + bias)[i, labels[i]]`` for each row ``i``, in fp32.

    ``hidden`` [N, H] and ``weight`` [V, H] (and ``bias`` [V] or None) may be any float dtype;
    every block is computed in fp32 with autocast off.  Gradients flow to ``hidden``, ``weight``
    and ``bias`` — to the shared Parameter when the head is tied to the input embedding, where
    autograd adds them to the embedding's own gradient.  Rows are all used: select the rows
    that matter before calling (see :func:`label_logprobs`).

    Loop order is vocabulary-outer, rows-inner so each ``weight`` block is upcast once per pass
    and, in backward, its fp32 gradient is complete before it is written out: no fp32 [V, H]
    buffer (2.5 GB for a 152k × 4096 head) is ever allocated.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_rows: int,
        chunk_vocab: int,
        compute_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        n, v = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        with _no_autocast(dev):
            run_max = torch.full((n,), -math.inf, dtype=torch.float32, device=dev)
            run_sum = torch.zeros(n, dtype=torch.float32, device=dev)
            target = torch.zeros(n, dtype=torch.float32, device=dev)
            for v0, v1 in _blocks(v, chunk_vocab):
                w = weight[v0:v1].to(compute_dtype)
                b = None if bias is None else bias[v0:v1].to(compute_dtype)
                for r0, r1 in _blocks(n, chunk_rows):
                    z = _block_logits(hidden[r0:r1], w, b)
                    # the label's logit is read from the same block product the logsumexp sees,
                    # so log-probs are z_y - lse of one computation, as on the plain path
                    lab = labels[r0:r1]
                    here = (lab >= v0) & (lab < v1)
                    if bool(here.any()):
                        rows = here.nonzero().squeeze(1)
                        target[r0 + rows] = z[rows, lab[rows] - v0]
                    new_max = torch.maximum(run_max[r0:r1], z.max(dim=1).values)
                    z.sub_(new_max.unsqueeze(1)).exp_()
                    # the first block rescales 0 by exp(-inf) = 0: no special case needed
                    run_sum[r0:r1] = run_sum[r0:r1] * torch.exp(run_max[r0:r1] - new_max) + z.sum(dim=1)
                    run_max[r0:r1] = new_max
                    del z  # else the next block is allocated while this one is still alive: 2 blocks peak
            lse = run_max + torch.log(run_sum)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunks = (chunk_rows, chunk_vocab, compute_dtype)
        return target - lse

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        chunk_rows, chunk_vocab, cdt = ctx.chunks
        fp32 = cdt == torch.float32
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, v = hidden.shape[0], weight.shape[0]
        dev = hidden.device
        grad_h = grad_w = grad_b = None
        with _no_autocast(dev):
            g = grad_out.float()
            if need_h:
                grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=dev)
            if need_w:
                grad_w = torch.empty_like(weight)
            if need_b:
                grad_b = torch.empty_like(bias)
            for v0, v1 in _blocks(v, chunk_vocab):
                w = weight[v0:v1].to(cdt)
                b = None if bias is None else bias[v0:v1].to(cdt)
                gw = torch.zeros(w.shape, dtype=torch.float32, device=dev) if need_w else None
                gb = torch.zeros(v1 - v0, dtype=torch.float32, device=dev) if need_b else None
                for r0, r1 in _blocks(n, chunk_rows):
                    h = hidden[r0:r1].to(cdt)
                    z = _block_logits(h, w, b)
                    g_r = g[r0:r1]
                    # d(z_y - lse)/dz = onehot(y) - softmax(z): the block becomes its own gradient
                    dz = z.sub_(lse[r0:r1].unsqueeze(1)).exp_().mul_(-g_r.unsqueeze(1))
                    lab = labels[r0:r1]
                    here = (lab >= v0) & (lab < v1)
                    if bool(here.any()):
                        rows = here.nonzero().squeeze(1)
                        dz[rows, lab[rows] - v0] += g_r[rows]
                    # the gradient GEMMs take their operands in the compute dtype (as autograd of a
                    # bf16 head would) and accumulate into fp32 buffers
                    dzc = dz if fp32 else dz.to(cdt)
                    if grad_h is not None:
                        if fp32:
                            grad_h[r0:r1].addmm_(dz, w)
                        else:
                            grad_h[r0:r1] += (dzc @ w).float()
                    if gw is not None:
                        if fp32:
                            gw.addmm_(dz.t(), h)
                        else:
                            gw += (dzc.t() @ h).float()
                    if gb is not None:
                        gb += dz.sum(dim=0)
                    del z, dz, dzc
                if grad_w is not None and gw is not None:
                    grad_w[v0:v1] = gw
                if grad_b is not None and gb is not None:
                    grad_b[v0:v1] = gb
        if grad_h is not None:
            grad_h = grad_h.to(hidden.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None


def _block_logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """One block of logits in fp32, the product taken in ``w``'s dtype (the compute dtype)."""
    h = h.to(w.dtype)
    z = h @ w.t() if b is None else torch.addmm(b, h, w.t())
    return z.float()


def label_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-row fp32 log-prob of ``labels`` under ``log softmax(hidden @ weight.T + bias)``.

    ``hidden`` [N, H] (flattened rows), ``labels`` [N] int, optional boolean ``mask`` [N]: rows
    where it is False are never projected (no FLOPs) and come back as exactly 0 with no gradient
    contribution.  ``chunk_vocab=None`` uses one vocabulary block of the full V.
    ``compute_dtype``: dtype of the block matmuls' operands (fp32 default; bf16 is what a bf16
    head under autocast computes); the logits are then upcast, and everything after is fp32.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels must be [N] = [{hidden.shape[0]}], got {tuple(labels.shape)}")
    if chunk_rows < 1 or (chunk_vocab is not None and chunk_vocab < 1):
        raise ValueError(f"chunk sizes must be positive, got chunk_rows={chunk_rows}, chunk_vocab={chunk_vocab}")
    cv = weight.shape[0] if chunk_vocab is None else chunk_vocab
    if mask is None:
        return ChunkedLabelLogprob.apply(hidden, weight, bias, labels, chunk_rows, cv, compute_dtype)
    idx = mask.nonzero().squeeze(1)
    picked = ChunkedLabelLogprob.apply(hidden[idx], weight, bias, labels[idx], chunk_rows, cv, compute_dtype)
    return torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device).index_put((idx,), picked)


# --------------------------------------------------------------------------- model level


def _peft_model_types() -> tuple[type, ...]:
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency, but keep this module importable without it
        return ()
    return (PeftModel,)


def unwrap_model(model: Any) -> Any:
    """The transformers model under DDP / DataParallel, ``torch.compile`` and peft wrappers
    (where the output head and config live; the forward still goes through the wrappers)."""
    m: Any = model
    peft_types = _peft_model_types()
    for _ in range(8):
        if isinstance(m, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            m = m.module
        elif hasattr(m, "_orig_mod"):  # torch.compile's OptimizedModule
            m = m._orig_mod
        elif peft_types and isinstance(m, peft_types):
            m = m.get_base_model()  # type: ignore[attr-defined]
        else:
            break
    return m


def _text_configs(config: Any) -> list[Any]:
    out = [config]
    get = getattr(config, "get_text_config", None)
    if callable(get):
        with contextlib.suppress(Exception):
            out.append(get())
    return out


def chunked_unsupported_reason(model: Any) -> str | None:
    """Why :func:`completion_token_logps` must take the plain full-logits path for ``model``,
    or None when the chunked path is exact for it.  For the core to log."""
    inner = unwrap_model(model)
    for cfg in _text_configs(getattr(inner, "config", None)):
        if getattr(cfg, "final_logit_softcapping", None) is not None:
            return ("the model soft-caps its logits (config.final_logit_softcapping, e.g. Gemma 2/3): "
                    "a non-linear step after the head that the chunked head does not reproduce")
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if head is None:
        return f"{type(inner).__name__} exposes no output embedding (get_output_embeddings() is None)"
    if type(head) is not torch.nn.Linear:
        return (f"the output head is a {type(head).__module__}.{type(head).__name__}, not a plain nn.Linear "
                "(LoRA or modules_to_save on lm_head, or a quantised head): its output is not h W^T + b")
    w = head.weight
    if type(w) not in (torch.nn.Parameter, torch.Tensor) or hasattr(w, "ds_id"):
        return f"the head weight is a {type(w).__name__} (sharded: FSDP2 DTensor / DeepSpeed ZeRO-3), not a whole local tensor"
    if w.device.type == "meta":
        return "the head weight is on the meta device (offloaded with a device map)"
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in (model, *model.modules())):
        return "the model is wrapped in FSDP: the head weight is a flat shard outside its forward"
    return None


def supports_chunked(model: Any) -> bool:
    return chunked_unsupported_reason(model) is None


def resolve_path(model: Any, path: str = "auto") -> str:
    """``"chunked"`` or ``"plain"``: what :func:`completion_token_logps` will do for ``model``."""
    if path not in ("auto", "chunked", "plain"):
        raise ValueError(f"path must be 'auto', 'chunked' or 'plain', got {path!r}")
    reason = chunked_unsupported_reason(model)
    if path == "chunked" and reason is not None:
        raise ValueError(f"path='chunked' is not exact for this model: {reason}")
    if path == "auto":
        return "plain" if reason is not None else "chunked"
    return path


def head_compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a plain ``nn.Linear`` head would multiply in: the autocast dtype when autocast is
    on for the device (bf16 training), else the promoted dtype of its inputs (fp32 models: fp32)."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """``model.eval()`` for the block (dropout off), every module's mode restored afterwards --
    except that bitsandbytes' quantised layers stay in training mode: on CPUs with AVX512-BF16,
    bitsandbytes 0.50 re-packs a 4-bit weight IN PLACE on its first eval-mode forward without
    gradients, rounding its scales to bf16, and every later forward (training included) uses the
    re-packed weight.  A forward-only pass (a probe, the reference pass) must not change the
    weights the run trains on; in training mode these layers compute exactly as in training."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if type(m).__module__.startswith("bitsandbytes"):
            m.training = True
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


@contextlib.contextmanager
def head_bypassed(model: Any, seen: dict[str, Any] | None = None) -> Iterator[torch.nn.Linear]:
    """Within the block, ``model(...)`` returns the final hidden states where it returned logits.

    Done by shadowing the head's ``forward`` with an instance attribute (restored afterwards,
    including a hook wrapper accelerate may have put there), so the module tree, parameter
    registration and DDP buckets are untouched.  Yields the head module.  ``seen["dtype"]`` is
    set to the dtype the head would have multiplied in, read where the head is called -- inside
    the model's forward, so under the autocast a wrapper (accelerate's prepared model) applies
    there even when the caller runs outside it.
    """
    head = unwrap_model(model).get_output_embeddings()
    had = "forward" in head.__dict__
    saved = head.__dict__.get("forward")

    def passthrough(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if seen is not None:
            seen["dtype"] = head_compute_dtype(x, head.weight)
        return x

    head.forward = passthrough
    try:
        yield head
    finally:
        if had:
            head.forward = saved
        else:
            del head.forward


def _first_needed_position(loss_mask: torch.Tensor) -> int:
    """First position whose next token is a completion token (as ``forward_segments``), 0 if none."""
    has = loss_mask.any(dim=1)
    first = loss_mask.float().argmax(dim=1)[has]
    return max(int(first.min()) - 1, 0) if first.numel() else 0


def _call(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: int,
          forward_kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """Run the model keeping the last ``keep`` positions' outputs; returns (outputs, keep)."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False, **forward_kwargs}
    try:
        out = model(**kwargs, logits_to_keep=keep)
    except TypeError:  # a model class without logits_to_keep (remote code): all positions come back
        out = model(**kwargs)
        keep = input_ids.shape[1]
    logits = out.logits if hasattr(out, "logits") else out[0]
    # prompt tuning prepends virtual positions: the inputs' positions are always the last ones
    return logits[:, -keep:], keep


def plain_token_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-position next-token log-probs [B, T-1], zero where ``loss_mask[:, 1:]`` is 0 — the
    arithmetic of ``harness.modeling.forward.sequence_logps`` before its row sum."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    picked = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, dim=-1)) * mask


def token_logps(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
    path: str = "auto",
    **forward_kwargs: Any,
) -> tuple[torch.Tensor, str]:
    """Per-position log-probs [B, T-1] of ``input_ids[:, 1:]`` (fp32, exactly 0 where
    ``loss_mask[:, 1:]`` is 0) and the path used.  The building block under
    :func:`completion_token_logps` and the packed forward, which reduce it per row / per sequence.

    ``attention_mask`` may be 2D, a prepared 4D mask or None; ``forward_kwargs`` go to the model
    (``position_ids``, flash-attention varlen arguments).
    """
    path = resolve_path(model, path)
    B, T = input_ids.shape
    start = _first_needed_position(loss_mask)
    out = torch.zeros(B, T - 1, dtype=torch.float32, device=input_ids.device)
    if path == "plain":
        logits, keep = _call(model, input_ids, attention_mask, T - start, forward_kwargs)
        s = T - keep
        return torch.cat([out[:, :s], plain_token_logps(logits, input_ids[:, s:], loss_mask[:, s:])], dim=1), path
    seen: dict[str, Any] = {}
    with head_bypassed(model, seen) as head:
        hidden, keep = _call(model, input_ids, attention_mask, T - start, forward_kwargs)
    s = T - keep
    if hidden.shape[-1] != head.in_features:
        raise RuntimeError(f"{type(unwrap_model(model)).__name__}.forward transformed the head output "
                           f"(last dim {hidden.shape[-1]} != hidden size {head.in_features}); use path='plain'")
    sel = loss_mask[:, s + 1:].bool()
    rows, cols = sel.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols].to(head.weight.device)  # a device map may put the head elsewhere
    labels = input_ids[:, s + 1:][rows, cols].to(head.weight.device)
    # the dtype the plain head would have used, seen inside the model's forward (see head_bypassed)
    cdt = seen.get("dtype") or head_compute_dtype(h, head.weight)
    picked = label_logprobs(h, head.weight, labels, head.bias, chunk_rows=chunk_rows, chunk_vocab=chunk_vocab,
                            compute_dtype=cdt)
    return out.index_put((rows, cols + s), picked.to(out.device)), path


def completion_token_logps(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
    position_ids: torch.Tensor | None = None,
    path: str = "auto",
    **forward_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sum of completion-token log-probs [B] and their count [B] (float32), as
    ``sequence_logps(model(...).logits, input_ids, loss_mask)`` but without the full logits.

    ``loss_mask`` [B, T] marks completion tokens (the ``Batch.loss_mask`` convention): the
    prediction at position t counts when token t+1 is a completion token, so position 0 never
    counts and rows without completion tokens give (0, 0).  ``path``: ``"auto"`` (chunked where
    exact, see :func:`chunked_unsupported_reason`), ``"chunked"`` or ``"plain"``.  Call
    :func:`resolve_path` for what ``"auto"`` picks.
    """
    if position_ids is not None:
        forward_kwargs["position_ids"] = position_ids
    per_token, _ = token_logps(model, input_ids, attention_mask, loss_mask, chunk_rows=chunk_rows,
                               chunk_vocab=chunk_vocab, path=path, **forward_kwargs)
    return per_token.sum(-1), loss_mask[:, 1:].float().sum(-1)
