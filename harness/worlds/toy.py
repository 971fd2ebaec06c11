"""The built-in toy world: a synthetic instruction task with a programmatic gold reward,
a BPE tokenizer with a chat template and a tiny Llama SFT base, built locally on first
use (no downloads) and cached content-addressed.

It is the embedded default of every command (``model=toy data=toy``):

    harness run method=dpo          # trains on the toy world's preference split

The task follows the controlled-sentiment setting of the DPO paper (Rafailov et al.
2023, §6.1): prompts ask for a short text about a subject; responses vary in
sentiment, topicality and length; the gold reward scores them.  SFT data is sampled
from a mixed-sentiment "behaviour policy", so the SFT base sits at a middling reward
and preference methods have room above it.

Splits (jsonl, TRL's column conventions, prompts are strings):
``sft.jsonl`` {prompt, completion}, ``paired.jsonl`` {prompt, chosen, rejected} labelled
by the gold reward with Bradley-Terry noise, ``unpaired-d<frac>.jsonl`` {prompt,
completion, label} with a chosen share of desirable examples, ``prompts.jsonl`` and
held-out ``eval_prompts.jsonl`` {prompt} (subject/template combinations never trained on).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOY_VERSION = "1"

SUBJECTS = [
    "movie", "pizza", "concert", "book", "hotel", "park", "game", "phone", "coffee", "museum",
    "train", "garden", "album", "laptop", "beach", "cafe", "show", "bike", "class", "lake",
    "song", "city", "soup", "film", "team", "party", "trip", "car", "shop", "play",
]
PROMPT_TEMPLATES = [
    "Write a short review of the {s}.",
    "What did you think of the {s}?",
    "Describe the {s} in one sentence.",
    "Tell me about the {s}.",
    "Give your opinion on the {s}.",
    "How was the {s}?",
]
POSITIVE = ["great", "wonderful", "lovely", "excellent", "amazing", "delightful", "superb",
            "fantastic", "charming", "brilliant", "pleasant", "fun"]
NEGATIVE = ["awful", "terrible", "boring", "dull", "bad", "horrible", "poor", "dreadful",
            "sad", "messy", "noisy", "ugly"]
NEUTRAL = ["okay", "fine", "average", "plain", "ordinary", "typical", "normal", "usual"]
SENTIMENT = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}, **{w: 0.0 for w in NEUTRAL}}
RESPONSE_TEMPLATES = [
    "the {s} was {a} and {b} .",
    "i think the {s} is {a} , really {b} .",
    "honestly the {s} felt {a} .",
    "a {a} {s} with a {b} feel .",
    "overall the {s} was {a} , {b} and {c} .",
    "my friends said the {s} was {a} but i found it {b} .",
    "the {s} ? {a} , {b} , {c} .",
]
#: Bradley-Terry temperature of the simulated annotator (higher = noisier labels)
LABEL_TEMPERATURE = 0.5

SPECIALS = {
    "pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|end|>", "unk_token": "<|unk|>",
}
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

#: tiny Llama shapes; "bench" is the 4-layer, 256-hidden model of the benchmark
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4},
    "base": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4},
    "bench": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4},
}
DEFAULT_SIZE = "base"


# --------------------------------------------------------------------------- gold reward

_WORD = re.compile(r"[a-z]+")


def _prompt_subject(prompt: str) -> str | None:
    words = set(_WORD.findall(prompt.lower()))
    for s in SUBJECTS:
        if s in words:
            return s
    return None


def gold_reward(prompt: str, response: str) -> float:
    r"""Programmatic reward of a response to a toy prompt.

    .. math::
        r = \bar{s} + 0.5\,[\text{mentions the subject}] - 0.5\,[\text{mentions another subject}]
            - 0.25\,(\text{repeated words}) - 0.1\max(0, n_{words} - 16) - 0.5\,[\text{empty}]

    where :math:`\bar{s}` is the mean sentiment (+1 / 0 / -1) of the response's opinion
    words (0 when it has none).  Range about [-2, 1.5]; a perfect answer is a short,
    on-topic, wholly positive sentence (1.5).
    """
    words = _WORD.findall(response.lower())
    if not words:
        return -1.0
    subject = _prompt_subject(prompt)
    opinions = [SENTIMENT[w] for w in words if w in SENTIMENT]
    sentiment = sum(opinions) / len(opinions) if opinions else 0.0
    mentioned = {w for w in words if w in SUBJECTS}
    on_topic = 1.0 if subject is not None and subject in mentioned else 0.0
    off_topic = 1.0 if mentioned - {subject} else 0.0
    content = [w for w in words if w in SENTIMENT or w in SUBJECTS]
    repeats = len(content) - len(set(content))
    return sentiment + 0.5 * on_topic - 0.5 * off_topic - 0.25 * repeats - 0.1 * max(0, len(words) - 16)


# --------------------------------------------------------------------------- sampling


def _sample_response(rng: random.Random, subject: str) -> str:
    mood = rng.choice(["pos", "neg", "neu", "mixed"])
    pools = {"pos": POSITIVE, "neg": NEGATIVE, "neu": NEUTRAL}

    def adj() -> str:
        if mood == "mixed":
            return rng.choice(rng.choice([POSITIVE, NEGATIVE, NEUTRAL]))
        # mostly the mood's words, sometimes a stray one (real text is not pure)
        pool = pools[mood] if rng.random() < 0.8 else rng.choice([POSITIVE, NEGATIVE, NEUTRAL])
        return rng.choice(pool)

    s = subject if rng.random() < 0.8 else rng.choice([x for x in SUBJECTS if x != subject])
    return rng.choice(RESPONSE_TEMPLATES).format(s=s, a=adj(), b=adj(), c=adj())


def _prompt_combos(seed: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    combos = [(t, s) for t in range(len(PROMPT_TEMPLATES)) for s in SUBJECTS]
    rng = random.Random(seed * 7919 + 1)
    rng.shuffle(combos)
    n_eval = len(combos) // 5
    return combos[n_eval:], combos[:n_eval]


def _prompt(t: int, s: str) -> str:
    return PROMPT_TEMPLATES[t].format(s=s)


def generate_splits(seed: int, size: int) -> dict[str, list[dict[str, Any]]]:
    """All toy splits as lists of rows (deterministic in ``seed``)."""
    rng = random.Random(seed)
    train_combos, eval_combos = _prompt_combos(seed)
    sft = []
    for _ in range(size):
        t, s = rng.choice(train_combos)
        sft.append({"prompt": _prompt(t, s), "completion": _sample_response(rng, s)})
    paired: list[dict[str, str]] = []
    while len(paired) < size:
        t, s = rng.choice(train_combos)
        p = _prompt(t, s)
        a, b = _sample_response(rng, s), _sample_response(rng, s)
        if a == b:
            continue
        ra, rb = gold_reward(p, a), gold_reward(p, b)
        p_a = 1 / (1 + math.exp(-(ra - rb) / LABEL_TEMPERATURE))
        chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
        paired.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    prompts = [{"prompt": _prompt(*rng.choice(train_combos))} for _ in range(size)]
    eval_prompts = [{"prompt": _prompt(t, s)} for t, s in eval_combos]
    return {"sft": sft, "paired": paired, "prompts": prompts, "eval_prompts": eval_prompts}


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


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    return Path(os.environ.get("ALIGN_HARNESS_CACHE", Path.home() / ".cache" / "align-harness"))


def _key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps({"v": TOY_VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Cross-process lock so parallel sweep workers build the world once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_atomically(target: Path, builder: Any) -> Path:
    if (target / "DONE").exists():
        return target
    with _locked(target):
        if (target / "DONE").exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            builder(tmp)
            (tmp / "DONE").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 512) -> Any:
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


@dataclass
class World:
    root: Path
    seed: int
    size: int

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def split_path(self, name: str) -> Path:
        return self.data_dir / f"{name}.jsonl"

    def unpaired_path(self, desirable_fraction: float) -> Path:
        path = self.data_dir / f"unpaired-d{desirable_fraction:.2f}.jsonl"
        if not path.exists():
            rows = unpaired_split(_read_jsonl(self.split_path("paired")), desirable_fraction, self.seed)
            fd, tmp = tempfile.mkstemp(dir=self.data_dir, suffix=".tmp")
            os.close(fd)
            _write_jsonl(Path(tmp), rows)
            os.replace(tmp, path)
        return path

    def base_model_dir(self, size: str = DEFAULT_SIZE) -> Path:
        return ensure_base_model(self, size)

    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in _read_jsonl(self.split_path("eval_prompts"))]


def ensure_world(seed: int = 0, size: int = 2048) -> World:
    """Data + tokenizer of the toy world, built once per (version, seed, size)."""
    target = cache_root() / "toyworld" / f"world-{_key(seed=seed, size=size)}"

    def build(tmp: Path) -> None:
        splits = generate_splits(seed, size)
        (tmp / "data").mkdir()
        for name, rows in splits.items():
            _write_jsonl(tmp / "data" / f"{name}.jsonl", rows)
        texts = [r["prompt"] for r in splits["sft"]] + [r["completion"] for r in splits["sft"]]
        texts += [r["prompt"] for r in splits["eval_prompts"]] + [w for w in SENTIMENT] + SUBJECTS
        build_tokenizer(texts, tmp / "tokenizer")
        (tmp / "world.json").write_text(json.dumps({"version": TOY_VERSION, "seed": seed, "size": size}))

    return World(_build_atomically(target, build), seed, size)


#: SFT recipe of the toy base (tuned so the base learns the format and the mixed sentiment)
SFT_BASE_RECIPE = {"lr": 3e-3, "epochs": 6, "batch_size": 32, "schedule": "cosine", "warmup_ratio": 0.05}


def ensure_base_model(world: World, size: str = DEFAULT_SIZE) -> Path:
    """A tiny Llama trained with this harness's own SFT on the world's SFT split; cached."""
    if size not in MODEL_SIZES:
        from harness.core.registry import did_you_mean

        raise ValueError(
            f"unknown toy model size {size!r}{did_you_mean(size, list(MODEL_SIZES))}; "
            f"choose from: {', '.join(MODEL_SIZES)}"
        )
    target = world.root / f"base-{size}-{_key(size=size, recipe=SFT_BASE_RECIPE, **MODEL_SIZES[size])}"

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(world.tokenizer_dir)
        shape: dict[str, Any] = dict(MODEL_SIZES[size])
        cfg = LlamaConfig(
            vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=True,
            num_key_value_heads=shape["num_attention_heads"], bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **shape,
        )
        torch.manual_seed(world.seed)
        init_dir = tmp / "init"
        LlamaForCausalLM(cfg).save_pretrained(init_dir)
        tok.save_pretrained(init_dir)
        from harness.core.config import load_spec
        from harness.training.runner import execute

        spec = load_spec(None, [
            f"model={init_dir}", f"data={world.split_path('sft')}", "method=sft",
            *(f"train.{k}={v}" for k, v in SFT_BASE_RECIPE.items()),
            "train.max_length=64", "train.max_prompt_length=32", "eval.enabled=false",
            f"seed={world.seed}", f"output_dir={tmp / 'runs'}", "name=sft-base",
        ])
        run = execute(spec, tracking="disabled")
        for f in run.final_dir.iterdir():
            shutil.move(str(f), tmp / f.name)
        shutil.copy(run.path / "summary.json", tmp / "sft_summary.json")
        shutil.rmtree(tmp / "runs")
        shutil.rmtree(init_dir)

    return _build_atomically(target, build)


def resolve_model(name: str, seed: int = 0, size: int = 2048) -> Path | None:
    """``toy`` / ``toy:<size>`` -> the cached SFT base directory; None for anything else."""
    if name != "toy" and not name.startswith("toy:"):
        return None
    model_size = name.partition(":")[2] or DEFAULT_SIZE
    return ensure_base_model(ensure_world(seed, size), model_size)
