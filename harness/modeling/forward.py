"""Per-sequence log-probs (and reward-head scores) of a batch's segments in one forward.

The one place where a model meets a batch for training and scoring: the training loop,
the reference-log-prob pass, held-out loss, reward-model accuracy and KL estimates all
call :func:`forward_segments` / :func:`sequence_logps`.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.core.contract import SeqOut
from harness.data.batching import Batch


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


def forward_segments(model: Any, batch: Batch, model_kind: str, tokens: bool = False) -> dict[str, SeqOut]:
    """One forward over all segments of the batch; results split back per segment.

    ``tokens=True`` also returns each completion token's log-prob (``SeqOut.token_logps``,
    completion space, see :func:`completion_space`) for token-level objectives (PPO, GRPO).

    Causal LMs project to the vocabulary only from the first position that predicts a
    completion token (``logits_to_keep``): the [rows, T, V] logits are the memory peak on
    large vocabularies, and prompt positions never enter a loss.
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
    T = batch.input_ids.shape[1]
    has_completion = batch.loss_mask.any(dim=1)
    first = batch.loss_mask.float().argmax(dim=1)[has_completion]
    start = max(int(first.min()) - 1, 0) if first.numel() else 0
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                    logits_to_keep=T - start)
    except TypeError:  # a model class without logits_to_keep (remote code): project everything
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        start = 0
    per_pos = token_logps(out.logits, batch.input_ids[:, start:])
    lmask = batch.loss_mask[:, start:]
    mask = lmask[:, 1:].float()
    logps, counts = (per_pos * mask).sum(-1), mask.sum(-1)
    tok, tmask = completion_space(per_pos, lmask) if tokens else (None, None)
    for s, name in enumerate(batch.segments):
        sl = slice(s * n, (s + 1) * n)
        result[name] = SeqOut(logps[sl], counts[sl], label=batch.label if name == "completion" else None,
                              token_logps=tok[sl] if tok is not None else None,
                              token_mask=tmask[sl] if tmask is not None else None)
    return result
