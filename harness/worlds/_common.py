"""Pieces the built-in worlds share: their chat tokenizer, jsonl files, split files and lm-eval rendering."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from harness.worlds.base import WorldError

SPECIALS = {
    "pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|end|>", "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 512) -> Any:
    """A byte-level BPE with the worlds' chat template, saved so ``AutoTokenizer`` reloads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = list(SPECIALS.values()) + ROLE_TOKENS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIALS, additional_special_tokens=ROLE_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    fast.save_pretrained(out_dir)
    return fast


def unpaired_split(paired: list[dict[str, Any]], desirable_fraction: float, seed: int) -> list[dict[str, Any]]:
    """KTO data from the preference split: chosen -> desirable, rejected -> undesirable,
    keeping ``desirable_fraction`` of the rows desirable (the KTO paper's data-imbalance ablation)."""
    if not 0.0 < desirable_fraction < 1.0:
        raise ValueError(f"data.desirable_fraction must be in (0, 1), got {desirable_fraction}")
    rng = random.Random(seed + 17)
    n = len(paired)
    n_des = round(n * desirable_fraction)
    order = list(range(n))
    rng.shuffle(order)
    rows = []
    for k, i in enumerate(order):
        row = paired[i]
        desirable = k < n_des
        rows.append({"prompt": row["prompt"], "completion": row["chosen" if desirable else "rejected"], "label": desirable})
    rng.shuffle(rows)
    return rows


def built_split_path(world: Any, split: str) -> Path:
    """A built world's split file, ``<root>/data/<split>.jsonl``; ``unpaired`` is derived from
    ``paired`` at the world's ``desirable_fraction`` and cached beside it."""
    if split == "unpaired":
        frac = world.options.desirable_fraction
        path = world.root / "data" / f"unpaired-d{frac:.2f}.jsonl"
        if not path.exists():
            write_jsonl(path, unpaired_split(read_jsonl(built_split_path(world, "paired")), frac, world.options.seed))
        return path
    if split not in world.splits():
        raise WorldError(f"world {world.name!r} has no split {split!r}; choose from: {', '.join(world.splits())}")
    return world.root / "data" / f"{split}.jsonl"
