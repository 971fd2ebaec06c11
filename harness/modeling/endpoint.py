"""Sampling completions from an OpenAI-compatible chat endpoint: the remote generation backend.

    harness run method=alpaca method.teacher=openai:gpt-4o-mini          # a teacher behind an API
    harness run method=self-instruct method.generator=openai:my-model reward.judge_base_url=http://127.0.0.1:8000/v1

Pipelines that generate data (Self-Instruct, Alpaca, Self-Rewarding, Constitutional AI) may
let a stage's generator be the policy itself, another local model, or an endpoint like this
one; :func:`chat_complete` is the endpoint side.  Requests are ``POST {base_url}/chat/completions``
with the prompt as one user turn, ``n`` samples, temperature, top_p and ``max_tokens``; the
key is read from an environment variable.  HTTP 429 / 5xx, timeouts and connection errors are
retried with exponential backoff (``Retry-After`` honoured); what still fails raises
:class:`EndpointError` naming the endpoint, the model and the last error.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class EndpointError(RuntimeError):
    """An endpoint could not answer after its retries (or answered something unusable)."""


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat endpoint and the model it serves (its identity in cache keys)."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"

    def check(self) -> None:
        parsed = urllib.parse.urlparse(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise EndpointError(f"endpoint {self.base_url!r} is not an http(s) URL")
        if parsed.hostname not in LOOPBACK and not os.environ.get(self.api_key_env):
            raise EndpointError(f"endpoint {self.base_url} needs an API key in ${self.api_key_env}")

    @property
    def key(self) -> str:
        return f"openai:{self.model}@{self.base_url}"


def _post(ep: Endpoint, body: dict, timeout_s: float) -> dict:
    req = urllib.request.Request(ep.base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    key = os.environ.get(ep.api_key_env)
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def chat_complete(
    ep: Endpoint, prompts: Sequence[str], *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
    max_tokens: int = 64, seed: int | None = None, workers: int = 4, max_retries: int = 5,
    timeout_s: float = 60.0, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
) -> list[list[str]]:
    """``n`` completions of each prompt (one user turn each), in order."""
    ep.check()

    def one(prompt: str) -> list[str]:
        body = {"model": ep.model, "messages": [{"role": "user", "content": prompt}], "n": n,
                "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                **({"seed": seed} if seed is not None else {})}
        last = ""
        for attempt in range(max_retries + 1):
            try:
                out = _post(ep, body, timeout_s)
                texts = [str((c.get("message") or {}).get("content") or "") for c in out.get("choices", [])]
                if len(texts) != n:
                    raise EndpointError(f"{ep.key} answered {len(texts)} choices for n={n}")
                return texts
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise EndpointError(f"{ep.key}: {last} (not retried)") from None
                wait = float(e.headers.get("Retry-After") or 0) if e.headers else 0.0
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last, wait = f"{type(e).__name__}: {e}", 0.0
            if attempt < max_retries:
                sleep(max(wait, backoff_s * 2**attempt))
        raise EndpointError(f"{ep.key}: no answer after {max_retries} retries (last: {last})")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, prompts))
