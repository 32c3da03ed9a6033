"""max_body_size over HTTP/1.1, HTTP/2 and HTTP/3: a declared length over the limit
gets 413 before the app runs; a body that grows past it gets 413 and the app sees
http.disconnect; a body within it is served."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer
from tests.protocols.h2raw import RawH2, request_headers
from tests.protocols.h3client import h3_connect
from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async

pytestmark = pytest.mark.timeout(60)
LIMIT = 100_000


class Recorder:
    """Reads the whole body and answers its size; records what receive() gave."""

    def __init__(self) -> None:
        self.calls = 0
        self.last: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            self.last.append(message["type"])
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


def chunks(total: int, size: int = 16384) -> Any:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def test_declared_length_over_the_limit_http1(run_server: RunServer) -> None:
    app = Recorder()
    running = run_server(app, max_body_size=LIMIT)
    with httpx.Client() as client:
        response = client.post(f"{running.url}/", content=b"x" * (LIMIT + 1))
        within = client.post(f"{running.url}/", content=b"x" * LIMIT)
    assert response.status_code == 413
    assert (within.status_code, within.text) == (200, str(LIMIT))
    assert app.calls == 1  # only the request within the limit reached the app


def test_declared_length_over_the_limit_http2(run_server: RunServer) -> None:
    """A raw client (httpx gives up on a stream the server answered early)."""
    app = Recorder()
    running = run_server(app, h2c=True, max_body_size=LIMIT)
    with RawH2(running.port) as conn:
        conn.handshake()
        length = [(b"content-length", str(LIMIT + 1).encode())]
        conn.send_headers(1, request_headers("/", "POST", length), end_stream=False)
        response = conn.read_response(1)
        conn.send_headers(3, request_headers("/", "POST"), end_stream=False)
        conn.send_data(3, b"x" * 1000)
        within = conn.read_response(3)
    assert response.status == 413
    assert (within.status, within.body) == (200, b"1000")
    assert app.calls == 1


def test_streamed_body_growing_past_the_limit_http1(run_server: RunServer) -> None:
    app = Recorder()
    running = run_server(app, max_body_size=LIMIT)
    with httpx.Client() as client:
        try:
            response = client.post(f"{running.url}/", content=chunks(4 * LIMIT))
            status = response.status_code
        except httpx.HTTPError:
            status = 0  # the server closed while the client was still sending
    assert status in (413, 0)
    assert app.last[-1] == "http.disconnect"


def test_http1_raw_413_closes_the_connection(run_server: RunServer) -> None:
    running = run_server(Recorder(), max_body_size=LIMIT)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 413")
    assert b"connection: close" in head


def test_http3_declared_length_over_the_limit(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    app = Recorder()
    running: RunningServer = quic_server(run_server, tls_config, app, max_body_size=LIMIT)

    async def scenario() -> tuple[int, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            big = await client.request(
                "/",
                method="POST",
                headers=[(b"content-length", str(LIMIT + 1).encode())],
                body=b"x" * (LIMIT + 1),
            )
            small = await client.request("/", method="POST", body=b"x" * 1000)
            return big.status, small.status

    assert run_async(scenario()) == (413, 200)
    assert app.calls == 1


def test_streamed_body_growing_past_the_limit_http2(run_server: RunServer) -> None:
    app = Recorder()
    running = run_server(app, h2c=True, max_body_size=LIMIT, h2_initial_window_size=LIMIT * 4)
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/", "POST"), end_stream=False)
        for _ in range(8):
            conn.send_data(1, b"x" * 16384, end_stream=False)
        response = conn.read_response(1)
    assert response.status == 413
    assert app.last[-1] == "http.disconnect"


class StartsFirst(Recorder):
    """Starts its response before reading the body, so a 413 can no longer be sent."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while True:
            message = await receive()
            self.last.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        if message["type"] != "http.disconnect":
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_body_past_the_limit_after_the_response_started_resets_http2(
    run_server: RunServer,
) -> None:
    """The response already started: too late for 413, the stream is reset, the app
    sees http.disconnect and the connection serves another request."""
    app = StartsFirst()
    running = run_server(app, h2c=True, max_body_size=LIMIT, h2_initial_window_size=LIMIT * 4)
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/", "POST"), end_stream=False)
        first = conn.read_frame()
        while first is None or type(first).__name__ != "DataFrame":
            assert first is not None
            first = conn.read_frame()
        assert first.data == b"started"  # the response is under way
        for _ in range(8):
            conn.send_data(1, b"x" * 16384, end_stream=False)
        outcome = conn.read_until_error(1)
        conn.send_headers(3, request_headers("/", "POST"), end_stream=False)
        conn.send_data(3, b"x" * 1000)
        within = conn.read_response(3)
    # An error code: NO_ERROR would only come from the response being abandoned later.
    assert (outcome.kind, outcome.stream_id, outcome.error_code) == ("rst_stream", 1, 0x2)
    assert app.last.count("http.disconnect") == 1  # the first request's app saw it
    assert (within.status, within.body) == (200, b"started")


def test_body_past_the_limit_after_the_response_started_closes_http1(
    run_server: RunServer,
) -> None:
    """HTTP/1.1 cannot reset one response: the connection closes mid-response (the
    chunked body never gets its last chunk), and the app sees http.disconnect."""
    app = StartsFirst()
    running = run_server(app, max_body_size=LIMIT)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        while b"started" not in data:  # the response is under way
            data += sock.recv(65536)
        try:
            for _ in range(40):
                sock.sendall(b"4000\r\n" + b"x" * 16384 + b"\r\n")
        except OSError:
            pass  # closed while we were still sending
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"started" in data and not data.endswith(b"0\r\n\r\n")  # cut short
    assert app.last[-1] == "http.disconnect"


def test_http3_streamed_body_growing_past_the_limit(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """No content-length: the body passes the limit as it streams, 413 and the app
    sees http.disconnect; the connection serves another request."""
    app = Recorder()
    running: RunningServer = quic_server(run_server, tls_config, app, max_body_size=LIMIT)

    async def scenario() -> tuple[int, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            big = client.start("/", method="POST", body=b"x" * (4 * LIMIT), end=False)
            await asyncio.wait_for(big.done, 30)
            small = await client.request("/", method="POST", body=b"x" * 1000)
            return big.status, small.status

    assert run_async(scenario()) == (413, 200)
    assert app.last.count("http.disconnect") == 1
