"""The demo app, driven by calling it as an ASGI 3 app: a scope and two coroutines."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import MutableMapping
from typing import Any

import pytest

from multiplex.demo import app

Message = MutableMapping[str, Any]


def _scope(
    method: str = "GET",
    path: str = "/",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "2",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": http_version,
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers or [(b"host", b"localhost:8443")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8443),
        "extensions": {},
        "state": {"started_at": 1234.5},
    }


class Exchange:
    """One request: feeds `body_chunks` to the app, records what it sends.

    After the body, `receive` blocks until the response is complete and then reports
    http.disconnect, as a server does once the client has gone."""

    def __init__(self, body_chunks: list[bytes] | None = None) -> None:
        self.incoming: asyncio.Queue[Message] = asyncio.Queue()
        chunks = body_chunks or [b""]
        for i, chunk in enumerate(chunks):
            self.incoming.put_nowait(
                {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            )
        self.sent: list[Message] = []
        self.done = asyncio.Event()
        # (number of request messages received so far, message) for each send.
        self.timeline: list[tuple[int, Message]] = []
        self.received = 0

    async def receive(self) -> Message:
        if not self.incoming.empty():
            self.received += 1
            return self.incoming.get_nowait()
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.timeline.append((self.received, message))
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.done.set()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def bodies(self) -> list[bytes]:
        return [m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"]

    @property
    def body(self) -> bytes:
        return b"".join(self.bodies)


async def _call(scope: dict[str, Any], body_chunks: list[bytes] | None = None) -> Exchange:
    exchange = Exchange(body_chunks)
    await asyncio.wait_for(app(scope, exchange.receive, exchange.send), 10)
    assert exchange.sent[0]["type"] == "http.response.start"
    assert exchange.sent[-1]["type"] == "http.response.body"
    assert not exchange.sent[-1].get("more_body", False)
    return exchange


def call(scope: dict[str, Any], body_chunks: list[bytes] | None = None) -> Exchange:
    return asyncio.run(_call(scope, body_chunks))


@pytest.mark.parametrize(
    ("http_version", "shown"), [("1.1", "HTTP/1.1"), ("2", "HTTP/2"), ("3", "HTTP/3")]
)
def test_index_names_the_protocol(http_version: str, shown: str) -> None:
    response = call(_scope(http_version=http_version))
    assert response.status == 200
    assert response.headers[b"content-type"].startswith(b"text/html")
    page = response.body.decode()
    assert int(response.headers[b"content-length"]) == len(response.body)
    assert shown in page
    assert "https" in page and "127.0.0.1" in page
    for resource in ("/static/style.css", "/static/app.js", "/echo", "/stream"):
        assert resource in page
    for n in range(12):
        assert f"/static/tile/{n}.svg" in page


def test_index_escapes_html() -> None:
    scope = _scope()
    scope["client"] = ("<script>", 1)
    body = call(scope).body
    assert b"&lt;script&gt;" in body and b"<script>" not in body


def test_static_resources() -> None:
    css = call(_scope(path="/static/style.css"))
    assert css.status == 200 and css.headers[b"content-type"].startswith(b"text/css")
    js = call(_scope(path="/static/app.js"))
    assert js.status == 200 and b"/api/info" in js.body
    assert js.headers[b"content-type"].startswith(b"text/javascript")
    for n in (0, 11):
        tile = call(_scope(path=f"/static/tile/{n}.svg"))
        assert tile.status == 200
        assert tile.headers[b"content-type"] == b"image/svg+xml"
        assert tile.body.startswith(b"<svg")
    for missing in ("/static/tile/12.svg", "/static/tile/x.svg", "/static/tile/1.png"):
        assert call(_scope(path=missing)).status == 404


def test_head_sends_headers_only() -> None:
    response = call(_scope(method="HEAD", path="/static/style.css"))
    assert response.status == 200
    assert int(response.headers[b"content-length"]) > 0
    assert response.body == b""


def test_api_info() -> None:
    headers = [(b"host", b"localhost:8443"), (b"user-agent", b"test"), (b"accept", b"*/*")]
    response = call(_scope(path="/api/info", headers=headers))
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/json"
    info = json.loads(response.body)
    assert info["http_version"] == "HTTP/2"
    assert info["scheme"] == "https"
    assert info["client"] == ["127.0.0.1", 50000]
    assert info["server"] == ["127.0.0.1", 8443]
    assert info["method"] == "GET"
    assert info["path"] == "/api/info"
    assert info["headers"] == 3
    assert info["started_at"] == 1234.5


def test_echo_streams_chunk_by_chunk() -> None:
    chunks = [b"first,", b"second,", b"third"]
    headers = [(b"content-type", b"text/x-test")]
    response = call(_scope(method="POST", path="/echo", headers=headers), chunks)
    assert response.status == 200
    assert response.headers[b"content-type"] == b"text/x-test"
    assert response.body == b"first,second,third"
    # One response body message per request chunk, each sent before the next chunk
    # was read: the body is streamed, not buffered.
    body_sends = [(n, m) for n, m in response.timeline if m["type"] == "http.response.body"]
    assert [(n, m["body"]) for n, m in body_sends[:3]] == [
        (1, b"first,"),
        (2, b"second,"),
        (3, b"third"),
    ]
    assert all(m["more_body"] for _, m in body_sends[:3])
    assert body_sends[-1][1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_echo_default_content_type_and_empty_body() -> None:
    response = call(_scope(method="POST", path="/echo"))
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/octet-stream"
    assert response.body == b""


def test_echo_stops_when_client_disconnects() -> None:
    async def run() -> list[Message]:
        sent: list[Message] = []
        messages: list[Message] = [
            {"type": "http.request", "body": b"part", "more_body": True},
            {"type": "http.disconnect"},
        ]

        async def receive() -> Message:
            return messages.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await asyncio.wait_for(app(_scope(method="POST", path="/echo"), receive, send), 5)
        return sent

    sent = asyncio.run(run())
    assert [m.get("body") for m in sent[1:]] == [b"part"]


def test_echo_sha256() -> None:
    chunks = [b"a" * 1000, b"b" * 2000, b"c"]
    response = call(_scope(method="POST", path="/echo", query=b"sha256"), chunks)
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/json"
    result = json.loads(response.body)
    assert result == {"sha256": hashlib.sha256(b"".join(chunks)).hexdigest(), "bytes": 3001}


def test_stream_lines_each_flushed() -> None:
    started = time.monotonic()
    response = call(_scope(path="/stream", query=b"n=4&interval=0.05"))
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert response.headers[b"content-type"].startswith(b"text/plain")
    lines = [b for b in response.bodies if b]
    # Each line is its own body message with more_body set, then the end.
    assert len(lines) == 4
    assert all(line.startswith(f"line {i}/4 ".encode()) for i, line in enumerate(lines, 1))
    assert all(m["more_body"] for m in response.sent[1:-1])
    assert elapsed >= 0.15  # three intervals between four lines


def test_stream_defaults() -> None:
    response = call(_scope(path="/stream", query=b"interval=0"))
    assert len([b for b in response.bodies if b]) == 10


@pytest.mark.parametrize(
    "query",
    [b"n=1001", b"n=-1", b"n=x", b"interval=5.5", b"interval=-1", b"interval=nan", b"n=1.5"],
)
def test_stream_bounds(query: bytes) -> None:
    response = call(_scope(path="/stream", query=query))
    assert response.status == 400


def test_stream_accepts_the_limits() -> None:
    response = call(_scope(path="/stream", query=b"n=1000&interval=0"))
    assert response.status == 200
    assert len([b for b in response.bodies if b]) == 1000
    response = call(_scope(path="/stream", query=b"n=1&interval=5"))
    assert response.status == 200  # one line: no wait at all


def test_stream_stops_when_client_disconnects() -> None:
    async def run() -> tuple[list[Message], float]:
        sent: list[Message] = []
        gone = asyncio.Event()
        first = True

        async def receive() -> Message:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)
            if len(sent) == 3:  # the head and two lines, then the client leaves
                gone.set()

        started = time.monotonic()
        scope = _scope(path="/stream", query=b"n=100&interval=1")
        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent, time.monotonic() - started

    sent, elapsed = asyncio.run(run())
    assert len(sent) == 3
    assert elapsed < 3


def test_not_found() -> None:
    response = call(_scope(path="/nope"))
    assert response.status == 404
    assert response.headers[b"content-type"].startswith(b"text/plain")
    assert response.body


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/", b"GET, HEAD"),
        ("DELETE", "/api/info", b"GET, HEAD"),
        ("GET", "/echo", b"POST"),
        ("PUT", "/stream", b"GET, HEAD"),
        ("POST", "/static/tile/1.svg", b"GET, HEAD"),
    ],
)
def test_method_not_allowed(method: str, path: str, allow: bytes) -> None:
    response = call(_scope(method=method, path=path))
    assert response.status == 405
    assert response.headers[b"allow"] == allow


def test_lifespan() -> None:
    async def run() -> tuple[list[Message], dict[str, Any]]:
        state: dict[str, Any] = {}
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 5)
        return sent, state

    sent, state = asyncio.run(run())
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert isinstance(state["started_at"], float)


def test_lifespan_without_state() -> None:
    async def run() -> list[Message]:
        incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        return sent

    assert [m["type"] for m in asyncio.run(run())] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
