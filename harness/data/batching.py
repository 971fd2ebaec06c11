"""Tokenisation of normalised records into per-segment token ids, and collation into
one concatenated, right-padded batch so chosen and rejected (or completion and KL)
sequences go through the model in a single forward.

Records come from ``harness.data.load`` in a fixed shape: ``prompt`` is a list of chat
messages; ``completion`` / ``chosen`` / ``rejected`` are assistant reply strings;
``label`` is the desirable flag of unpaired data.  The prompt is rendered with the
tokenizer's chat template (``add_generation_prompt=True``); the completion is
appended with the EOS token; only completion tokens count in the loss.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.contract import SEGMENTS, DataKind


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # base models without a template: plain text, one turn per paragraph
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]], max_prompt_length: int) -> list[int]:
    ids = tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_length:]  # keep the end: the instruction nearest the answer


def encode_completion(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def _segment(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> dict[str, Any]:
    room = max(max_length - len(prompt_ids), 1)
    ids = prompt_ids + completion_ids[:room]
    return {"input_ids": ids, "prompt_len": len(prompt_ids)}


def tokenize_records(
    records: list[dict[str, Any]],
    tokenizer: Any,
    kind: DataKind,
    max_length: int,
    max_prompt_length: int,
    kl_seed: int = 0,
) -> list[dict[str, Any]]:
    """Normalised records -> ``[{"idx", "segments": {name: {"input_ids", "prompt_len"}}, "label"?}]``.

    For unpaired data the ``kl`` segment pairs example i's prompt with the completion of
    a fixed, seeded derangement of the dataset, so KTO's KL baseline (and its cached
    reference log-probs) is deterministic.
    """
    if kind == DataKind.PROMPT:
        return [
            {"idx": i, "prompt_ids": encode_prompt(tokenizer, r["prompt"], max_prompt_length), "segments": {}}
            for i, r in enumerate(records)
        ]
    prompts = [encode_prompt(tokenizer, r["prompt"], max_prompt_length) for r in records]
    out: list[dict[str, Any]] = []
    if kind == DataKind.UNPAIRED:
        completions = [encode_completion(tokenizer, r["completion"]) for r in records]
        n = len(records)
        g = torch.Generator().manual_seed(kl_seed)
        perm = torch.randperm(n, generator=g).tolist()
        mismatch = [0] * n
        for j in range(n):  # a cyclic shift of a random order has no fixed points (n > 1)
            mismatch[perm[j]] = perm[(j + 1) % n]
        for i, r in enumerate(records):
            out.append({
                "idx": i,
                "label": bool(r["label"]),
                "segments": {
                    "completion": _segment(prompts[i], completions[i], max_length),
                    "kl": _segment(prompts[i], completions[mismatch[i]], max_length),
                },
            })
        return out
    for i, r in enumerate(records):
        segs = {name: _segment(prompts[i], encode_completion(tokenizer, r[name]), max_length)
                for name in SEGMENTS[kind]}
        out.append({"idx": i, "segments": segs})
    return out


def fingerprint(examples: list[dict[str, Any]]) -> str:
    """Content hash of tokenised examples (keys the reference log-prob cache)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex["idx"], ex.get("label"), {k: v["input_ids"] + [-1, v["prompt_len"]] for k, v in ex["segments"].items()}], sort_keys=True).encode())
    return h.hexdigest()[:24]


@dataclass
class Batch:
    """One micro-batch: all segments stacked on the batch axis in ``SEGMENTS`` order."""

    input_ids: torch.Tensor  # [S*B, T]
    attention_mask: torch.Tensor  # [S*B, T]
    loss_mask: torch.Tensor  # [S*B, T], 1 on completion tokens
    segments: tuple[str, ...]
    size: int  # B
    idx: torch.Tensor  # [B] dataset indices (for the reference cache)
    label: torch.Tensor | None = None  # [B] bool, unpaired data

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.loss_mask.to(device),
            self.segments, self.size, self.idx.to(device),
            None if self.label is None else self.label.to(device),
        )

    def n_tokens(self, segment: str) -> int:
        s = self.segments.index(segment)
        return int(self.loss_mask[s * self.size:(s + 1) * self.size, 1:].sum())


def collate(examples: list[dict[str, Any]], pad_id: int, segments: tuple[str, ...]) -> Batch:
    seqs = [ex["segments"][name] for name in segments for ex in examples]
    T = max(len(s["input_ids"]) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    lmask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s["input_ids"])
        ids[row, :n] = torch.tensor(s["input_ids"])
        attn[row, :n] = 1
        lmask[row, s["prompt_len"]:n] = 1
    label = None
    if "label" in examples[0]:
        label = torch.tensor([bool(ex["label"]) for ex in examples])
    return Batch(ids, attn, lmask, segments, len(examples), torch.tensor([ex["idx"] for ex in examples]), label)


#: bump when tokenisation changes, so cached tokenised datasets are rebuilt
TOKENIZE_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    h.update(repr((tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)).encode())
    return h.hexdigest()[:24]


def tokenize_cached(
    records: list[dict[str, Any]], tokenizer: Any, kind: DataKind, max_length: int, max_prompt_length: int,
    cache_dir: Path | None,
) -> list[dict[str, Any]]:
    """:func:`tokenize_records`, cached on disk by the records' content, the tokenizer and the
    lengths, so sweep trials over the same data skip tokenisation."""
    if cache_dir is None:
        return tokenize_records(records, tokenizer, kind, max_length, max_prompt_length)
    h = hashlib.sha256(json.dumps([TOKENIZE_VERSION, kind.value, max_length, max_prompt_length,
                                   tokenizer_fingerprint(tokenizer)]).encode())
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode())
    path = cache_dir / f"{h.hexdigest()[:32]}.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            path.unlink(missing_ok=True)  # torn or corrupt: rebuild
    examples = tokenize_records(records, tokenizer, kind, max_length, max_prompt_length)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(examples))
    os.replace(tmp, path)
    return examples
