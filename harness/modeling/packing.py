"""Padding-free micro-batches: the sequences of a micro-batch end to end in one row.

Why: instruction data is length-skewed, so a right-padded ``[rows, T_max]`` batch spends much
of its compute and activation memory on padding.  Eight sequences of 1800, 400, 300, 300, 250,
200, 150 and 120 tokens padded to 1800 are 14,400 token slots for 3,520 real tokens: 4.1× the
work in everything that is linear in tokens (embeddings, projections, MLPs, norms, the LM
head) and 4.1× the activations.  Packed into one row of 3,520 tokens, that work is the real
tokens' only.  Attention is the exception: with flash-attention varlen it is computed per
sequence (sum of n_i², less than padded), but sdpa/eager get a dense [L, L] mask and compute
all L² scores of the pack (3,520² = 12.4M vs 8 × 1800² = 25.9M here; for equal lengths packing
makes it up to ``rows``× more) — which is why :func:`plan_packs` bounds a pack's ``max_tokens``.

A :class:`PackedBatch` carries what every attention backend needs: ``position_ids`` restarting
at 0 at each sequence start (RoPE sees the same positions as in the padded row), per-token
``seq_ids``, ``cu_seqlens``/``max_seqlen`` for flash-attention varlen, and a ``loss_mask`` of
completion tokens that is zero at every sequence start, so the next-token label of a sequence's
last token — the next sequence's first token — never counts (the padded path never counts
position 0 of a row either).  :func:`packed_forward_logps` returns per-sequence (sum log-prob,
count) exactly as the padded ``forward_segments`` path would, in the input order.

How attention stays inside each sequence, by ``attn_implementation`` (transformers 5.24):

* ``sdpa``, ``eager`` (and ``flex_attention``, untested here): ``masking_utils.create_causal_mask`` detects
  packing from ``position_ids`` (``find_packed_sequence_indices``: a new sequence wherever the
  position does not increase by 1) and builds the block-diagonal causal mask itself — but ONLY
  when the 2D ``attention_mask`` is None AND there is no cache, i.e. the forward must get
  ``use_cache=False`` (Llama's default ``use_cache=True`` creates a DynamicCache and silently
  attends across the whole pack).  Mode ``"position_ids"``.
* ``flash_attention_2/3/4``: ``_flash_attention_forward`` runs ``flash_attn_varlen_func`` when
  given ``cu_seq_lens_q/k`` and ``max_length_q/k`` kwargs (or infers them from ``position_ids``
  when the batch has one row); nothing is masked, no [T, T] tensor exists.  Mode ``"varlen"``
  passes both.  flash-attn is not installable on the CPU machines this was written on: this mode
  is tested only as far as the kwargs reaching the attention function (see the tests).
* Models whose decoder does not hand ``position_ids`` to the mask builder (a few older
  architectures): an explicit block-diagonal causal 4D mask (bool for sdpa, additive in the
  model's dtype otherwise), which ``create_causal_mask`` passes through as-is.  Mode ``"mask"``.
  It has no sliding window, so on sliding-window models a pack whose longest sequence exceeds
  the window is run as padded rows instead.
* peft prompt learning (prefix tuning) shares one prefix cache per row and concatenates a 2D
  prefix mask, so it is unpacked back to padded rows.  Mode ``"padded"``, also the last resort.

:func:`packing_mode` picks the first of these that passes a one-off isolation probe on the model
(three tiny forwards in eval mode: a second sequence's outputs must not move when the first one's
tokens change and must match the sequence alone), so a model that ignores a mechanism falls to
the next, correct one instead of silently leaking attention across sequences.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.modeling.logprobs import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_CHUNK_VOCAB,
    _call,
    completion_token_logps,
    eval_mode,
    head_bypassed,
    head_compute_dtype,
    label_logprobs,
    token_logps,
    unwrap_model,
)

MODES = ("position_ids", "varlen", "mask", "padded")


@dataclass
class PackedBatch:
    """Sequences packed end to end into one row (see the module docstring)."""

    input_ids: torch.Tensor  # [1, L] long
    position_ids: torch.Tensor  # [1, L] long, 0 at each sequence start
    loss_mask: torch.Tensor  # [1, L] long, 1 on completion tokens, 0 at each sequence start
    seq_ids: torch.Tensor  # [1, L] long, index of the sequence in the input order
    cu_seqlens: torch.Tensor  # [n+1] int32, sequence boundaries (flash-attention varlen)
    max_seqlen: int
    lengths: tuple[int, ...]

    @property
    def num_sequences(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.loss_mask.to(device),
                           self.seq_ids.to(device), self.cu_seqlens.to(device), self.max_seqlen, self.lengths)


def pack_sequences(sequences: Sequence[dict[str, Any]]) -> PackedBatch:
    """Pack tokenised segments (``{"input_ids": [...], "prompt_len": int}``, the shape
    ``harness.data.batching`` produces) into one row, in the given order.  Built on the CPU, like
    ``collate``; move it with :meth:`PackedBatch.to`."""
    ids: list[int] = []
    pos: list[int] = []
    loss: list[int] = []
    sid: list[int] = []
    lengths = []
    for i, s in enumerate(sequences):
        toks = list(s["input_ids"])
        n, p = len(toks), int(s["prompt_len"])
        if n == 0:
            raise ValueError(f"sequence {i} is empty")
        ids += toks
        pos += range(n)
        # first token of a sequence never counts: its "previous position" is another sequence's
        loss += [0] * min(max(p, 1), n) + [1] * (n - max(p, 1))
        sid += [i] * n
        lengths.append(n)
    if not ids:
        raise ValueError("nothing to pack")
    t = lambda x: torch.tensor(x, dtype=torch.long).unsqueeze(0)  # noqa: E731
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return PackedBatch(t(ids), t(pos), t(loss), t(sid), cu, max(lengths), tuple(lengths))


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> PackedBatch:
    """A right-padded batch (``harness.data.batching.collate``'s ``Batch`` tensors) as one packed row;
    sequence i of the pack is row i of the batch, so results map back row for row."""
    lengths = attention_mask.sum(dim=1).tolist()
    expected = torch.arange(input_ids.shape[1], device=attention_mask.device)[None, :] < attention_mask.sum(1, keepdim=True)
    if not torch.equal(attention_mask.bool(), expected):
        raise ValueError("pack_padded expects right padding (each attention_mask row is ones, then zeros)")
    seqs = []
    for row, n in enumerate(lengths):
        lm = loss_mask[row, :n]
        first = int(lm.float().argmax()) if bool(lm.any()) else n
        if bool(lm.any()) and not bool(lm[first:].all()):
            raise ValueError(f"row {row}: completion tokens must be one suffix of the sequence")
        seqs.append({"input_ids": input_ids[row, :n].tolist(), "prompt_len": first})
    return pack_sequences(seqs)


@dataclass
class PackedRows:
    """A right-padded batch re-laid as packed rows, and the way back (see :func:`pack_batch`)."""

    packed: PackedBatch
    #: [B, T-1] index into ``per_position.flatten()`` + one trailing zero: the padded batch's
    #: position (r, t) -- which predicts token t+1 of row r -- read from the pack
    back: torch.Tensor
    #: padded token slots (B x T) and packed ones (R x W), for the auto rule and logs
    padded_slots: int
    packed_slots: int


def pack_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
               width: int | None = None) -> PackedRows | None:
    """Right-padded rows -> packed rows of ``width`` token slots (default: the batch's padded
    width T, so no pack has more attention scores than a padded row), sequences placed by
    :func:`plan_packs` and the rest of each row filled with a separate pad "sequence" (positions
    restart there, so it attends only to itself and, coming last, is never attended to).

    ``width`` of at least the total token count gives a single row (flash-attention varlen, where a
    long row costs nothing extra).  Returns None when the batch is not right-padded.  Built with
    index tensors on the batch's device; results map back through :attr:`PackedRows.back`.
    """
    B, T = input_ids.shape
    dev = input_ids.device
    lengths_t = attention_mask.sum(dim=1)
    valid = torch.arange(T, device=dev)[None, :] < lengths_t[:, None]
    if not torch.equal(attention_mask.bool(), valid):
        return None
    lengths = [int(n) for n in lengths_t.tolist()]
    if min(lengths, default=0) < 1:
        return None
    W = T if width is None else max(int(width), max(lengths))
    plan = plan_packs(lengths, W)
    R = len(plan)
    row_of = [0] * B
    off_of = [0] * B
    fill = []
    for r, pack in enumerate(plan):
        off = 0
        for i in pack:
            row_of[i], off_of[i] = r, off
            off += lengths[i]
        fill.append(off)
    row_t = torch.tensor(row_of, device=dev)
    off_t = torch.tensor(off_of, device=dev)
    rr, tt = valid.nonzero(as_tuple=True)
    dest = row_t[rr] * W + off_t[rr] + tt
    # pads: token 0, positions restarting at 0 at each row's fill mark, their own sequence id
    col = torch.arange(W, device=dev)[None, :].expand(R, W)
    fill_t = torch.tensor(fill, device=dev)[:, None]
    ids = torch.zeros(R * W, dtype=input_ids.dtype, device=dev)
    pos = (col - fill_t).clamp(min=0).reshape(-1).clone()
    seq = (B + torch.arange(R, device=dev))[:, None].expand(R, W).reshape(-1).clone()
    loss = torch.zeros(R * W, dtype=loss_mask.dtype, device=dev)
    ids[dest] = input_ids[rr, tt]
    pos[dest] = tt
    seq[dest] = rr
    # a sequence start is never a label: the token before it belongs to another sequence
    loss[dest] = loss_mask[rr, tt] * (tt > 0).to(loss_mask.dtype)
    # (r, t) predicts token t+1 of row r; in the pack that is position off + t of row_of[r]
    back = torch.full((B, T - 1), R * (W - 1), dtype=torch.long, device=dev)
    pr, pt = valid[:, 1:].nonzero(as_tuple=True)
    back[pr, pt] = row_t[pr] * (W - 1) + off_t[pr] + pt
    order = [i for pack in plan for i in pack]
    cu = torch.zeros(B + 1, dtype=torch.int32, device=dev)
    cu[1:] = torch.cumsum(torch.tensor([lengths[i] for i in order], dtype=torch.int32, device=dev), 0)
    packed = PackedBatch(ids.view(R, W), pos.view(R, W), loss.view(R, W), seq.view(R, W), cu, max(lengths),
                         tuple(lengths))
    return PackedRows(packed, back, B * T, R * W)


def unpack(packed: PackedBatch, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Back to right-padded (input_ids, attention_mask, loss_mask), one row per sequence."""
    n, T = packed.num_sequences, max(packed.max_seqlen, 1)
    dev = packed.input_ids.device
    ids = torch.full((n, T), pad_id, dtype=torch.long, device=dev)
    attn = torch.zeros((n, T), dtype=torch.long, device=dev)
    loss = torch.zeros((n, T), dtype=torch.long, device=dev)
    for i, (a, b) in enumerate(zip(packed.cu_seqlens[:-1].tolist(), packed.cu_seqlens[1:].tolist())):
        ids[i, :b - a] = packed.input_ids[0, a:b]
        attn[i, :b - a] = 1
        loss[i, :b - a] = packed.loss_mask[0, a:b]
    return ids, attn, loss


def block_causal_mask(seq_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, 1, L, L] mask letting token q see token k iff same sequence and k <= q.

    ``dtype=None``: boolean (True = attend), what sdpa takes.  A float dtype: additive, 0 or the
    dtype's most negative finite value (as transformers' eager masks; -inf would give NaN rows
    under some kernels), what eager attention adds to its scores.
    """
    L = seq_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=seq_ids.device).tril()
    allowed = (seq_ids[:, :, None] == seq_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seq_ids.device).masked_fill(~allowed, torch.finfo(dtype).min)


# --------------------------------------------------------------------------- mode selection


def _attn_implementation(model: Any) -> str:
    return str(getattr(unwrap_model(model).config, "_attn_implementation", None) or "eager")


def _is_prompt_learning(model: Any) -> bool:
    m = model
    while isinstance(m, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        m = m.module
    cfg = getattr(m, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def _model_dtype(model: Any) -> torch.dtype:
    return unwrap_model(model).get_input_embeddings().weight.dtype


def sliding_window(model: Any) -> int | None:
    """The window of sliding-window layers, if any layer uses one (Mistral, Qwen2 with
    use_sliding_window, Gemma 2/3): the explicit mask of mode "mask" has no window."""
    cfg = unwrap_model(model).config
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return window if "sliding_attention" in types else None
    return window if getattr(cfg, "use_sliding_window", True) else None


def _forward_kwargs(model: Any, packed: PackedBatch, mode: str) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """(attention_mask, extra forward kwargs) that keep attention inside each sequence."""
    kwargs: dict[str, Any] = {"position_ids": packed.position_ids}
    if mode == "position_ids":
        return None, kwargs
    if mode == "varlen":
        kwargs.update(cu_seq_lens_q=packed.cu_seqlens, cu_seq_lens_k=packed.cu_seqlens,
                      max_length_q=packed.max_seqlen, max_length_k=packed.max_seqlen)
        return None, kwargs
    if mode == "mask":
        dtype = None if _attn_implementation(model) == "sdpa" else _model_dtype(model)
        return block_causal_mask(packed.seq_ids, dtype), kwargs
    raise ValueError(f"mode {mode!r} has no packed forward")


def _candidates(model: Any) -> list[str]:
    if _is_prompt_learning(model):
        return []
    if _attn_implementation(model).startswith("flash_attention"):
        return ["varlen"]  # FA takes no 4D mask: varlen or nothing
    return ["position_ids", "mask"]


@torch.no_grad()
def isolation_probe(model: Any, mode: str) -> bool:
    """Does ``mode`` keep packed sequences apart on ``model``?  Packs A=[a a a] and B=[b b b];
    B's logits must not move when A's tokens change, and must equal B run alone (which also
    checks that positions restart).  Masked-out keys contribute exact zeros, so isolated outputs
    are equal up to kernel rounding; leakage moves them by orders of magnitude more.  Runs in eval
    mode (dropout, LoRA dropout off; see :func:`harness.modeling.logprobs.eval_mode` for quantised
    layers, which a probe must not alter) and restores each module's mode."""
    vocab = unwrap_model(model).get_input_embeddings().weight.shape[0]
    dev = unwrap_model(model).get_input_embeddings().weight.device
    a1, a2, b = [[(k * 7 + j) % vocab for j in range(3)] for k in (1, 2, 3)]
    try:
        with eval_mode(model):
            return _probe(model, mode, a1, a2, b, dev)
    except Exception:  # a mechanism the model rejects (e.g. a tensor mask under flex attention) is not one it supports
        return False


def _probe(model: Any, mode: str, a1: list[int], a2: list[int], b: list[int], dev: torch.device) -> bool:
    outs = []
    for a in (a1, a2):
        packed = pack_sequences([{"input_ids": a, "prompt_len": 0}, {"input_ids": b, "prompt_len": 0}]).to(dev)
        attn, kw = _forward_kwargs(model, packed, mode)
        outs.append(_logits(model(input_ids=packed.input_ids, attention_mask=attn, use_cache=False, **kw))[0, 3:].float())
    alone = _logits(model(input_ids=torch.tensor([b], device=dev), attention_mask=torch.ones(1, 3, dtype=torch.long, device=dev),
                          use_cache=False))[0].float()
    scale = 1.0 + float(alone.abs().max())
    tol = 1e-4 if _model_dtype(model) == torch.float32 else 2e-2
    return bool((outs[0] - outs[1]).abs().max() <= tol * scale and (outs[0] - alone).abs().max() <= tol * scale)


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out[0]


_MODE_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


def packing_mode(model: Any) -> str:
    """How :func:`packed_forward_logps` keeps attention inside sequences for ``model``: one of
    ``"position_ids"``, ``"varlen"``, ``"mask"``, or ``"padded"`` (unpack; no padding savings).
    Probed once per model and attention implementation, then cached.  For the core to log."""
    impl = _attn_implementation(model)
    hit = _MODE_CACHE.get(model)
    if hit is not None and hit[0] == impl:
        return hit[1]
    mode = next((m for m in _candidates(model) if isolation_probe(model, m)), "padded")
    _MODE_CACHE[model] = (impl, mode)
    return mode


def packed_forward_logps(
    model: Any,
    packed: PackedBatch,
    *,
    mode: str = "auto",
    path: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of completion-token log-probs [n] and counts [n] (float32), sequence i
    being the i-th one packed — equal to the padded path's per-row results.

    ``mode``: ``"auto"`` (:func:`packing_mode`) or one of ``MODES`` to force it; ``path``: the
    vocabulary projection, ``"auto"`` (chunked where exact), ``"chunked"`` or ``"plain"``, as in
    :func:`harness.modeling.logprobs.completion_token_logps`.
    """
    if mode == "auto":
        mode = packing_mode(model)
    if mode not in MODES:
        raise ValueError(f"mode must be 'auto' or one of {MODES}, got {mode!r}")
    window = sliding_window(model)
    if mode == "mask" and window is not None and packed.max_seqlen > window:
        mode = "padded"  # the explicit mask has no sliding window; padded rows get transformers' own
    if mode == "padded":
        ids, pad_attn, loss = unpack(packed)
        return completion_token_logps(model, ids, pad_attn, loss, chunk_rows=chunk_rows, chunk_vocab=chunk_vocab, path=path)
    attn, kwargs = _forward_kwargs(model, packed, mode)
    per_token, _ = token_logps(model, packed.input_ids, attn, packed.loss_mask, chunk_rows=chunk_rows,
                               chunk_vocab=chunk_vocab, path=path, **kwargs)
    # position t predicts token t+1; the loss mask is 0 at sequence starts, so t+1's sequence is t's
    owner = packed.seq_ids[0, 1:]
    n = packed.num_sequences
    logps = torch.zeros(n, dtype=torch.float32, device=per_token.device).index_add(0, owner, per_token[0])
    counts = torch.zeros(n, dtype=torch.float32, device=per_token.device).index_add(
        0, owner, packed.loss_mask[0, 1:].float())
    return logps, counts


def packed_token_logps(
    model: Any,
    rows: PackedRows,
    mode: str,
    *,
    path: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
) -> torch.Tensor:
    """The padded batch's per-position log-probs [B, T-1] (as
    :func:`harness.modeling.logprobs.token_logps` returns them: 0 off the loss mask), computed on
    the packed rows of :func:`pack_batch` with attention kept inside each sequence by ``mode``
    (not ``"padded"``: unpacked rows are the caller's own batch)."""
    if mode not in MODES or mode == "padded":
        raise ValueError(f"mode must be one of {MODES[:-1]}, got {mode!r}")
    attn, kwargs = _forward_kwargs(model, rows.packed, mode)
    per, _ = token_logps(model, rows.packed.input_ids, attn, rows.packed.loss_mask, chunk_rows=chunk_rows,
                         chunk_vocab=chunk_vocab, path=path, **kwargs)
    flat = torch.cat([per.reshape(-1), per.new_zeros(1)])
    return flat[rows.back]


# --------------------------------------------------------------------------- shared prompts


#: a shared-prompt row is at most this many hidden sizes wide (or the padded width, if wider):
#: its attention scores (2·H·W² multiply-adds a layer, all computed under a dense mask) then stay
#: below a quarter of its projections' (about 12·H²·W for a Llama block), whatever the model size
SHARED_WIDTH_PER_HIDDEN = 1.5


@dataclass
class SharedRows:
    """A right-padded batch whose rows repeat prompts, re-laid so each prompt is computed once per
    *unit*: a unit is one prompt followed by completions of rows that share it, each completion
    at the positions it has in its own row (``P .. P+n-1``) and attending to the prompt and to its
    own earlier tokens only (a tree mask: ``unit`` and ``branch`` below).  Units are placed end
    to end in rows of at most ``width`` tokens (the rest of a row is padding that attends only to
    itself and is never attended to).

    Next-token log-probs are read where the padded batch would read them: completion token j of
    a row is predicted by its unit's last prompt position (j = 0, shared by the unit's
    completions) or by its own token j-1.  ``src`` indexes the flattened packed outputs
    ``[R·W]``, ``labels`` are the predicted tokens and ``dst`` indexes the padded batch's
    flattened per-position log-probs ``[B·(T-1)]`` (see :func:`shared_token_logps`).
    """

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    unit: torch.Tensor  # [R, W] long, the unit of each token (pads: a unit of their own per row)
    branch: torch.Tensor  # [R, W] long, -1 on prompt (and pad) tokens, else the row of the batch
    src: torch.Tensor  # [K] long
    labels: torch.Tensor  # [K] long
    dst: torch.Tensor  # [K] long
    batch_shape: tuple[int, int]  # (B, T) of the padded batch
    padded_slots: int
    packed_slots: int
    #: longest sequence (prompt + completion) of the batch: the sliding-window check
    max_seqlen: int

    def mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[R, 1, W, W]: token q sees token k iff same unit, k <= q, and k is a prompt token or of
        q's own completion.  ``dtype`` as in :func:`block_causal_mask` (None: boolean for sdpa)."""
        W = self.unit.shape[1]
        causal = torch.ones(W, W, dtype=torch.bool, device=self.unit.device).tril()
        same_unit = self.unit[:, :, None] == self.unit[:, None, :]
        visible = (self.branch[:, None, :] == -1) | (self.branch[:, :, None] == self.branch[:, None, :])
        allowed = (same_unit & visible & causal)[:, None]
        if dtype is None:
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _balanced(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Items (by length) into as few bins of ``capacity`` as a balanced fill allows: the fewest
    bins the total could need, longest item first into the emptiest bin; one more bin whenever a
    bin overflows.  Balanced bins are what rows padded to the fullest one want.  Deterministic."""
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n_bins = max(1, -(-sum(lengths) // capacity))
    while True:
        bins: list[list[int]] = [[] for _ in range(n_bins)]
        fill = [0] * n_bins
        for i in order:
            b = min(range(n_bins), key=lambda k: (fill[k], k))
            bins[b].append(i)
            fill[b] += lengths[i]
        if max(fill) <= capacity or n_bins >= len(lengths):
            return [sorted(b) for b in bins if b]
        n_bins += 1


def share_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                  width: int | None = None) -> SharedRows | None:
    """Right-padded rows -> :class:`SharedRows`, or None when no two rows share a prompt, the batch
    is not right-padded, or a row's completion tokens are not one suffix of it.

    A row's prompt is everything before its first completion token (at least its first token,
    which no position predicts).  Rows with the same prompt ids are grouped; a group's completions
    are split into units of at most ``width`` tokens with the prompt (``width`` defaults to the
    padded width T and is never below it), and units into rows, both by :func:`_balanced`.
    """
    B, T = input_ids.shape
    dev = input_ids.device
    if B < 2:
        return None
    lengths_t = attention_mask.sum(dim=1)
    valid = torch.arange(T, device=dev)[None, :] < lengths_t[:, None]
    if not torch.equal(attention_mask.bool(), valid):
        return None
    lm = loss_mask.bool() & valid
    has = lm.any(dim=1)
    first = torch.where(has, lm.float().argmax(dim=1), lengths_t)
    # completion tokens must be exactly the positions from the first one to the row's end
    suffix = torch.arange(T, device=dev)[None, :] >= first[:, None]
    if not torch.equal(lm, suffix & valid):
        return None
    W = max(T, int(width or 0))
    lengths = [int(n) for n in lengths_t.tolist()]
    plen = [max(int(p), 1) for p in first.tolist()]
    rows_ids = input_ids.tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for r in range(B):
        if lengths[r] > plen[r]:  # rows without completion tokens need no forward at all
            groups.setdefault(tuple(rows_ids[r][:plen[r]]), []).append(r)
    if not groups or all(len(m) < 2 for m in groups.values()):
        return None
    # units: (prompt ids, member rows), each at most W tokens
    units: list[tuple[list[int], list[int]]] = []
    for prompt, members in groups.items():
        P = len(prompt)
        comp = [lengths[r] - P for r in members]
        for part in _balanced(comp, W - P):
            units.append((list(prompt), [members[k] for k in part]))
    unit_len = [len(p) + sum(lengths[r] - len(p) for r in mem) for p, mem in units]
    placement = _balanced(unit_len, W)
    R = len(placement)
    Wr = max(sum(unit_len[u] for u in row) for row in placement)
    ids = torch.zeros(R, Wr, dtype=input_ids.dtype)
    pos = torch.zeros(R, Wr, dtype=torch.long)
    unit = torch.zeros(R, Wr, dtype=torch.long)
    branch = torch.full((R, Wr), -1, dtype=torch.long)
    src: list[torch.Tensor] = []
    dst: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    ids_cpu = input_ids.cpu()
    for r, row in enumerate(placement):
        off = 0
        for u in row:
            unit_prompt, members = units[u]
            P = len(unit_prompt)
            ids[r, off:off + P] = torch.tensor(unit_prompt, dtype=input_ids.dtype)
            pos[r, off:off + P] = torch.arange(P)
            unit[r, off:off + unit_len[u]] = u
            last_prompt = r * Wr + off + P - 1
            c = off + P
            for m in members:
                n = lengths[m] - P
                ids[r, c:c + n] = ids_cpu[m, P:lengths[m]]
                pos[r, c:c + n] = torch.arange(P, P + n)
                branch[r, c:c + n] = m
                s = torch.arange(r * Wr + c - 1, r * Wr + c + n - 1)
                s[0] = last_prompt
                src.append(s)
                labels.append(ids_cpu[m, P:lengths[m]])
                dst.append(m * (T - 1) + torch.arange(P - 1, P - 1 + n))
                c += n
            off += unit_len[u]
        # the row's tail: padding, a unit of its own with restarting positions
        unit[r, off:] = len(units) + r
        pos[r, off:] = torch.arange(Wr - off)
    return SharedRows(ids.to(dev), pos.to(dev), unit.to(dev), branch.to(dev), torch.cat(src).to(dev),
                      torch.cat(labels).to(dev), torch.cat(dst).to(dev), (B, T), B * T, R * Wr, max(lengths))


def shared_mode_supported(model: Any) -> bool:
    """Shared-prompt rows need an explicit 4D mask honoured by the model's attention (mode
    ``"mask"``, probed once per model like :func:`packing_mode`); flash-attention takes no such
    mask and prompt learning shares its own prefix, so neither can."""
    impl = _attn_implementation(model)
    hit = _SHARED_CACHE.get(model)
    if hit is not None and hit[0] == impl:
        return hit[1]
    ok = "mask" in _candidates(model) and isolation_probe(model, "mask")
    _SHARED_CACHE[model] = (impl, ok)
    return ok


_SHARED_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, bool]] = weakref.WeakKeyDictionary()


def shared_width(model: Any, padded_width: int) -> int:
    """The widest shared-prompt row for ``model``: ``SHARED_WIDTH_PER_HIDDEN`` x its hidden size,
    or the padded width if that is wider."""
    cfg = unwrap_model(model).config
    get = getattr(cfg, "get_text_config", None)
    hidden = getattr(get() if callable(get) else cfg, "hidden_size", None)
    return max(padded_width, int(SHARED_WIDTH_PER_HIDDEN * hidden) if hidden else 0)


def shared_token_logps(
    model: Any,
    rows: SharedRows,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_vocab: int | None = DEFAULT_CHUNK_VOCAB,
) -> torch.Tensor:
    """The padded batch's per-position log-probs [B, T-1] (0 off the loss mask, as
    :func:`harness.modeling.logprobs.token_logps` returns them), from one forward over the
    shared-prompt rows: the final hidden states (head bypassed) at ``rows.src``, projected by the
    chunked head onto ``rows.labels`` (the chunked path only: the caller checks it is exact)."""
    dtype = None if _attn_implementation(model) == "sdpa" else _model_dtype(model)
    seen: dict[str, Any] = {}
    R, W = rows.input_ids.shape
    with head_bypassed(model, seen) as head:
        hidden, keep = _call(model, rows.input_ids, rows.mask(dtype), W, {"position_ids": rows.position_ids})
    if keep != W or hidden.shape[-1] != head.in_features:
        raise RuntimeError(f"{type(unwrap_model(model)).__name__}.forward did not return one hidden state per input "
                           "position; shared-prompt rows need the plain forward")
    h = hidden.reshape(R * W, -1)[rows.src].to(head.weight.device)
    cdt = seen.get("dtype") or head_compute_dtype(h, head.weight)
    picked = label_logprobs(h, head.weight, rows.labels.to(head.weight.device), head.bias, chunk_rows=chunk_rows,
                            chunk_vocab=chunk_vocab, compute_dtype=cdt)
    B, T = rows.batch_shape
    out = torch.zeros(B * (T - 1), dtype=torch.float32, device=rows.input_ids.device)
    return out.index_put((rows.dst,), picked.to(out.device)).view(B, T - 1)


# --------------------------------------------------------------------------- planning


def plan_packs(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split sequences (by length) into packs of at most ``max_tokens`` tokens.

    First-fit decreasing: longest first, each into the first pack with room, ties broken by index,
    so the plan is a pure function of its inputs (every process of a multi-GPU run agrees).  FFD
    uses at most 11/9·OPT + 6/9 packs.  Each pack lists its sequence indices ascending; every
    index appears exactly once.  A sequence longer than ``max_tokens`` is an error: no pack can
    hold it and the budget is the memory limit.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise ValueError(f"sequence(s) {too_long} are longer than max_tokens={max_tokens} "
                         f"(lengths {[lengths[i] for i in too_long]}); raise the budget or truncate")
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be non-negative")
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for p, r in enumerate(room):
            if lengths[i] <= r:
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(max_tokens - lengths[i])
    return [sorted(p) for p in packs]
