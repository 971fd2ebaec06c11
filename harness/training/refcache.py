"""Reference log-probs, computed once per (reference weights, tokenised data, lengths,
precision) and cached on disk, so no reference model is held or run during training and
later runs / sweep trials sharing them skip the pass.

    harness run method=dpo        # harness.training.runner.compute_references calls this module

The pass goes through ``harness.modeling.forward.forward_segments`` exactly as the training step
does (same log-prob path and packing rule, see that module), so reference and policy values are
computed alike.  Examples are batched in order of length: the pass is forward-only and its
per-sequence results do not depend on the company a sequence keeps, so batching similar lengths
together only removes padding work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness.data.batching import collate
from harness.modeling.forward import forward_segments
from harness.modeling.logprobs import eval_mode
from harness.store.cache import BlobCache


@torch.no_grad()
def compute_reference_logps(
    model: Any, examples: list[dict[str, Any]], segments: tuple[str, ...], pad_id: int,
    batch_size: int, autocast: torch.autocast | None, device: torch.device,
) -> dict[str, torch.Tensor]:
    with eval_mode(model):  # dropout off; quantised layers left as training will use them
        return _reference_pass(model, examples, segments, pad_id, batch_size, autocast, device)


def _reference_pass(
    model: Any, examples: list[dict[str, Any]], segments: tuple[str, ...], pad_id: int,
    batch_size: int, autocast: torch.autocast | None, device: torch.device,
) -> dict[str, torch.Tensor]:
    out = {s: torch.zeros(len(examples), dtype=torch.float32) for s in segments}
    # longest first: the first batch shows the peak memory at once, and rows of one batch
    # have similar lengths (ties keep data order, so the pass is deterministic)
    order = sorted(range(len(examples)),
                   key=lambda i: (-max(len(examples[i]["segments"][s]["input_ids"]) for s in segments), i))
    for i in range(0, len(order), batch_size):
        chunk = [examples[j] for j in order[i:i + batch_size]]
        batch = collate(chunk, pad_id, segments).to(device)
        with autocast if autocast is not None else contextlib.nullcontext():
            res = forward_segments(model, batch, "causal_lm")
        idx = batch.idx.cpu()
        for s in segments:
            out[s][idx] = res[s].logps.float().cpu()
    return out


#: bump when this pass's numerics change, so cached values computed the old way are not reused:
#: 2 = the one forward's chunked head (bf16 matmuls under autocast) and packing; quantised layers
#: no longer re-packed by an eval-mode pass (see harness.modeling.logprobs.eval_mode)
PASS_VERSION = 2


def reference_logps(
    key_parts: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]], root: Path | None
) -> tuple[dict[str, torch.Tensor], bool]:
    """Cached reference log-probs: returns (logps per segment, whether it was a cache hit).
    ``root=None`` computes without caching (``train.ref_cache=false``)."""
    key = {**key_parts, "pass": PASS_VERSION}
    return BlobCache("refcache", fmt="torch", root=root if root is not None else False).get_or_compute(key, compute)
