"""Server push (asgiref `http.response.push`) over HTTP/2 and HTTP/3, with real clients:
nghttp and a raw HTTP/2 client, aioquic's client; httpx as a client that disabled push."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx
import pytest
from hyperframe.frame import DataFrame, HeadersFrame, PushPromiseFrame

from tests.conftest import require_tool
from tests.protocols.h2raw import ENABLE_PUSH, RawH2, request_headers
from tests.protocols.h3client import h3_connect
from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async

pytestmark = pytest.mark.timeout(60)

CSS = b"body { color: teal }\n"


class PushApp:
    """`/page` pushes `/style.css` (when the scope offers push) and answers; the scopes
    it saw are kept for the test to look at."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.scopes.append(scope)
        if scope["path"] == "/page":
            # Always sent: where push is off the server must drop it without error.
            await send(
                {
                    "type": "http.response.push",
                    "path": "/style.css",
                    "headers": [(b"accept", b"text/css")],
                }
            )
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"page"})
            return
        if scope["path"] == "/style.css":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/css")],
                }
            )
            await send({"type": "http.response.body", "body": CSS})
            return
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def pushed(self) -> list[dict[str, Any]]:
        return [s for s in self.scopes if s["path"] == "/style.css"]


def test_nghttp_receives_push_over_tls(run_server: RunServer, tls_config: dict[str, Any]) -> None:
    require_tool("nghttp")
    app = PushApp()
    running = run_server(app, **tls_config)
    result = subprocess.run(
        ["nghttp", "-v", "-t", "20", f"https://localhost:{running.port}/page"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "recv PUSH_PROMISE frame" in out, out
    assert ":path: /style.css" in out
    assert "content-type: text/css" in out
    page = app.scopes[0]
    assert "http.response.push" in page["extensions"]
    (pushed,) = app.pushed()
    assert pushed["method"] == "GET"
    assert (b"accept", b"text/css") in pushed["headers"]
    assert dict(pushed["headers"])[b"host"] == f"localhost:{running.port}".encode()


def test_raw_client_gets_promise_then_pushed_body(run_server: RunServer) -> None:
    app = PushApp()
    running = run_server(app, h2c=True)
    conn = RawH2(running.port)
    try:
        conn.handshake()  # ENABLE_PUSH not sent: it defaults to 1
        conn.send_headers(1, request_headers("/page"))
        frames = []
        ended: set[int] = set()
        while not {1, 2} <= ended:
            frame = conn.read_frame()
            assert frame is not None
            frames.append(frame)
            if isinstance(frame, (DataFrame, HeadersFrame)) and "END_STREAM" in frame.flags:
                ended.add(frame.stream_id)
    finally:
        conn.close()
    promise = next(f for f in frames if isinstance(f, PushPromiseFrame))
    assert (promise.stream_id, promise.promised_stream_id) == (1, 2)
    # RFC 9113 section 8.4: the promise comes before the parent's DATA that could
    # refer to the resource.
    first_data = next(i for i, f in enumerate(frames) if isinstance(f, DataFrame) and f.data)
    assert frames.index(promise) < first_data
    body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 2)
    assert body == CSS


def test_client_without_push_gets_none_and_app_sees_no_error(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    app = PushApp()
    running = run_server(app, **tls_config)
    with httpx.Client(http2=True, verify=str(dev_certs.ca_cert)) as client:  # ENABLE_PUSH=0
        response = client.get(f"https://localhost:{running.port}/page")
    assert (response.http_version, response.status_code, response.content) == (
        "HTTP/2",
        200,
        b"page",
    )
    assert "http.response.push" not in app.scopes[0]["extensions"]
    assert app.pushed() == []


def test_raw_client_that_disables_push_gets_no_promise(run_server: RunServer) -> None:
    app = PushApp()
    running = run_server(app, h2c=True)
    conn = RawH2(running.port)
    try:
        conn.handshake({ENABLE_PUSH: 0})
        conn.send_headers(1, request_headers("/page"))
        response = conn.read_response(1)
        conn.ping()
        rest = conn.frames_until_ping_ack()
    finally:
        conn.close()
    assert (response.status, response.body) == (200, b"page")
    assert not any(isinstance(f, PushPromiseFrame) for f in rest)
    assert app.pushed() == []


def test_http3_push_with_aioquic(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    app = PushApp()
    running = quic_server(run_server, tls_config, app)

    async def scenario() -> Any:
        async with h3_connect(running.quic_port, ca(dev_certs)) as h3:  # MAX_PUSH_ID 8
            response = await h3.request("/page")
            for _ in range(200):
                pushed = h3.pushes.get(0)
                if pushed is not None and pushed.ended:
                    break
                await asyncio.sleep(0.01)
            return response, h3.promises, h3.pushes

    response, promises, pushes = run_async(scenario())
    assert (response.status, response.body) == (200, b"page")
    assert dict(promises[0])[b":path"] == b"/style.css"
    assert pushes[0].status == 200 and pushes[0].body == CSS
    assert "http.response.push" in app.scopes[0]["extensions"]
