"""Parsers for LLM-as-a-judge answers used by online / iterative methods.

Tests: ``tests/test_online_losses.py`` (the ``self_reward_score`` cases).
"""

from __future__ import annotations

import math
import re

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
