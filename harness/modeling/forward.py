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


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token log-probs over completion positions, and their count, per row.

    Computed in float32 whatever the autocast dtype, with ``log_softmax`` at the gathered
    positions only through ``logsumexp`` to keep memory at O(B·T·V) once.
    """
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    mask = loss_mask[:, 1:].to(logits.dtype)
    picked = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)


def forward_segments(model: Any, batch: Batch, model_kind: str) -> dict[str, SeqOut]:
    """One forward over all segments of the batch; results split back per segment.

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
    logps, counts = sequence_logps(out.logits, batch.input_ids[:, start:], batch.loss_mask[:, start:])
    for s, name in enumerate(batch.segments):
        sl = slice(s * n, (s + 1) * n)
        result[name] = SeqOut(logps[sl], counts[sl], label=batch.label if name == "completion" else None)
    return result
