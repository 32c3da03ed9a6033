"""The demo in a real browser: headless Chromium, driven through its DevTools protocol,
loads the demo page over HTTP/3 and runs the page's WebTransport echo (a datagram and a
bidirectional stream to /wt). Chromium trusts the development certificate by its SPKI
hash and is told to use QUIC for the demo's origin, as a browser that saw alt-svc would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from multiplex import devcerts
from tests.conftest import require_tool
from tests.test_cli_serve import free_port, start, wait_for_accept

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def demo(dev_certs: Any) -> Iterator[int]:
    port = free_port()
    process = start(
        "demo",
        "--bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
    )
    try:
        wait_for_accept(process, port)
        yield port
    finally:
        process.kill()
        process.communicate()


@pytest.fixture
def chromium(demo: int, dev_certs: Any) -> Iterator[str]:
    """A headless Chromium; yields the DevTools WebSocket URL of its page."""
    binary = require_tool("chromium")
    profile = tempfile.mkdtemp(prefix="multiplex-chromium-")
    args = [
        binary,
        "--headless=new",
        "--no-sandbox",  # tests may run as root
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        f"--ignore-certificate-errors-spki-list={devcerts.spki_hash(dev_certs.cert)}",
        f"--origin-to-force-quic-on=localhost:{demo}",
        "--host-resolver-rules=MAP localhost 127.0.0.1",
        "about:blank",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            assert process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        (page,) = [t for t in targets if t["type"] == "page"]
        yield str(page["webSocketDebuggerUrl"])
    finally:
        process.kill()
        process.wait()


async def devtools(url: str, steps: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run DevTools commands in order; their results. A step `("await", {"event": E})`
    waits for the event E instead (its parameters are the result)."""
    results = []
    async with websockets.connect(url, max_size=None) as ws:
        for n, (method, params) in enumerate(steps, 1):
            if method == "await":
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("method") == params["event"]:
                        results.append(message.get("params", {}))
                        break
                continue
            await ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == n:
                    assert "error" not in message, message
                    results.append(message["result"])
                    break
    return results


def evaluate(expression: str) -> tuple[str, dict[str, Any]]:
    return (
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
    )


def test_chromium_runs_the_demo_webtransport_echo(demo: int, chromium: str) -> None:
    url = f"https://localhost:{demo}/"
    results = asyncio.run(
        asyncio.wait_for(
            devtools(
                chromium,
                [
                    ("Page.enable", {}),
                    ("Page.navigate", {"url": url}),
                    ("await", {"event": "Page.loadEventFired"}),
                    evaluate("document.querySelector('.protocol').textContent"),
                    evaluate("window.webTransportEcho()"),
                ],
            ),
            90,
        )
    )
    protocol = results[3]["result"]["value"]
    echo = results[4]["result"]["value"]
    assert protocol == "HTTP/3"
    assert echo.get("datagram") == "datagram ping", echo
    assert echo.get("stream") == "stream ping", echo
