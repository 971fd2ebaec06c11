"""A loopback OpenAI-compatible chat-completions server answering from a local HF causal LM.

Tests of :class:`harness.evaluation.judges.OpenAIChatJudge` start it on 127.0.0.1 (a free port) in a
thread, so the HTTP judge path runs for real: JSON over a socket, status codes, headers,
timeouts.  It renders the request's messages with the model's chat template, runs one
forward pass and answers with the most likely next token, plus the top log-probabilities
when the request asks for ``logprobs``.  A :class:`FaultScript` makes chosen requests
(numbered from 0 in arrival order) fail the way real endpoints do: HTTP 429 with
Retry-After, HTTP 5xx, a malformed answer, or a delay longer than the client's timeout.

    from judge_server import JudgeModelServer, FaultScript
    with JudgeModelServer(model, tokenizer, "tiny-judge", FaultScript(rate_limit_first=3)) as srv:
        judge = OpenAIChatJudge("tiny-judge", base_url=srv.base_url)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


@dataclass
class FaultScript:
    #: answer HTTP 429 to this many first requests
    rate_limit_first: int = 0
    retry_after: str | None = "0"
    #: request numbers answered with HTTP 503
    server_error_at: set[int] = field(default_factory=set)
    #: request numbers answered 200 with a text that names neither response and no logprobs
    malformed_at: set[int] = field(default_factory=set)
    #: request number -> seconds to wait before answering (to exceed the client's timeout)
    delay_at: dict[int, float] = field(default_factory=dict)


class JudgeModelServer:
    def __init__(self, model: Any, tokenizer: Any, model_name: str, script: FaultScript | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.script = script or FaultScript()
        self.n_requests = 0
        self.n_answered = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> JudgeModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # ------------------------------------------------------------------ request handling

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out) before we answered

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", "0"))
        raw = h.rfile.read(length)
        with self._lock:
            idx = self.n_requests
            self.n_requests += 1
        s = self.script
        if h.path.rstrip("/") != "/v1/chat/completions":
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        if idx < s.rate_limit_first:
            headers = {"Retry-After": s.retry_after} if s.retry_after is not None else {}
            return self._send(h, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, headers)
        if idx in s.server_error_at:
            return self._send(h, 503, {"error": {"message": "overloaded"}})
        if idx in s.delay_at:
            time.sleep(s.delay_at[idx])
        try:
            req = json.loads(raw)
        except json.JSONDecodeError:
            return self._send(h, 400, {"error": {"message": "body is not JSON"}})
        if req.get("model") != self.model_name:
            return self._send(h, 404, {"error": {"message": f"model {req.get('model')!r} not found"}})
        if idx in s.malformed_at:
            return self._send(h, 200, self._completion("I cannot tell which one is better.", None))
        content, logprobs = self._answer(req)
        with self._lock:
            self.n_answered += 1
        return self._send(h, 200, self._completion(content, logprobs))

    def _completion(self, content: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": "length",
            }],
        }

    def _answer(self, req: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        text = self.tokenizer.apply_chat_template(req["messages"], tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with self._model_lock, torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        best = int(torch.argmax(logp))
        content = self.tokenizer.decode([best])
        if not req.get("logprobs"):
            return content, None
        k = max(1, min(int(req.get("top_logprobs") or 1), 20))
        values, indices = torch.topk(logp, k)
        top = [
            {"token": self.tokenizer.decode([int(i)]), "logprob": float(v)}
            for v, i in zip(values.tolist(), indices.tolist())
        ]
        entry = {"token": content, "logprob": float(logp[best]), "top_logprobs": top}
        return content, {"content": [entry]}
