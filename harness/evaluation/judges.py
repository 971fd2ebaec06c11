"""Pairwise judges (AlpacaEval style): which of two outputs to an instruction is better.

A judge is anything with an ``identity`` dict (``backend``, ``model``, ``prompt_version``,
plus whatever else changes its answers: local judges add the content hash and dtype of their
weights and their tokenizer's hash, every prompt-based judge the hash of the prompt's wording,
the HTTP judge its endpoint and decoding parameters; ``model`` stays the readable name reports show) and ``prefer(instruction, output_a, output_b)``
returning P(output_a is better) in [0, 1]; local judges may add ``prefer_batch(items)``.
Backends:

- :class:`OpenAIChatJudge`: any OpenAI-compatible ``POST {base_url}/chat/completions``
  endpoint (key read from an environment variable), answer "A"/"B" read from the
  ``logprobs`` of the first answer token when the server returns them, else from the text.
  Timeouts, HTTP 429/5xx and malformed answers raise :class:`RetryableJudgeError`;
  :func:`judge_pairs` retries them with exponential backoff and counts every one.
- :class:`HFLogprobJudge`: a local causal LM; P(A) from the log-probabilities of its two
  answer tokens after the same judging prompt.
- :class:`RewardModelJudge`: a sequence-classification reward model (num_labels=1);
  P(a) = sigmoid(r(a) - r(b)) (Bradley-Terry).
- :class:`ScorerJudge`: any ``score(instruction, output) -> float``, e.g. a built-in
  world's gold scorer; hard comparison with ties by default, or
  sigmoid((s(a) - s(b)) / temperature).

:func:`judge_pairs` judges every candidate/baseline pair in both orders and averages, so a
judge's position bias cancels; ties count half; each judgement is cached on disk under a
content hash of (judge identity, instruction, a, b), so re-evaluating costs nothing.
:func:`evaluate_pairwise` adds AlpacaEval 2.0's columns from :mod:`harness.evaluation.winrate`.
Used by ``harness eval``, e.g.

    harness eval runs/dpo-0001 eval.judge=openai eval.judge_model=gpt-4o-mini
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from harness.core.registry import Registry
from harness.evaluation.winrate import PoolJudgement, pairwise_stats
from harness.store.runs import atomic_write_json

#: bump when the judging prompt's wording changes: cached judgements are keyed by it
PROMPT_VERSION = "pairwise-v1"
IDENTITY_KEYS = ("backend", "model", "prompt_version")

_SYSTEM_PROMPT = (
    "You compare two responses to the same instruction and decide which one serves the "
    "person who wrote the instruction better: more correct, more helpful, more on point. "
    "The order in which the responses appear says nothing about their quality, and a longer "
    "response is not better for being longer."
)
_USER_TEMPLATE = (
    "Instruction:\n{instruction}\n\n"
    "Response A:\n{output_a}\n\n"
    "Response B:\n{output_b}\n\n"
    "Which response is better? Reply with the single letter A or B."
)


def prompt_sha() -> str:
    """Hash of the judging prompt's wording: an edit changes every cache key even when
    ``PROMPT_VERSION`` was not bumped (the version stays in identities as the readable name)."""
    return hashlib.sha256(f"{_SYSTEM_PROMPT}\x00{_USER_TEMPLATE}".encode()).hexdigest()[:16]


def _callable_sha(fn: Callable[..., Any]) -> str:
    """Hash of a function's code and constants (a reward model's custom ``format_fn``)."""
    code = getattr(fn, "__code__", None)
    blob = repr((getattr(fn, "__module__", ""), getattr(fn, "__qualname__", repr(fn)),
                 code.co_code if code is not None else b"", code.co_consts if code is not None else ()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def local_model_identity(model: Any, tokenizer: Any, path: str | None) -> dict[str, Any]:
    """What a local judge's answers depend on besides the prompt: the weights' content hash
    (of the directory or hub commit it was loaded from, else of the parameters in memory), the
    dtype they run in and the tokenizer that renders the judging prompt."""
    from harness.data.batching import tokenizer_fingerprint
    from harness.modeling.identity import module_fingerprint, weights_fingerprint

    param = next(iter(model.parameters()), None)
    return {
        "weights": weights_fingerprint(path) if path is not None else module_fingerprint(model),
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "none",
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def judge_messages(instruction: str, output_a: str, output_b: str) -> list[dict[str, str]]:
    """The chat messages of the judging prompt (shared by the HTTP and local LM judges)."""
    user = _USER_TEMPLATE.format(instruction=instruction, output_a=output_a, output_b=output_b)
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]


_CHOICE = re.compile(r"\W*(?:(?:response|output|answer)\s*[:\-]?\s*)?\(?([AB])\)?\W*", re.IGNORECASE)


def parse_choice(text: str) -> Literal["A", "B"] | None:
    """'A' or 'B' when the whole answer names one response ("A", "b.", "Response (A)"), else None."""
    m = _CHOICE.fullmatch(text.strip())
    if m is None:
        return None
    return "A" if m.group(1).upper() == "A" else "B"


# --------------------------------------------------------------------------- errors, protocol


class JudgeError(RuntimeError):
    """A judge cannot work as configured (bad URL, key, model, answer tokens): not retried."""


class RetryableJudgeError(JudgeError):
    """A transient failure of one judgement; ``reason`` is how it is counted."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.retry_after = retry_after


@runtime_checkable
class PairwiseJudge(Protocol):
    identity: dict[str, Any]

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        """P(output_a is the better response to instruction), in [0, 1]."""
        ...


def check_identity(judge: Any) -> dict[str, Any]:
    ident = getattr(judge, "identity", None)
    if not isinstance(ident, dict):
        raise JudgeError(f"judge {judge!r} has no identity dict (needs keys {', '.join(IDENTITY_KEYS)})")
    missing = [k for k in IDENTITY_KEYS if not ident.get(k)]
    if missing:
        raise JudgeError(f"judge identity {ident!r} lacks {', '.join(missing)}")
    try:
        json.dumps(ident, sort_keys=True)
    except TypeError as e:
        raise JudgeError(f"judge identity {ident!r} is not JSON-serialisable: {e}") from None
    return ident


JUDGES: Registry[Callable[..., PairwiseJudge]] = Registry("judge")


def build_judge(backend: str, /, **options: Any) -> PairwiseJudge:
    """A judge by registered backend: openai, hf, reward_model, scorer."""
    return JUDGES.get(backend)(**options)


# --------------------------------------------------------------------------- judging pairs


@dataclass
class RetryPolicy:
    """Exponential backoff: wait backoff_s * 2**attempt (at most backoff_max_s, at least a
    server's Retry-After), up to max_retries re-attempts per judgement."""

    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        d = self.backoff_s * (2.0**attempt)
        if retry_after is not None:
            d = max(d, retry_after)
        return min(d, self.backoff_max_s)


@dataclass
class JudgingReport:
    """What judging cost and what went wrong; nothing is dropped without a count here."""

    n_pairs: int = 0
    #: distinct (instruction, a, b) judgements needed: 2 per pair, fewer when pairs repeat
    n_judgements: int = 0
    n_cache_hits: int = 0
    #: judgements asked of the judge, re-attempts included
    n_judge_calls: int = 0
    n_retries: int = 0
    #: every transient error seen, by reason (timeout, rate_limited, server_error, malformed, connection)
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    n_failed_judgements: int = 0
    n_failed_pairs: int = 0
    #: pairs excluded from the win rate: index and the reason of the last failed attempt
    failed_pairs: list[dict[str, Any]] = field(default_factory=list)
    #: backend-specific counts (e.g. answers read from logprobs vs text)
    judge_counters: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_pairs": self.n_pairs,
            "n_judgements": self.n_judgements,
            "n_cache_hits": self.n_cache_hits,
            "n_judge_calls": self.n_judge_calls,
            "n_retries": self.n_retries,
            "errors_by_reason": dict(sorted(self.errors_by_reason.items())),
            "n_failed_judgements": self.n_failed_judgements,
            "n_failed_pairs": self.n_failed_pairs,
            "failed_pairs": list(self.failed_pairs),
            "judge_counters": dict(sorted(self.judge_counters.items())),
            "wall_time_s": self.wall_time_s,
        }


@dataclass
class JudgedPairs:
    #: P(candidate beats baseline) per pair, averaged over both orders; None = failed
    preferences: list[float | None]
    report: JudgingReport
    identity: dict[str, Any]

    def valid_indices(self) -> list[int]:
        return [i for i, p in enumerate(self.preferences) if p is not None]


def judgement_key(identity: dict[str, Any], instruction: str, output_a: str, output_b: str) -> str:
    blob = json.dumps(
        {"judge": identity, "instruction": instruction, "a": output_a, "b": output_b},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgementCache:
    """One small JSON file per judgement under ``root/<key[:2]>/<key>.json``, written atomically,
    so concurrent evaluations and killed runs never leave a torn entry."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> float | None:
        path = self._path(key)
        try:
            value = json.loads(path.read_text())["p"]
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, KeyError, TypeError):
            return None  # unreadable entry: judge again and overwrite it
        if isinstance(value, (int, float)) and 0.0 <= value <= 1.0:
            return float(value)
        return None

    def put(self, key: str, p: float, identity: dict[str, Any]) -> None:
        atomic_write_json(self._path(key), {"p": p, "judge": identity, "created": time.time()})


def _check_texts(name: str, values: Sequence[str], n: int | None) -> None:
    if n is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} items but instructions has {n}")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise ValueError(f"{name}[{i}] is a {type(v).__name__}, expected str")


def _check_probability(judge_identity: dict[str, Any], p: Any, item: tuple[str, str, str]) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise JudgeError(
            f"judge {judge_identity} returned {p!r} for instruction {item[0][:60]!r}: "
            "expected a probability in [0, 1]"
        )
    return float(p)


def judge_pairs(
    judge: PairwiseJudge,
    instructions: Sequence[str],
    candidate_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    cache_dir: str | Path | None,
    *,
    retry: RetryPolicy | None = None,
    workers: int = 1,
    sleep: Callable[[float], None] = time.sleep,
) -> JudgedPairs:
    """Judge each (candidate, baseline) pair in both orders; P(candidate better) per pair.

    Order 1 shows the candidate as A, order 2 as B; the pair's preference is
    (P1(A) + 1 - P2(A)) / 2, so a judge that always prefers the first answer scores exactly
    0.5 (a tie).  Cached judgements are reused; new ones are cached as soon as they exist.
    A judgement that still fails after ``retry.max_retries`` re-attempts makes its pair
    ``None`` (excluded from win rates) and is counted in the report.  ``workers`` > 1 judges
    with that many threads (for HTTP endpoints); judges with ``prefer_batch`` are batched.
    """
    retry = retry or RetryPolicy()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = len(instructions)
    _check_texts("instructions", instructions, None)
    _check_texts("candidate_outputs", candidate_outputs, n)
    _check_texts("baseline_outputs", baseline_outputs, n)
    identity = check_identity(judge)
    cache = JudgementCache(cache_dir) if cache_dir is not None else None
    report = JudgingReport(n_pairs=n)
    lock = threading.Lock()
    start = time.perf_counter()

    # (instruction, a, b) per pair and order; identical requests are judged once
    requests: dict[str, tuple[str, str, str]] = {}
    pair_keys: list[tuple[str, str]] = []
    for ins, cand, base in zip(instructions, candidate_outputs, baseline_outputs):
        k1 = judgement_key(identity, ins, cand, base)
        k2 = judgement_key(identity, ins, base, cand)
        requests.setdefault(k1, (ins, cand, base))
        requests.setdefault(k2, (ins, base, cand))
        pair_keys.append((k1, k2))
    report.n_judgements = len(requests)

    results: dict[str, float] = {}
    failures: dict[str, str] = {}
    todo: list[str] = []
    for key in requests:
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            todo.append(key)
        else:
            results[key] = hit
    report.n_cache_hits = len(results)

    def record(key: str, p: float) -> None:
        with lock:
            results[key] = p
        if cache is not None:
            cache.put(key, p, identity)

    def attempt(call: Callable[[], Any], n_calls: int) -> tuple[Any, str | None]:
        """Run call with retries; (value, None) or (None, reason of the last failure)."""
        tries = 0
        while True:
            with lock:
                report.n_judge_calls += n_calls
            try:
                return call(), None
            except RetryableJudgeError as e:
                with lock:
                    report.errors_by_reason[e.reason] = report.errors_by_reason.get(e.reason, 0) + 1
                    if tries >= retry.max_retries:
                        return None, e.reason
                    report.n_retries += 1
                sleep(retry.delay(tries, e.retry_after))
                tries += 1

    batch_fn = getattr(judge, "prefer_batch", None)
    if callable(batch_fn):
        size = max(1, int(getattr(judge, "batch_size", 16)))
        for lo in range(0, len(todo), size):
            keys = todo[lo : lo + size]
            items = [requests[k] for k in keys]
            values, reason = attempt(functools.partial(batch_fn, items), len(items))
            if reason is not None:
                failures.update({k: reason for k in keys})
                continue
            if len(values) != len(items):
                raise JudgeError(f"judge {identity} returned {len(values)} answers for {len(items)} items")
            for k, item, p in zip(keys, items, values):
                record(k, _check_probability(identity, p, item))
    else:

        def one(key: str) -> None:
            item = requests[key]
            p, reason = attempt(lambda: judge.prefer(*item), 1)
            if reason is not None:
                with lock:
                    failures[key] = reason
            else:
                record(key, _check_probability(identity, p, item))

        if workers == 1:
            for key in todo:
                one(key)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, todo))  # list() re-raises a worker's exception here

    report.n_failed_judgements = len(failures)
    preferences: list[float | None] = []
    for i, (k1, k2) in enumerate(pair_keys):
        if k1 in results and k2 in results:
            preferences.append(0.5 * (results[k1] + 1.0 - results[k2]))
        else:
            preferences.append(None)
            reason = failures.get(k1) or failures.get(k2) or "unknown"
            report.failed_pairs.append({"index": i, "reason": reason})
    report.n_failed_pairs = len(report.failed_pairs)
    counters = getattr(judge, "counters", None)
    if isinstance(counters, dict):
        report.judge_counters = {str(k): int(v) for k, v in counters.items()}
    report.wall_time_s = time.perf_counter() - start
    return JudgedPairs(preferences=preferences, report=report, identity=dict(identity))


def evaluate_pairwise(
    judge: PairwiseJudge,
    instructions: Sequence[str],
    candidate_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    *,
    cache_dir: str | Path | None,
    instruction_ids: Sequence[Hashable] | None = None,
    difficulty_pool: Sequence[PoolJudgement] | None = None,
    retry: RetryPolicy | None = None,
    workers: int = 1,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge the pairs and compute AlpacaEval 2.0's columns over the pairs that did not fail.

    Lengths are in characters (as AlpacaEval counts them); instructions are grouped by
    ``instruction_ids`` (default: the instruction text).  Returns ``{"judge": identity,
    "metrics": {win_rate, ..., lc_standard_error}, "judging": report}``.
    """
    judged = judge_pairs(
        judge, instructions, candidate_outputs, baseline_outputs, cache_dir, retry=retry, workers=workers
    )
    keep = judged.valid_indices()
    if not keep:
        raise JudgeError(
            f"all {len(instructions)} pairs failed to be judged by {judged.identity}: "
            f"{judged.report.errors_by_reason}"
        )
    ids = list(instruction_ids) if instruction_ids is not None else list(instructions)
    if len(ids) != len(instructions):
        raise ValueError(f"instruction_ids has {len(ids)} items but instructions has {len(instructions)}")
    metrics = pairwise_stats(
        [judged.preferences[i] for i in keep],  # type: ignore[misc]
        [len(candidate_outputs[i]) for i in keep],
        [len(baseline_outputs[i]) for i in keep],
        [ids[i] for i in keep],
        difficulty_pool=difficulty_pool,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    return {"judge": judged.identity, "metrics": metrics, "judging": judged.report.as_dict()}


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@JUDGES.register("openai")
class OpenAIChatJudge:
    """Judge through an OpenAI-compatible chat-completions endpoint.

    ``base_url`` is the API root (``https://api.openai.com/v1``, ``http://localhost:8000/v1``);
    the key is read from the environment variable ``api_key_env`` at each request and sent
    as a bearer token when set (local servers usually need none).  With ``logprobs=True`` the
    request asks for the top log-probabilities of the single answer token and P(A) is the
    softmax over the A and B entries; when a server omits them the text answer decides (1/0).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        api_key_env: str = "OPENAI_API_KEY",
        *,
        timeout_s: float = 60.0,
        logprobs: bool = True,
        top_logprobs: int = 20,
        max_tokens: int = 1,
    ) -> None:
        if not model:
            raise JudgeError("OpenAIChatJudge needs a model name (eval.judge_model)")
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise JudgeError(f"judge base_url {base_url!r} is not an http(s) URL like https://api.openai.com/v1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        # everything that changes an answer; not the timeout or the key (they change whether one comes)
        self.identity = {
            "backend": "openai",
            "model": model,
            "prompt_version": PROMPT_VERSION,
            "prompt_sha": prompt_sha(),
            "base_url": self.base_url,
            "answer": "logprobs" if logprobs else "text",
            "decoding": {"temperature": 0, "max_tokens": max_tokens, "top_logprobs": top_logprobs if logprobs else None},
        }
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        handlers: list[Any] = []
        if parsed.hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # never send loopback traffic to a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] += 1

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace") if e.fp is not None else ""
            if e.code == 429:
                raise RetryableJudgeError(
                    "rate_limited", f"HTTP 429 from {self.url}", _retry_after_seconds(e.headers.get("Retry-After"))
                ) from None
            if e.code == 408:
                raise RetryableJudgeError("timeout", f"HTTP 408 from {self.url}") from None
            if e.code >= 500:
                raise RetryableJudgeError("server_error", f"HTTP {e.code} from {self.url}: {detail}") from None
            hint = f" (is ${self.api_key_env} set to a valid key?)" if e.code in (401, 403) else ""
            raise JudgeError(f"judge endpoint {self.url} answered HTTP {e.code}{hint}: {detail}") from None
        except TimeoutError:
            raise RetryableJudgeError("timeout", f"no answer from {self.url} within {self.timeout_s}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise RetryableJudgeError("timeout", f"no answer from {self.url} within {self.timeout_s}s") from None
            raise RetryableJudgeError("connection", f"cannot reach {self.url}: {e.reason}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise RetryableJudgeError("connection", f"connection to {self.url} failed: {e!r}") from None
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RetryableJudgeError("malformed", f"{self.url} returned non-JSON: {raw[:120]!r}") from None
        if not isinstance(data, dict):
            raise RetryableJudgeError("malformed", f"{self.url} returned {type(data).__name__}, not an object")
        return data

    @staticmethod
    def _prob_from_logprobs(choice: dict[str, Any]) -> float | None:
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content or not isinstance(content[0], dict):
            return None
        first = content[0]
        entries = list(first.get("top_logprobs") or []) + [first]
        best: dict[str, float] = {}
        seen: set[tuple[str, float]] = set()
        for e in entries:
            if not isinstance(e, dict) or not isinstance(e.get("token"), str):
                continue
            lp = e.get("logprob")
            letter = e["token"].strip()
            if letter not in ("A", "B") or not isinstance(lp, (int, float)) or not math.isfinite(lp):
                continue
            if (e["token"], float(lp)) in seen:  # the chosen token also appears in top_logprobs
                continue
            seen.add((e["token"], float(lp)))
            # "A" and " A" are the same answer: add their probabilities
            best[letter] = float(lp) if letter not in best else math.log(math.exp(best[letter]) + math.exp(lp))
        if not best:
            return None
        la, lb = best.get("A", -math.inf), best.get("B", -math.inf)
        top = max(la, lb)
        pa, pb = math.exp(la - top), math.exp(lb - top)
        return pa / (pa + pb)

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": judge_messages(instruction, output_a, output_b),
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        data = self._post(body)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise RetryableJudgeError("malformed", f"{self.url} answer has no choices: {str(data)[:160]}")
        choice = choices[0]
        if self.logprobs:
            p = self._prob_from_logprobs(choice)
            if p is not None:
                self._count("answers_from_logprobs")
                return p
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        letter = parse_choice(text) if isinstance(text, str) else None
        if letter is None:
            raise RetryableJudgeError("malformed", f"judge answered {str(text)[:80]!r}, expected A or B")
        self._count("answers_from_text")
        return 1.0 if letter == "A" else 0.0


# --------------------------------------------------------------------------- local HF models


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    """Token ids of messages through the tokenizer's chat template, or a plain layout without one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(f"{m['role']}:\n{m['content']}" for m in messages)
    if generation_prompt:
        text += "\n\nassistant:\n"
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    return ids, mask, lengths


def _max_positions(model: Any) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


@JUDGES.register("hf")
class HFLogprobJudge:
    """A local causal LM as judge: P(A) = softmax over its next-token logits for "A" and "B"
    after the judging prompt (rendered with the tokenizer's chat template)."""

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        *,
        model_name: str | None = None,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int = 8,
    ) -> None:
        path: str | None = None
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            model_name = model_name or path
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            kwargs: dict[str, Any] = {"dtype": dtype} if dtype else {}
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if tokenizer is None:
            raise JudgeError("HFLogprobJudge needs a tokenizer with an in-memory model")
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.answer_ids = (self._single_token(tokenizer, "A"), self._single_token(tokenizer, "B"))
        name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        # "model" is the name reports show; the cache key is the content beside it, so a judge
        # retrained into the same path never answers from its predecessor's judgements
        self.identity = {"backend": "hf_logprob", "model": str(name), "prompt_version": PROMPT_VERSION,
                         "prompt_sha": prompt_sha(), **local_model_identity(self.model, tokenizer, path)}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    @staticmethod
    def _single_token(tokenizer: Any, letter: str) -> int:
        ids = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise JudgeError(f"judge tokenizer splits {letter!r} into {len(ids)} tokens {ids}; need one token each for A and B")
        return int(ids[0])

    def prefer_batch(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        import torch

        seqs = [_render(self.tokenizer, judge_messages(*item), generation_prompt=True) for item in items]
        limit = _max_positions(self.model)
        for s, item in zip(seqs, items):
            if limit is not None and len(s) > limit:
                raise JudgeError(
                    f"judging prompt for instruction {item[0][:60]!r} is {len(s)} tokens; "
                    f"the judge model takes at most {limit}"
                )
        ids, mask, lengths = _right_pad(seqs, self.pad_id)
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
        # right padding: the next-token logits of row i sit at its last real position
        last = logits[torch.arange(len(seqs)), (lengths - 1).to(logits.device)].float()
        pair = last[:, list(self.answer_ids)]
        return torch.softmax(pair, dim=-1)[:, 0].tolist()

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        return self.prefer_batch([(instruction, output_a, output_b)])[0]


@JUDGES.register("reward_model")
class RewardModelJudge:
    """A reward model (AutoModelForSequenceClassification, num_labels=1) as judge:
    P(a) = sigmoid(r(a) - r(b)), the Bradley-Terry probability of its scores.

    An output is scored as the chat [user: instruction, assistant: output] through the
    tokenizer's chat template (``format_fn(instruction, output) -> str`` overrides that: use
    the format the reward model was trained on).  Scores are memoised per (instruction, output).
    """

    name = "reward_model"

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        *,
        model_name: str | None = None,
        device: str | None = "auto",
        dtype: str | None = None,
        batch_size: int = 16,
        format_fn: Callable[[str, str], str] | None = None,
    ) -> None:
        path: str | None = None
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = str(model)
            model_name = model_name or path
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            kwargs: dict[str, Any] = {"dtype": dtype} if dtype else {}
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        if tokenizer is None:
            raise JudgeError("RewardModelJudge needs a tokenizer with an in-memory model")
        n_labels = getattr(model.config, "num_labels", None)
        if n_labels != 1:
            raise JudgeError(f"reward model must have num_labels=1 (one score per text), got {n_labels}")
        if tokenizer.pad_token_id is None:
            raise JudgeError("reward model tokenizer has no pad token (set tokenizer.pad_token)")
        if getattr(model.config, "pad_token_id", None) is None:
            # sequence classification reads the score at the last non-pad token
            model.config.pad_token_id = tokenizer.pad_token_id
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.format_fn = format_fn
        name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        fmt = "chat" if format_fn is None else f"custom:{getattr(format_fn, '__qualname__', 'fn')}"
        self.identity = {"backend": "reward_model", "model": str(name), "prompt_version": f"rm-{fmt}-v1",
                         **local_model_identity(self.model, tokenizer, path)}
        if format_fn is not None:
            self.identity["format_sha"] = _callable_sha(format_fn)
        self._scores: dict[tuple[str, str], float] = {}

    def _ids(self, instruction: str, output: str) -> list[int]:
        if self.format_fn is not None:
            return list(self.tokenizer(self.format_fn(instruction, output))["input_ids"])
        msgs = [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}]
        return _render(self.tokenizer, msgs, generation_prompt=False)

    def score_batch(self, texts: Sequence[tuple[str, str]]) -> list[float]:
        """Reward of each (instruction, output)."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._scores]
        for lo in range(0, len(missing), self.batch_size):
            chunk = missing[lo : lo + self.batch_size]
            ids, mask, _ = _right_pad([self._ids(*t) for t in chunk], int(self.tokenizer.pad_token_id))
            with torch.no_grad():
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for t, v in zip(chunk, out[:, 0].float().tolist()):
                self._scores[t] = float(v)
        return [self._scores[t] for t in texts]

    def prefer_batch(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        wanted = [(ins, a) for ins, a, _ in items] + [(ins, b) for ins, _, b in items]
        scores = self.score_batch(wanted)
        n = len(items)
        return [1.0 / (1.0 + math.exp(-(scores[i] - scores[n + i]))) for i in range(n)]

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        return self.prefer_batch([(instruction, output_a, output_b)])[0]


# --------------------------------------------------------------------------- callable scorers


@JUDGES.register("scorer")
class ScorerJudge:
    """A programmatic scorer ``score(instruction, output) -> float`` as judge.

    ``mode="hard"`` (default): P(a) = 1 if s(a) > s(b) + tie_tolerance, 0 if below
    s(b) - tie_tolerance, else 0.5 (a tie, counted as a draw).  ``mode="soft"``:
    P(a) = sigmoid((s(a) - s(b)) / temperature).  ``name`` identifies the scorer in the
    cache key and results (default: its module and qualified name).
    """

    name = "scorer"

    def __init__(
        self,
        score: Callable[[str, str], float],
        *,
        name: str | None = None,
        mode: Literal["hard", "soft"] = "hard",
        temperature: float = 1.0,
        tie_tolerance: float = 0.0,
    ) -> None:
        if mode not in ("hard", "soft"):
            raise JudgeError(f"scorer judge mode must be 'hard' or 'soft', got {mode!r}")
        if mode == "soft" and not temperature > 0:
            raise JudgeError(f"scorer judge temperature must be > 0, got {temperature!r}")
        if tie_tolerance < 0:
            raise JudgeError(f"scorer judge tie_tolerance must be >= 0, got {tie_tolerance!r}")
        self.score = score
        self.mode = mode
        self.temperature = temperature
        self.tie_tolerance = tie_tolerance
        label = name or f"{getattr(score, '__module__', '?')}.{getattr(score, '__qualname__', repr(score))}"
        self.identity: dict[str, Any] = {"backend": "scorer", "model": label, "prompt_version": "none", "mode": mode}
        if mode == "soft":
            self.identity["temperature"] = temperature
        else:
            self.identity["tie_tolerance"] = tie_tolerance

    def _s(self, instruction: str, output: str) -> float:
        v = self.score(instruction, output)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise JudgeError(f"scorer {self.identity['model']} returned {v!r} for {output[:60]!r}: expected a finite number")
        return float(v)

    def prefer(self, instruction: str, output_a: str, output_b: str) -> float:
        diff = self._s(instruction, output_a) - self._s(instruction, output_b)
        if self.mode == "soft":
            return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, diff / self.temperature))))
        if diff > self.tie_tolerance:
            return 1.0
        if diff < -self.tie_tolerance:
            return 0.0
        return 0.5
