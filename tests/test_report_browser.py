"""The HTML report in a real headless browser (Debian's chromium): no console errors, a row per
method, every image decoded.  Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so nothing beyond the standard library is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from report_store import make_store

from harness.reporting.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--remote-debugging-pipe"]
#: what the page reports about itself once loaded
PROBE = """JSON.stringify({
  rows: [...document.querySelectorAll('#leaderboard tbody tr')].map(r => r.dataset.key),
  images: [...document.images].map(i => ({plot: i.dataset.plot || i.src.slice(0, 40),
                                          complete: i.complete, width: i.naturalWidth})),
  resources: performance.getEntriesByType('resource').map(e => e.name),
})"""


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """One headless chromium and one page, spoken to over the DevTools protocol."""

    def __init__(self, user_data_dir: Path, timeout: float = 30.0) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the child's ends move above 9 so that placing them on 3 and 4 cannot clobber each other
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        self.timeout = timeout
        # chromium reads commands on fd 3 and answers on fd 4
        self.proc = subprocess.Popen(
            # bash, not sh: dash cannot redirect from descriptors above 9
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', str(CHROMIUM), *FLAGS,
             f"--user-data-dir={user_data_dir}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=self.session)

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        return self._id

    def _until(self, done: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" not in msg:
                    self.events.append(msg)
                if done(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise EOFError(f"chromium exited (code {self.proc.poll()})")
                self._buf += chunk

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        i = self._send(method, params, session)
        msg = self._until(lambda m: m.get("id") == i)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    def open(self, path: Path) -> dict[str, Any]:
        """Load a page; return its probe and the errors it raised while loading."""
        self.events.clear()
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=self.session)
        self._until(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == self.session)
        probe = self.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=self.session)
        result = json.loads(probe["result"]["value"])
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                errors.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif e.get("method") == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append(f"log: {p['entry'].get('text')}")
        result["errors"] = errors
        return result

    def close(self) -> None:
        try:
            self._send("Browser.close")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Any:
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_report_renders_in_chromium(tmp_path: Path, browser: Browser) -> None:
    methods = ("dpo", "ipo", "simpo", "orpo", "kto")
    store = make_store(tmp_path / "quickstart", methods=methods, seeds=(0, 1), n_configs=2, study="sqlite")
    page = write_report(store.root)
    got = browser.open(page)
    assert got["errors"] == []
    assert sorted(got["rows"]) == sorted(methods)  # one row per method, kto's failed trials included
    assert len(got["images"]) >= 3 + 2 * 4
    for img in got["images"]:
        assert img["complete"] and img["width"] > 0, img
    assert not [r for r in got["resources"] if not r.startswith("data:")]  # nothing fetched: self-contained


def test_the_probe_sees_broken_pages(tmp_path: Path, browser: Browser) -> None:
    """The checks above can fail: a broken image, a console error and an exception are all caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><table id='leaderboard'><tbody><tr data-key='dpo'><td>x</td></tr>"
                   "</tbody></table><img src='data:image/png;base64,iVBORw0KGgoAAAA='>"
                   "<script>console.error('boom'); undefinedFunction();</script></body></html>")
    got = browser.open(bad)
    assert got["rows"] == ["dpo"]
    assert [i["width"] for i in got["images"]] == [0]
    assert any("boom" in e for e in got["errors"]) and any(e.startswith("exception") for e in got["errors"])
