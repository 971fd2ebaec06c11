"""Parsers for LLM-as-a-judge answers used by online / iterative methods, and the pure
pieces of self-judging pipelines built on them: averaging sampled judgements, best-vs-worst
preference pairs, pairs from multiple-choice feedback, agreement statistics of a judge with
a gold scorer, and the Constitutional AI constitution format.

Tests: ``tests/test_online_losses.py`` (the ``self_reward_score`` cases),
``tests/test_self_improvement.py`` (everything else here).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: the label of a score statement: "Score:", any case, also inside markdown ("**Score:** 4",
#: "Total score: 4"); a word ending in "score" ("underscore:") does not count
_LABEL = re.compile(r"(?<![A-Za-z])score\s*\**\s*:", re.IGNORECASE)

#: what must follow the last label: a number, optionally "/5" or "out of 5" (the scale of
#: the rubric); leading markdown emphasis is skipped
_VALUE = re.compile(
    r"\s*[*_]*\s*(?P<num>[+-]?\d+(?:\.\d+)?)(?![\d.]*\d)"
    r"(?:\s*(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)

#: a second number right after the first makes the statement ambiguous: "3-4", "3 to 4",
#: "3 or 4", "3, 4"
_AMBIGUOUS_TAIL = re.compile(r"\s*[*_]*\s*(?:-|–|—|,|\bto\b|\bor\b|\band\b)\s*[*_]*\s*\d", re.IGNORECASE)

MAX_SCORE = 5.0


def self_reward_score(text: str) -> float | None:
    """The score of a Self-Rewarding LM judge answer (Yuan et al. 2024, 2401.10020, Fig. 2:
    the additive 5-point rubric, which asks the judge to "conclude with the score using the
    format: Score: <total points>").

    Rules (never a guess: anything else is ``None``):

    - Only the LAST "Score:" label in the text counts (the judge may quote the format or
      revise itself); if what follows it is not a valid score, the answer is ``None`` even
      when an earlier statement was valid.
    - The label is followed by a number: an integer or a decimal (``4``, ``4.5``), optional
      markdown emphasis around it (``**Score:** 4``).
    - ``Score: 3/5`` and ``Score: 3 out of 5`` mean 3 (the denominator restates the 5-point
      scale); any other denominator (``3/10``, ``3/4``) is ``None``.
    - The value must lie in [0, 5]; ``Score: 7`` or ``Score: -1`` is ``None``.
    - A range or alternative (``Score: 3-4``, ``Score: 3 or 4``, ``Score: 3, 4``) is ``None``.
    - Trailing words and punctuation are fine (``Score: 4 points.``); a placeholder such as
      ``Score: <total points>`` or a spelled-out number is not a score.
    """
    labels = list(_LABEL.finditer(text))
    if not labels:
        return None
    rest = text[labels[-1].end():]
    match = _VALUE.match(rest)
    if match is None:
        return None
    if _AMBIGUOUS_TAIL.match(rest, match.end("num") if match.group("den") is None else match.end()):
        return None
    value = float(match.group("num"))
    den = match.group("den")
    if den is not None and float(den) != MAX_SCORE:
        return None
    if not math.isfinite(value) or not 0.0 <= value <= MAX_SCORE:
        return None
    return value


# --------------------------------------------------------------------------- sampled judgements


def mean_judgement(texts: Sequence[str], parse: Callable[[str], float | None] = self_reward_score
                   ) -> tuple[float | None, list[float], int]:
    """Average of the valid scores among several sampled judgements of one item (Self-Rewarding
    samples the judge 3 times and averages).  Returns ``(mean or None, valid scores,
    n_malformed)``: a judgement ``parse`` rejects is counted and left out, never scored as 0;
    with no valid judgement the mean is ``None`` (the item has no score)."""
    valid = [v for v in (parse(t) for t in texts) if v is not None]
    return (sum(valid) / len(valid) if valid else None), valid, len(texts) - len(valid)


def best_worst_pairs(candidates: Sequence[dict[str, Any]], *, group: str = "prompt", text: str = "completion",
                     score: str = "self_score") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Self-Rewarding's preference pairs (Yuan et al. 2024, §2.3): per prompt, the candidate
    with the highest score is chosen and the one with the lowest rejected; a prompt whose best
    and worst scores are equal gives no pair.

    A candidate whose ``score`` is None (no valid judgement) is dropped before the choice, and
    so is an empty one (no text to train on).  Candidates with the same text (after stripping)
    are one response: they are merged, scored by the mean of their scores (the same answer
    judged more often), so a pair never holds one text twice.  Among equal best (worst) scores
    the first (last) response in input order is taken, so the result is deterministic.
    Statistics count every drop: ``unscored_dropped`` and ``empty_dropped`` candidates,
    ``duplicates_merged`` candidates folded into an earlier one with the same text,
    ``ties_dropped`` prompts (best == worst), ``too_few_dropped`` prompts with fewer than two
    distinct usable responses; ``pairs`` and ``prompts`` are the totals."""
    by_prompt: dict[Any, list[dict[str, Any]]] = {}
    for c in candidates:
        key = c[group] if isinstance(c[group], str) else repr(c[group])
        by_prompt.setdefault(key, []).append(c)
    pairs: list[dict[str, Any]] = []
    stats = {"prompts": len(by_prompt), "candidates": len(candidates), "unscored_dropped": 0, "empty_dropped": 0,
             "duplicates_merged": 0, "ties_dropped": 0, "too_few_dropped": 0, "pairs": 0}
    for rows in by_prompt.values():
        nonempty = [r for r in rows if str(r[text]).strip()]
        stats["empty_dropped"] += len(rows) - len(nonempty)
        scored = [r for r in nonempty if r.get(score) is not None]
        stats["unscored_dropped"] += len(nonempty) - len(scored)
        merged: dict[str, tuple[Any, list[float]]] = {}
        for r in scored:
            merged.setdefault(str(r[text]).strip(), (r[text], []))[1].append(float(r[score]))
        stats["duplicates_merged"] += len(scored) - len(merged)
        distinct = [(t, sum(v) / len(v)) for t, v in merged.values()]
        if len(distinct) < 2:
            stats["too_few_dropped"] += 1
            continue
        best = max(distinct, key=lambda x: x[1])  # first of the maxima
        worst = min(reversed(distinct), key=lambda x: x[1])  # last of the minima
        if best[1] == worst[1]:
            stats["ties_dropped"] += 1
            continue
        pairs.append({"prompt": rows[0][group], "chosen": best[0], "rejected": worst[0], "chosen_score": best[1],
                      "rejected_score": worst[1]})
    stats["pairs"] = len(pairs)
    return pairs, stats


def choice_pairs(rows: Sequence[dict[str, Any]], *, p_field: str = "p_a", a: str = "response_a",
                 b: str = "response_b", min_margin: float = 0.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference pairs from multiple-choice feedback (Constitutional AI's RL stage, §4.1): each
    row holds two responses and the feedback model's probability ``p_field`` that A is the
    better one; A is chosen when p > 0.5 + margin, B when p < 0.5 - margin.  Rows without a
    probability (no valid feedback) and rows within the margin (0.5 exactly with the default)
    are dropped and counted; identical responses carry no preference and an empty one no text
    to train on, so those rows are dropped (and counted) too.
    The pair keeps the soft label as ``p_chosen``."""
    if not 0.0 <= min_margin < 0.5:
        raise ValueError(f"min_margin must be in [0, 0.5), got {min_margin}")
    pairs: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"rows": len(rows), "no_feedback_dropped": 0, "ties_dropped": 0,
                             "identical_dropped": 0, "empty_dropped": 0, "pairs": 0}
    for r in rows:
        p = r.get(p_field)
        if not r[a].strip() or not r[b].strip():
            stats["empty_dropped"] += 1
        elif r[a].strip() == r[b].strip():
            stats["identical_dropped"] += 1
        elif p is None or not math.isfinite(float(p)):
            stats["no_feedback_dropped"] += 1
        elif abs(float(p) - 0.5) <= min_margin:
            stats["ties_dropped"] += 1
        else:
            a_wins = float(p) > 0.5
            chosen, rejected = (r[a], r[b]) if a_wins else (r[b], r[a])
            pairs.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected,
                          "p_chosen": float(p) if a_wins else 1.0 - float(p)})
    stats["pairs"] = len(pairs)
    stats["mean_p_chosen"] = sum(x["p_chosen"] for x in pairs) / len(pairs) if pairs else None
    return pairs, stats


# --------------------------------------------------------------------------- agreement with a gold scorer


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson correlation of the tie-averaged ranks); None when
    it is undefined: fewer than two items, or either side constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def pairwise_accuracy(pred: Sequence[float], gold: Sequence[float]) -> tuple[float | None, int]:
    """Share of item pairs the judge orders as the gold scorer does (Self-Rewarding's "pairwise
    accuracy" of a judge against human rankings).  Only pairs with different gold scores count;
    a pair the judge scores equally counts one half.  Returns ``(accuracy or None, n_pairs)``."""
    if len(pred) != len(gold):
        raise ValueError(f"pairwise_accuracy: {len(pred)} predictions vs {len(gold)} gold scores")
    hits, n = 0.0, 0
    for i in range(len(pred)):
        for j in range(i + 1, len(pred)):
            if gold[i] == gold[j]:
                continue
            n += 1
            d = (pred[i] - pred[j]) * (gold[i] - gold[j])
            hits += 1.0 if d > 0 else 0.5 if pred[i] == pred[j] else 0.0
    return (hits / n if n else None), n


def judge_agreement(pred: Sequence[float | None], gold: Sequence[float]) -> dict[str, Any]:
    """Pairwise accuracy and Spearman correlation of judge scores with gold scores over the
    items the judge scored; items without a judge score (None) are counted as ``unscored``,
    never given a score."""
    if len(pred) != len(gold):
        raise ValueError(f"judge_agreement: {len(pred)} predictions vs {len(gold)} gold scores")
    keep = [i for i, p in enumerate(pred) if p is not None]
    p = [float(pred[i]) for i in keep]  # type: ignore[arg-type]
    g = [float(gold[i]) for i in keep]
    acc, n_pairs = pairwise_accuracy(p, g)
    return {"pairwise_accuracy": acc, "spearman": spearman(p, g), "n_items": len(pred), "n_scored": len(keep),
            "n_unscored": len(pred) - len(keep), "n_pairs": n_pairs}


# --------------------------------------------------------------------------- constitution


class ConstitutionError(ValueError):
    """A constitution file that cannot be used; the message names the file and the key."""


#: keys every principle must have (non-empty strings); ``choice_request`` (RL-CAI's
#: multiple-choice question) and ``categories`` are optional
PRINCIPLE_KEYS = ("name", "critique_request", "revision_request")


def parse_constitution(text: str, source: str = "<constitution>") -> list[dict[str, Any]]:
    """The principles of a Constitutional AI constitution (YAML)::

        principles:
          - name: kindness
            critique_request: Does the answer insult anyone? Say how.
            revision_request: Rewrite the answer so that it insults no one.
            choice_request: Which answer is kinder?          # optional (RL-CAI feedback)

    Returns one dict per principle with ``name``, ``critique_request``, ``revision_request``
    and ``choice_request`` (default: built from the critique request).  Anything else is a
    :class:`ConstitutionError` naming ``source`` and the key: not YAML, no ``principles`` list,
    an empty list, a principle that is not a mapping, a missing / empty / non-string required
    key, or two principles with the same name."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConstitutionError(f"constitution {source}: not valid YAML ({e})") from None
    if not isinstance(doc, dict) or "principles" not in doc:
        raise ConstitutionError(f"constitution {source}: needs a top-level key 'principles' (a list of principles "
                                f"with {', '.join(PRINCIPLE_KEYS)})")
    items = doc["principles"]
    if not isinstance(items, list) or not items:
        raise ConstitutionError(f"constitution {source}: 'principles' must be a non-empty list")
    out: list[dict[str, Any]] = []
    for i, p in enumerate(items):
        where = f"constitution {source}: principles[{i}]"
        if not isinstance(p, dict):
            raise ConstitutionError(f"{where} must be a mapping with {', '.join(PRINCIPLE_KEYS)}")
        for key in (*PRINCIPLE_KEYS, "choice_request"):
            if key not in p:
                if key == "choice_request":
                    continue
                raise ConstitutionError(f"{where}.{key} is missing")
            if not isinstance(p[key], str) or not p[key].strip():
                raise ConstitutionError(f"{where}.{key} must be a non-empty string, got {p[key]!r}")
        name = p["name"].strip()
        if any(q["name"] == name for q in out):
            raise ConstitutionError(f"{where}.name {name!r} repeats an earlier principle's name")
        out.append({"name": name, "critique_request": p["critique_request"].strip(),
                    "revision_request": p["revision_request"].strip(),
                    "choice_request": (p.get("choice_request") or
                                       f"Which answer is better by this rule: {p['critique_request'].strip()}").strip()})
    return out


def load_constitution(path: str | Path) -> list[dict[str, Any]]:
    """:func:`parse_constitution` of a file; a missing or unreadable file is a ConstitutionError."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as e:
        raise ConstitutionError(f"constitution {p}: cannot be read ({e.strerror or e})") from None
    return parse_constitution(text, str(p))


def draw_principle(principles: Sequence[dict[str, Any]], seed: int, *keys: Any) -> dict[str, Any]:
    """The principle for one step, drawn at random (uniformly, as SL-CAI and RL-CAI do) and
    reproducibly from ``seed`` and the step's identity ``keys`` (prompt, revision number ...)."""
    rng = random.Random(repr((seed, *keys)))
    return principles[rng.randrange(len(principles))]
