"""Per-sequence log-probs (and reward-head scores) of a batch's segments in one forward.

The one place where a model meets a batch for training and scoring: the training loop,
the reference-log-prob pass (``harness.training.refcache``), held-out loss, reward-model
accuracy and KL estimates all call :func:`forward_segments` / :func:`sequence_logps`, so they
all take the same path.

How a causal LM's batch is computed (:class:`ForwardOptions`, default ``auto`` for all three):

* **log-probs** -- ``chunked``: the vocabulary projection of completion positions only, in
  blocks, never holding the [rows, T, V] logits (:mod:`harness.modeling.logprobs`); ``plain``:
  the model's logits and a log-softmax.  ``auto`` takes the chunked path wherever it is exact for
  the model (a plain ``nn.Linear`` head, no logit soft-capping, an unsharded weight) and the plain
  one otherwise, logging the reason once per model.  There is no size rule: at the smallest
  vocabulary measured (512, ``toy:bench``, 16 rows x 256) a training step costs the same CPU time
  on both paths (within 3%: it skips prompt and padding positions the plain head projects, and
  pays a recomputation in backward), and from there up the chunked path only gains (2.2x at a
  128k vocabulary, ``benchmarks/bench_dpo_vocab.py``) while its memory stays one block.
* **packing** -- ``on``: the batch's sequences are re-laid end to end in packed rows no wider
  than the padded batch (:func:`harness.modeling.packing.pack_batch`), attention kept inside each
  sequence by the mechanism :func:`harness.modeling.packing.packing_mode` proved on the model;
  ``off``: the padded rows.  ``auto`` packs when that removes at least :data:`PACK_MIN_SAVING` of
  the batch's token slots (length-skewed SFT data) and leaves near-uniform batches (DPO pairs of
  similar lengths, where no two sequences fit in one row) padded.  Models that cannot be packed
  (prefix tuning, mechanisms that fail the isolation probe) run padded, reason logged once.
* **prompt sharing** -- ``on``: rows whose prompts are the same token ids (the samples of one
  prompt in a GRPO / RLOO / PPO rollout, a DPO pair's chosen and rejected) are laid out as one
  prompt followed by their completions (:func:`harness.modeling.packing.share_prompts`), each
  completion at its own positions and attending to the prompt and to itself through an explicit
  tree mask, so the prompt's tokens are computed once instead of once per row; completion token 0
  of every row is read from the shared last prompt position.  ``auto`` shares when that needs at
  most (1 - :data:`PACK_MIN_SAVING`) of the token slots packing or padding would use: a GRPO
  micro-batch of 8 samples per prompt on the toy world runs 0.44x the slots of its padded rows
  and half the time, while DPO pairs of long answers to short prompts stay as they were.  Chunked
  path only (the hidden states are read at arbitrary positions), models whose attention honours
  an explicit 4D mask (isolation probe), rows no wider than
  :data:`harness.modeling.packing.SHARED_WIDTH_PER_HIDDEN` hidden sizes (or the padded width).

All three choices change only rounding: per-sequence results equal the plain padded ones to 1e-5 in
fp32 (``tests/test_forward_paths.py``).  Set them per model with :func:`configure` or for the
process with :func:`set_defaults` (benchmarks); ``forward_segments(..., options=...)`` overrides.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.core.contract import SeqOut
from harness.data.batching import Batch
from harness.modeling.logprobs import chunked_unsupported_reason, resolve_path, unwrap_model
from harness.modeling.logprobs import token_logps as model_token_logps
from harness.modeling.packing import (
    PackedRows,
    SharedRows,
    pack_batch,
    packed_token_logps,
    packing_mode,
    plan_packs,
    share_prompts,
    shared_mode_supported,
    shared_token_logps,
    shared_width,
    sliding_window,
)

log = logging.getLogger(__name__)

#: auto packs a batch when packed rows need at most (1 - this) of its padded token slots
PACK_MIN_SAVING = 0.2


@dataclass(frozen=True)
class ForwardOptions:
    """How :func:`forward_segments` computes a causal LM's log-probs (module docstring)."""

    logprobs: Literal["auto", "chunked", "plain"] = "auto"
    packing: Literal["auto", "on", "off"] = "auto"
    share_prompts: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.logprobs not in ("auto", "chunked", "plain"):
            raise ValueError(f"logprobs must be 'auto', 'chunked' or 'plain', got {self.logprobs!r}")
        if self.packing not in ("auto", "on", "off"):
            raise ValueError(f"packing must be 'auto', 'on' or 'off', got {self.packing!r}")
        if self.share_prompts not in ("auto", "on", "off"):
            raise ValueError(f"share_prompts must be 'auto', 'on' or 'off', got {self.share_prompts!r}")


_DEFAULT: list[ForwardOptions] = [ForwardOptions()]
_PER_MODEL: weakref.WeakKeyDictionary[Any, ForwardOptions] = weakref.WeakKeyDictionary()
_LOGGED: set[tuple[int, str]] = set()


def set_defaults(options: ForwardOptions) -> ForwardOptions:
    """Process-wide options for models without their own; returns the previous ones."""
    previous = _DEFAULT[0]
    _DEFAULT[0] = options
    return previous


@contextlib.contextmanager
def defaults(options: ForwardOptions) -> Iterator[None]:
    previous = set_defaults(options)
    try:
        yield
    finally:
        set_defaults(previous)


def _key(model: Any) -> Any:
    return unwrap_model(model)


def configure(model: Any, options: ForwardOptions | None) -> None:
    """Options for this model (wrappers included: DDP, peft, compile); None removes them."""
    key = _key(model)
    if options is None:
        _PER_MODEL.pop(key, None)
    else:
        _PER_MODEL[key] = options


def options_for(model: Any) -> ForwardOptions:
    return _PER_MODEL.get(_key(model), _DEFAULT[0])


def _log_once(model: Any, message: str) -> None:
    key = (id(_key(model)), message)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("%s", message)


# --------------------------------------------------------------------------- plain helpers


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probs at every position, [B, T-1] in float32 whatever the autocast dtype;
    ``log_softmax`` only at the gathered labels (through ``logsumexp``)."""
    logits = logits[:, :-1].float()
    picked = torch.gather(logits, 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token log-probs over completion positions, and their count, per row."""
    mask = loss_mask[:, 1:].float()
    return (token_logps(logits, input_ids) * mask).sum(-1), mask.sum(-1)


def completion_space(per_position: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position values [B, T-1] (position t predicts token t+1) -> per completion token [B, Lc].

    Entry j of row r belongs to the j-th completion token of row r, whatever the row's prompt
    length or padding, so values computed in different batches (rollout time, each PPO
    epoch's micro-batches, the reference) line up token by token.  Returns (values, mask).
    """
    target = loss_mask[:, 1:].bool()
    counts = target.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    first = target.float().argmax(dim=1)
    j = torch.arange(width, device=per_position.device)
    index = (first.unsqueeze(1) + j).clamp(max=max(per_position.shape[1] - 1, 0))
    mask = j.unsqueeze(0) < counts.unsqueeze(1)
    values = torch.gather(per_position, 1, index) * mask
    return values, mask


# --------------------------------------------------------------------------- path choice


def logprob_path(model: Any, requested: str = "auto") -> str:
    """``"chunked"`` or ``"plain"`` for ``model`` (an explicit ``"chunked"`` that is not exact
    for the model raises, see :func:`harness.modeling.logprobs.resolve_path`)."""
    path = resolve_path(model, requested)
    if requested == "auto" and path == "plain":
        _log_once(model, f"log-probs: plain full-logits path, because {chunked_unsupported_reason(model)}")
    return path


def _pack_mode(model: Any, requested: str) -> str | None:
    """The packing mechanism to use for ``model``, or None to run padded rows."""
    if requested == "off":
        return None
    mode = packing_mode(model)
    if mode == "padded":
        _log_once(model, "packing: off for this model (prefix tuning, or no attention mechanism passed the "
                         "isolation probe): batches run as padded rows")
        return None
    return mode


def _packed_rows(model: Any, batch: Batch, requested: str) -> tuple[PackedRows, str] | None:
    mode = _pack_mode(model, requested)
    if mode is None or batch.input_ids.shape[0] < 2:
        return None
    # flash-attention varlen has no quadratic mask: one long row; masks/sdpa: rows no wider than T
    width = int(batch.attention_mask.sum()) if mode == "varlen" else None
    if requested == "auto" and mode != "varlen":
        # decide from the lengths alone before building anything (most DPO batches stay padded)
        lengths = batch.attention_mask.sum(dim=1).tolist()
        B, T = batch.input_ids.shape
        if len(plan_packs(lengths, T)) * T > (1 - PACK_MIN_SAVING) * B * T:
            return None
    rows = pack_batch(batch.input_ids, batch.attention_mask, batch.loss_mask, width=width)
    if rows is None:
        _log_once(model, "packing: a batch is not right-padded; it runs as padded rows")
        return None
    window = sliding_window(model)
    if mode == "mask" and window is not None and rows.packed.max_seqlen > window:
        # the explicit block mask has no sliding window; padded rows get transformers' own
        _log_once(model, f"packing: off for sequences longer than the model's sliding window ({window})")
        return None
    if requested == "auto" and rows.packed_slots > (1 - PACK_MIN_SAVING) * rows.padded_slots:
        return None
    return rows, mode


def _padded_alternative(model: Any, batch: Batch, requested: str) -> int:
    """Token slots of what runs when prompts are not shared: packed rows where auto (or on)
    packing would pack, else the padded batch."""
    B, T = batch.input_ids.shape
    if requested == "off" or packing_mode(model) in ("padded", "varlen"):
        return B * T
    packed = len(plan_packs(batch.attention_mask.sum(dim=1).tolist(), T)) * T
    return packed if requested == "on" or packed <= (1 - PACK_MIN_SAVING) * B * T else B * T


def _shared_rows(model: Any, batch: Batch, opts: ForwardOptions, path: str) -> SharedRows | None:
    """Shared-prompt rows for ``batch`` (rows repeating a prompt compute it once), or None to run
    it packed or padded.  ``auto`` shares when that needs at most (1 - PACK_MIN_SAVING) of the
    token slots of the alternative; ``on`` whenever some prompt repeats."""
    requested = opts.share_prompts
    if requested == "off" or batch.input_ids.shape[0] < 2:
        return None
    if path != "chunked":
        if requested == "on":
            _log_once(model, "prompt sharing: off, it reads hidden states through the chunked head, and this model "
                             "takes the plain log-prob path")
        return None
    if not shared_mode_supported(model):
        _log_once(model, "prompt sharing: off for this model (flash-attention or prompt learning, or the explicit "
                         "4D mask failed the isolation probe)")
        return None
    T = batch.input_ids.shape[1]
    rows = share_prompts(batch.input_ids, batch.attention_mask, batch.loss_mask, width=shared_width(model, T))
    if rows is None:
        return None
    window = sliding_window(model)
    if window is not None and rows.max_seqlen > window:
        _log_once(model, f"prompt sharing: off for sequences longer than the model's sliding window ({window})")
        return None
    if requested == "auto" and rows.packed_slots > (1 - PACK_MIN_SAVING) * _padded_alternative(model, batch, opts.packing):
        return None
    return rows


def per_position_logps(model: Any, batch: Batch, options: ForwardOptions | None = None) -> torch.Tensor:
    """Per-position next-token log-probs [B, T-1] of a causal LM on ``batch`` (fp32, exactly 0
    where ``batch.loss_mask[:, 1:]`` is 0), by the path, prompt sharing and packing ``options``
    choose."""
    opts = options or options_for(model)
    path = logprob_path(model, opts.logprobs)
    shared = _shared_rows(model, batch, opts, path)
    if shared is not None:
        return shared_token_logps(model, shared)
    packed = _packed_rows(model, batch, opts.packing)
    if packed is not None:
        rows, mode = packed
        return packed_token_logps(model, rows, mode, path=path)
    per_pos, _ = model_token_logps(model, batch.input_ids, batch.attention_mask, batch.loss_mask, path=path)
    return per_pos


def forward_segments(model: Any, batch: Batch, model_kind: str, tokens: bool = False, *,
                     options: ForwardOptions | None = None) -> dict[str, SeqOut]:
    """One forward over all segments of the batch; results split back per segment.

    ``tokens=True`` also returns each completion token's log-prob (``SeqOut.token_logps``,
    completion space, see :func:`completion_space`) for token-level objectives (PPO, GRPO).
    ``options``: log-prob path and packing (default: the model's, see :func:`configure`).

    Causal LMs project to the vocabulary only at positions that predict a completion token
    (chunked path) or from the first such position on (plain path, ``logits_to_keep``): the
    [rows, T, V] logits are the memory peak on large vocabularies, and prompt positions never
    enter a loss.
    """
    n = batch.size
    result: dict[str, SeqOut] = {}
    if model_kind == "reward":
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        scores = out.logits[:, 0].float()
        counts = batch.loss_mask[:, 1:].sum(-1)
        for s, name in enumerate(batch.segments):
            sl = slice(s * n, (s + 1) * n)
            result[name] = SeqOut(torch.zeros_like(scores[sl]), counts[sl], scores[sl])
        return result
    per_pos = per_position_logps(model, batch, options)
    logps, counts = per_pos.sum(-1), batch.loss_mask[:, 1:].float().sum(-1)
    tok, tmask = completion_space(per_pos, batch.loss_mask) if tokens else (None, None)
    for s, name in enumerate(batch.segments):
        sl = slice(s * n, (s + 1) * n)
        result[name] = SeqOut(logps[sl], counts[sl], label=batch.label if name == "completion" else None,
                              token_logps=tok[sl] if tok is not None else None,
                              token_mask=tmask[sl] if tmask is not None else None)
    return result
