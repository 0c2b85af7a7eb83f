"""The built-in web console in a real browser: headless Chromium driven
over the DevTools protocol (with the websockets client we already test
with), against a real `twistd -n chatd`.  It connects with a token, creates
and joins a room, sends a message and sees it, and shows message content
that contains HTML as text — nothing from users is ever executed."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.daemon import Daemon, clean_env, free_port, run_module

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must run the browser test: install Debian's chromium (.ci/run does)")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on this machine (CI installs it)"
)


class DevTools:
    def __init__(self, url: str) -> None:
        self.ws = connect(url, max_size=None).__enter__()
        self.ids = itertools.count(1)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            reply = json.loads(self.ws.recv(timeout=20))
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression: str, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"never true: {expression}")

    def type_into(self, element_id: str, text: str) -> None:
        self.js(f"document.getElementById({json.dumps(element_id)}).value = {json.dumps(text)}")

    def click(self, element_id: str) -> None:
        self.js(f"document.getElementById({json.dumps(element_id)}).click()")


def start_chromium(profile: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,800",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("Chromium did not start its DevTools endpoint")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
        pages = [t for t in json.load(r) if t.get("type") == "page"]
    return proc, pages[0]["webSocketDebuggerUrl"]


XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_console_connects_chats_and_never_runs_user_html(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = clean_env()
    daemon = Daemon(
        ["--data-dir", str(data), "--listen", f"tcp:{port}:interface=127.0.0.1"], env, str(tmp_path)
    )
    browser = None
    try:
        daemon.wait_healthy(port)
        token = run_module(
            ["token", "alice", "--data-dir", str(data)], env, str(tmp_path)
        ).stdout.strip()
        bob_token = run_module(
            ["token", "bob", "--data-dir", str(data)], env, str(tmp_path)
        ).stdout.strip()
        browser, url = start_chromium(tmp_path / "profile")
        page = DevTools(url)
        page.call("Page.enable")
        page.call("Page.navigate", {"url": f"http://127.0.0.1:{port}/"})
        page.until("document.readyState === 'complete' && !!document.getElementById('connect')")
        page.until(
            "!document.getElementById('demo').hidden"
        )  # the embedded default offers demo tokens

        page.type_into("token", token)
        page.click("connect")
        page.until("document.getElementById('status').textContent.includes('connected as alice')")
        page.type_into("room-name", "browser room")
        page.click("create")
        room_id = page.until("document.getElementById('room-id').value")
        page.click("join")
        page.until("document.getElementById('current-room').textContent.includes('browser room')")

        page.type_into("content", "hello from the browser")
        page.click("send")
        page.until(
            "[...document.querySelectorAll('#messages .text')].some(e => e.textContent === 'hello from the browser')"
        )

        # HTML in content, from this page and from another user, stays text
        page.type_into("content", XSS)
        page.click("send")
        with connect(f"ws://127.0.0.1:{port}/ws?token={bob_token}") as bob:
            bob.recv(timeout=5)
            bob.send(json.dumps({"type": "chat:join", "id": "j", "data": room_id}))
            while json.loads(bob.recv(timeout=5)).get("id") != "j":
                pass
            bob.send(
                json.dumps(
                    {
                        "type": "chat:message",
                        "id": "m",
                        "data": {"chatId": room_id, "content": "<b onmouseover=alert(1)>bold</b>"},
                    }
                )
            )
            page.until(
                "[...document.querySelectorAll('#messages .text')].filter(e => e.textContent.startsWith('<')).length === 2"
            )
        texts = page.js("[...document.querySelectorAll('#messages .text')].map(e => e.textContent)")
        assert XSS in texts and "<b onmouseover=alert(1)>bold</b>" in texts
        assert (
            page.js(
                "document.querySelectorAll('#messages img, #messages script, #messages b').length"
            )
            == 0
        )
        assert page.js("window.__xss === undefined")

        shot = base64.b64decode(page.call("Page.captureScreenshot", {"format": "png"})["data"])
        artifacts = Path(os.environ.get("CHATD_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "console.png").write_bytes(shot)
        print(f"console screenshot: {artifacts / 'console.png'} ({len(shot)} bytes)")
        assert shot.startswith(b"\x89PNG")
    finally:
        if browser is not None:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
        assert daemon.terminate(), daemon.output()
