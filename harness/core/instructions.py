"""Pure helpers of the instruction-data recipes (Self-Instruct, Alpaca): ROUGE-L, the filters
that decide which generated instructions and instances are kept, and small parsers of
generated text.  No I/O, no models: methods (``methods/self_instruct.py``,
``methods/alpaca.py``) call these from their pipeline stages.

ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries") is the
F-measure of the longest common subsequence (LCS) of two token sequences:
``P = LCS / len(candidate)``, ``R = LCS / len(reference)``, ``F = 2PR / (P + R)`` (0 when the
LCS is empty).  Tokens are the lower-cased runs of ``[a-z0-9]`` (every other character
separates), without stemming: the tokenisation of the ``rouge_score`` package's default
scorer with ``use_stemmer=False``, which Self-Instruct used; ``tests/test_instructions.py``
checks the two agree.

Self-Instruct's filters (Wang et al. 2022, arXiv:2212.10560, §2.2 and the authors' scripts):
an instruction enters the task pool only if its ROUGE-L against every instruction already
there is below 0.7; instructions with words a text model cannot act on (image, graph,
file, video, ...) are dropped, and so are ones that are too short or too long, start with
punctuation or a non-ASCII character, or start with "Write a program" (ambiguous between
writing code and giving the result); instances are dropped when exactly repeated, when the
same input has different outputs, when the output is empty or repeats the input.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[a-z0-9]+")

#: words whose presence marks an instruction a text-only model cannot carry out (Self-Instruct's list)
BLOCKED_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")


# --------------------------------------------------------------------------- ROUGE-L


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased ``[a-z0-9]+`` runs of ``text`` (no stemming, no stop-word removal)."""
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len(a) x len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_tokens(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token sequences (module docstring)."""
    if not candidate or not reference:
        return 0.0
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return 2 * p * r / (p + r)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of two texts; symmetric, in [0, 1], 1 for equal token sequences."""
    return rouge_l_tokens(rouge_tokens(candidate), rouge_tokens(reference))


@dataclass
class RougePool:
    """Texts seen so far, tokenised once; :meth:`nearest` is the best ROUGE-L against any of them."""

    texts: list[str] = field(default_factory=list)
    _tokens: list[list[str]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._tokens = [rouge_tokens(t) for t in self.texts]

    def add(self, text: str) -> None:
        self.texts.append(text)
        self._tokens.append(rouge_tokens(text))

    def nearest(self, text: str) -> tuple[float, int | None]:
        """(highest ROUGE-L of ``text`` against the pool, index of that text); (0.0, None) for an empty pool."""
        toks = rouge_tokens(text)
        best, at = 0.0, None
        for i, other in enumerate(self._tokens):
            s = rouge_l_tokens(toks, other)
            if at is None or s > best:
                best, at = s, i
        return best, at

    def __len__(self) -> int:
        return len(self.texts)


# --------------------------------------------------------------------------- instruction filters


def word_count(text: str) -> int:
    return len(text.split())


def instruction_problem(text: str, *, min_words: int = 4, max_words: int = 150,
                        keywords: Iterable[str] = BLOCKED_KEYWORDS) -> str | None:
    """Why a generated instruction is not usable (the first reason found), or None.  Reasons:
    ``empty``, ``too_short`` (fewer than ``min_words`` words), ``too_long`` (more than
    ``max_words``), ``keyword`` (a blocked keyword as a whole word or phrase),
    ``write_a_program``, ``starts_with_punctuation``, ``non_ascii_start``."""
    text = text.strip()
    if not text:
        return "empty"
    n = word_count(text)
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    low = text.lower()
    if any(re.search(rf"\b{re.escape(k)}\b", low) for k in keywords):
        return "keyword"
    if low.startswith("write a program"):
        return "write_a_program"
    if text[0] in string.punctuation:
        return "starts_with_punctuation"
    if not text[0].isascii():
        return "non_ascii_start"
    return None


_NUMBERING = re.compile(r"^\s*(?:task\s*\d*\s*[:.)-]|\d+\s*[:.)-]|instruction\s*:)\s*", re.IGNORECASE)


def clean_generated_line(text: str, label: str | None = None) -> str:
    """The first non-empty line of a generation, without a leading ``Task 9:`` / ``9.`` numbering
    (or ``<label>:``, e.g. ``Input:``) and surrounding quotes and spaces."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if label:
        line = re.sub(rf"^\s*{re.escape(label)}\s*:\s*", "", line, flags=re.IGNORECASE)
    line = _NUMBERING.sub("", line, count=1)
    return line.strip().strip('"').strip("'").strip()


# --------------------------------------------------------------------------- classification


_YES = re.compile(r"^\W*(yes|y|true)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(no|n|false)\b", re.IGNORECASE)
#: cues of a task whose answer is one of a few fixed labels (the fallback when the generator's
#: yes/no answer is unreadable)
CLASSIFICATION_CUES = (
    r"\byes or no\b", r"\btrue or false\b", r"\bclassify\b", r"\bclassification\b", r"\bcategor(y|ize|ise)\b",
    r"\blabel\b", r"\bpositive or negative\b", r"\bis (it|this|the \w+) (a|an)\b", r"\bwhich (one|of)\b",
    r"\beven or odd\b", r"\bor not\b", r"\bdoes .+ follow\b", r"\bagree or disagree\b", r"\bsentiment\b",
)


def parse_yes_no(text: str) -> bool | None:
    """True for an answer starting with yes, False for no, None for anything else."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*answer\s*:\s*", "", line, flags=re.IGNORECASE)
    if _YES.match(line):
        return True
    if _NO.match(line):
        return False
    return None


def looks_like_classification(instruction: str) -> bool:
    """The fallback heuristic: the instruction names a fixed answer set (``yes or no``, ``classify``,
    ``positive or negative``, ``which of``, ...; :data:`CLASSIFICATION_CUES`)."""
    low = instruction.lower()
    return any(re.search(cue, low) for cue in CLASSIFICATION_CUES)


def parse_labels(text: str, limit: int = 8) -> list[str]:
    """Class labels from a generation such as ``positive, negative`` (first line; commas, ``or``
    and slashes separate); distinct, in order, at most ``limit``."""
    line = clean_generated_line(text, "answers")
    parts = re.split(r",|/|;|\bor\b", line)
    out: list[str] = []
    for p in parts:
        p = p.strip().strip(".").strip()
        if p and p.lower() not in (x.lower() for x in out) and word_count(p) <= 5:
            out.append(p)
    return out[:limit]


# --------------------------------------------------------------------------- instances


NO_INPUT = ("none", "no input", "n/a", "na", "-", "<noinput>", "")


def normalise_input(text: str) -> str:
    """A generated input: its first line; "" when the generator says the task needs none."""
    line = clean_generated_line(text, "input")
    return "" if line.lower().strip(".") in NO_INPUT else line


def instance_problem(inp: str, out: str, *, max_words: int = 150) -> str | None:
    """Why a generated (input, output) instance is not usable, or None: ``empty_output``,
    ``output_too_long``, ``output_repeats_input``."""
    o = out.strip()
    if not o:
        return "empty_output"
    if word_count(o) > max_words:
        return "output_too_long"
    if inp.strip() and o == inp.strip():  # exactly: "KITE" for "kite" is the answer of an upper-casing task
        return "output_repeats_input"
    return None


def instance_verdicts(instances: Sequence[tuple[str, str]]) -> list[str]:
    """Self-Instruct's instance filters on one instruction's (input, output) instances, compared
    case- and space-insensitively: an input given different outputs is dropped whole
    (``conflicting``); an exact repeat keeps its first copy (later ones: ``duplicate``); the
    rest are ``kept``.  One verdict per instance, in order."""
    def norm(t: str) -> str:
        return " ".join(t.lower().split())

    outputs: dict[str, set[str]] = {}
    for i, o in instances:
        outputs.setdefault(norm(i), set()).add(norm(o))
    seen: set[tuple[str, str]] = set()
    verdicts = []
    for i, o in instances:
        key = (norm(i), norm(o))
        if len(outputs[key[0]]) > 1:
            verdicts.append("conflicting")
        elif key in seen:
            verdicts.append("duplicate")
        else:
            seen.add(key)
            verdicts.append("kept")
    return verdicts


def histogram(values: Iterable[float], edges: Sequence[float]) -> list[dict[str, float | int]]:
    """Counts of ``values`` in ``[edges[i], edges[i+1])`` (the last bin closed), as rows ``{lo, hi, n}``."""
    vals = list(values)
    rows: list[dict[str, float | int]] = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        rows.append({"lo": lo, "hi": hi, "n": sum(1 for v in vals if lo <= v < hi or (last and v == hi))})
    return rows
