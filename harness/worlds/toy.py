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

import math
import random
import re
from pathlib import Path
from typing import Any

from harness.core.contract import DataKind
from harness.store.cache import build_dir
from harness.worlds._common import build_tokenizer, built_split_path, read_jsonl, write_jsonl
from harness.worlds.base import (
    BaseModel,
    LMEvalTasks,
    Scorer,
    WorldOptions,
    register_world,
    world_cache_dir,
)

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


# --------------------------------------------------------------------------- held-out pairs and lm-eval tasks

#: held-out gold-labelled pairs per eval prompt for reward-model accuracy
RM_PAIRS_PER_PROMPT = 8
LM_EVAL_TASKS = ("toy_topic_choice", "toy_topic_gen")
#: bump when the lm-eval items or templates change: the rendered directory is keyed by it
LM_EVAL_VERSION = "1"
N_CHOICES = 4
ASSETS = Path(__file__).resolve().parent / "assets" / "toy"


def prompt_subject(prompt: str) -> str:
    """The one subject a toy prompt asks about."""
    words = set(_WORD.findall(prompt.lower()))
    found = [s for s in SUBJECTS if s in words]
    if len(found) != 1:
        raise ValueError(f"toy eval prompt {prompt!r} names {len(found)} subjects, expected one")
    return found[0]


def heldout_pairs(eval_prompts: list[str], seed: int, per_prompt: int = RM_PAIRS_PER_PROMPT) -> list[dict[str, Any]]:
    """Fresh preference pairs on the held-out prompts, labelled by the gold reward without
    annotator noise (ties dropped): what a perfect reward model ranks 100% right."""
    rng = random.Random(seed * 31 + 5)
    pools = [POSITIVE, NEGATIVE, NEUTRAL]
    pairs = []
    for prompt in eval_prompts:
        subject = prompt_subject(prompt)

        def response(subject: str = subject) -> str:
            s = subject if rng.random() < 0.8 else rng.choice(SUBJECTS)
            adj = {k: rng.choice(rng.choice(pools)) for k in ("a", "b", "c")}
            return rng.choice(RESPONSE_TEMPLATES).format(s=s, **adj)

        made = 0
        while made < per_prompt:
            a, b = response(), response()
            ra, rb = gold_reward(prompt, a), gold_reward(prompt, b)
            if ra == rb:
                continue
            chosen, rejected = (a, b) if ra > rb else (b, a)
            pairs.append({"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected})
            made += 1
    return pairs


def lm_eval_items(eval_prompts: list[str], seed: int) -> dict[str, list[dict[str, Any]]]:
    """Items of both toy lm-eval tasks from the held-out eval prompts (deterministic):

    ``toy_topic_choice`` (multiple choice, acc / acc_norm): four otherwise identical reviews
    that differ only in their subject; the right one is about the subject asked for.
    ``toy_topic_gen`` (generate until, exact_match): the first subject word of a greedy
    answer must be the one asked for.
    """
    rng = random.Random(seed * 101 + 7)
    choice_items, gen_items = [], []
    for prompt in eval_prompts:
        subject = prompt_subject(prompt)
        gen_items.append({"prompt": prompt, "subject": subject})
        template = rng.choice(RESPONSE_TEMPLATES)
        # neutral words: the choice must turn on the subject, not on sentiment
        adjectives = {k: rng.choice(NEUTRAL) for k in ("a", "b", "c")}
        others = rng.sample([s for s in SUBJECTS if s != subject], N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        subjects = others[:label] + [subject] + others[label:]
        choice_items.append({
            "prompt": prompt,
            "choices": [template.format(s=s, **adjectives) for s in subjects],
            "label": label,
        })
    return {"toy_topic_choice": choice_items, "toy_topic_gen": gen_items}


def render_lm_eval_dir(out: Path, final: Path, eval_prompts: list[str], seed: int) -> None:
    """Write the items and task YAMLs into ``out``; the YAMLs point at ``final`` (where ``out`` is
    renamed to once complete)."""
    for name, rows in lm_eval_items(eval_prompts, seed).items():
        write_jsonl(out / f"{name}.jsonl", rows)
    regex = r"\b(" + "|".join(sorted(SUBJECTS, key=len, reverse=True)) + r")\b"
    for name in LM_EVAL_TASKS:
        text = (ASSETS / f"{name}.yaml.tmpl").read_text()
        # the YAML is double-quoted: backslashes must be escaped there
        text = text.replace("@DATA_DIR@", str(final)).replace("@SUBJECT_REGEX@", regex.replace("\\", "\\\\"))
        (out / f"{name}.yaml").write_text(text)


# --------------------------------------------------------------------------- the world


#: SFT recipe of the toy bases (tuned so a base learns the format and the mixed sentiment)
SFT_BASE_RECIPE = {"lr": 3e-3, "epochs": 6, "batch_size": 32, "schedule": "cosine", "warmup_ratio": 0.05}


def _base(name: str, hidden: int, inter: int, layers: int, description: str) -> BaseModel:
    return BaseModel(
        name=name, shape={"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                        "num_attention_heads": 4},
        recipe=SFT_BASE_RECIPE, description=description,
    )


@register_world
class ToyWorld:
    """The controlled-sentiment world (module docstring); ``data=toy``, ``model=toy[:size]``."""

    name = "toy"
    description = "controlled sentiment (DPO paper §6.1 in miniature): one task, gold reward up to 1.5"
    base_models = {
        "tiny": _base("tiny", 64, 192, 2, "2 layers x 64 (~0.1M params)"),
        "base": _base("base", 128, 384, 2, "2 layers x 128 (~0.5M params)"),
        "bench": _base("bench", 256, 688, 4, "4 layers x 256 (~3M params): the benchmark model"),
    }
    default_base = "base"

    def __init__(self, options: WorldOptions) -> None:
        self.options = options
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        """Data + tokenizer, built once per (version, seed, size)."""
        if self._root is None:
            seed, size = self.options.seed, self.options.size
            target = world_cache_dir(self.name, TOY_VERSION, WorldOptions(seed=seed, size=size))

            def build(tmp: Path) -> None:
                splits = generate_splits(seed, size)
                for name, rows in splits.items():
                    write_jsonl(tmp / "data" / f"{name}.jsonl", rows)
                texts = [r["prompt"] for r in splits["sft"]] + [r["completion"] for r in splits["sft"]]
                texts += [r["prompt"] for r in splits["eval_prompts"]] + list(SENTIMENT) + SUBJECTS
                build_tokenizer(texts, tmp / "tokenizer")

            self._root = build_dir(target, build)
        return self._root

    def splits(self) -> dict[str, str]:
        return {
            "sft": "{prompt, completion}: mixed-sentiment behaviour policy",
            "paired": "{prompt, chosen, rejected}: gold-labelled with Bradley-Terry noise",
            "unpaired": "{prompt, completion, label}: data.desirable_fraction of rows desirable (KTO)",
            "prompts": "{prompt}: training prompts for online methods",
            "eval_prompts": "{prompt}: 36 held-out subject x template combinations",
        }

    def split_path(self, split: str) -> Path:
        return built_split_path(self, split)

    def data_path(self, kind: DataKind) -> Path:
        split = {DataKind.SFT: "sft", DataKind.PAIRED: "paired", DataKind.UNPAIRED: "unpaired",
                 DataKind.PROMPT: "prompts"}[kind]
        return self.split_path(split)

    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in read_jsonl(self.split_path("eval_prompts"))]

    def eval_groups(self, prompts: list[str]) -> dict[str, list[int]]:
        return {}

    def gold_scorer(self) -> Scorer:
        return Scorer(
            "gold_reward", gold_reward, low=-math.inf, high=1.5, version=TOY_VERSION,
            description="mean sentiment of opinion words + 0.5 on-topic - 0.5 off-topic - repetition/length penalties",
        )

    def scorers(self) -> dict[str, Scorer]:
        gold = self.gold_scorer()
        return {gold.name: gold}

    def lm_eval_tasks(self) -> LMEvalTasks:
        prompts, seed = self.eval_prompts(), self.options.seed
        final = self.root / f"lm_eval_tasks-v{LM_EVAL_VERSION}"
        target = build_dir(final, lambda tmp: render_lm_eval_dir(tmp, final, prompts, seed))
        return LMEvalTasks(default=LM_EVAL_TASKS, available=LM_EVAL_TASKS, include=target)

    def heldout_pairs(self) -> list[dict[str, Any]]:
        return heldout_pairs(self.eval_prompts(), self.options.seed)

    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"
