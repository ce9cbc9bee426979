"""Drive Debian's headless Chromium over the DevTools protocol through a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on fds 3 and 4), with no
websocket library and no network port. Used by the report's browser test.

``load_page(url, screenshot)`` opens a page, waits for its load event, collects console
messages, exceptions and log entries (failed resource loads included), evaluates a DOM probe
and writes a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]

PROBE = """JSON.stringify({
  sections: [...document.querySelectorAll('section')].map(s => ({id: s.id,
      status: s.dataset.status, height: s.getBoundingClientRect().height,
      text: s.innerText.length})),
  images: document.images.length,
  broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  external: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') ||
      e.getAttribute('href')).filter(u => /^(https?:)?\\/\\//.test(u)),
  scripts: document.scripts.length,
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
  title: document.title})"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    console: list[dict[str, Any]] = field(default_factory=list)  # console API calls
    exceptions: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # Log.entryAdded entries
    failed_requests: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """Console errors/warnings, uncaught exceptions, error log entries, failed loads."""
        out = [
            f"console.{c['type']}: {c.get('args')}"
            for c in self.console
            if c["type"] in ("error", "warning", "assert")
        ]
        out += [f"exception: {e}" for e in self.exceptions]
        out += [
            f"log {e.get('level')}: {e.get('text')} {e.get('url', '')}"
            for e in self.log
            if e.get("level") in ("error", "warning")
        ]
        out += [f"failed request: {f}" for f in self.failed_requests]
        return out


class _Pipe:
    def __init__(self, proc: subprocess.Popen, wfd: int, rfd: int) -> None:
        self.proc, self.wfd, self.rfd = proc, wfd, rfd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            ready, _, _ = select.select([self.rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.proc.poll()})")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)


def load_page(
    url: str,
    screenshot: str | Path | None = None,
    width: int = 1280,
    height: int = 900,
    timeout: float = 120.0,
    chromium: str | None = None,
) -> PageResult:
    """Load ``url`` in headless Chromium; returns what the page logged and the DOM probe."""
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed")
    to_chrome_r, to_chrome_w = _high(os.pipe())
    from_chrome_r, from_chrome_w = _high(os.pipe())
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    # chromium reads commands on fd 3 and writes on fd 4: bash moves our pipe ends there
    # (they are numbered >= 10, so the redirections cannot clobber each other).
    args = [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    proc = subprocess.Popen(
        ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', exe, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(to_chrome_r, from_chrome_w),
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    result = PageResult()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        sid = pipe.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.send(f"{domain}.enable", session=sid)
        pipe.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        nav = pipe.send("Page.navigate", {"url": url}, session=sid, timeout=timeout)
        if nav.get("errorText"):
            raise RuntimeError(f"navigation failed: {nav['errorText']}")
        pipe.wait_event("Page.loadEventFired", timeout=timeout)
        value = pipe.send(
            "Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=sid
        )["result"]["value"]
        result.probe = json.loads(value)
        if screenshot is not None:
            shot = pipe.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": result.probe["width"],
                        "height": min(result.probe["height"], 16000),
                        "scale": 1,
                    },
                },
                session=sid,
                timeout=timeout,
            )
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        # drain events that arrived meanwhile
        pipe.send("Runtime.evaluate", {"expression": "1"}, session=sid)
        for e in pipe.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled":
                result.console.append(
                    {
                        "type": p.get("type"),
                        "args": [a.get("value", a.get("description")) for a in p.get("args", [])],
                    }
                )
            elif m == "Runtime.exceptionThrown":
                result.exceptions.append(p.get("exceptionDetails", {}).get("text"))
            elif m == "Log.entryAdded":
                result.log.append(p.get("entry", {}))
            elif m == "Network.loadingFailed":
                result.failed_requests.append({"error": p.get("errorText"), "type": p.get("type")})
            elif m == "Network.requestWillBeSent":
                result.requests.append(p.get("request", {}).get("url", ""))
        with contextlib.suppress(RuntimeError, TimeoutError):
            pipe.send("Browser.close", timeout=10)
    finally:
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    return result


def _high(fds: tuple[int, int]) -> tuple[int, int]:
    """Move both ends of a pipe to descriptors >= 10 (close-on-exec, as os.pipe makes them)."""
    import fcntl

    out = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return out  # type: ignore[return-value]
