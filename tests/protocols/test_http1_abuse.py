"""HTTP/1.1 abuse classes (issue 6) over raw sockets: the abusive connection is closed
with the right status, and a well-behaved client is served meanwhile. Nothing here
asserts on timing."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.apps import hello
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., RunningServer]


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def get(running: RunningServer) -> bytes:
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return read_all(sock)


def test_slowloris_headers_get_408_and_close(
    run_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends its request head a few bytes at a time, never finishing it,
    is answered 408 and closed after `http1_header_timeout`, while others are served."""
    caplog.set_level(logging.INFO, "multiplex")
    running = run_server(hello, http1_header_timeout=0.5, keep_alive_timeout=30.0)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        head = b"x-slow: " + b"a" * 10000
        received = b""
        for i in range(0, len(head), 10):
            try:
                slow.sendall(head[i : i + 10])
            except OSError:
                break
            assert get(running).startswith(b"HTTP/1.1 200 ")  # served meanwhile
            slow.settimeout(0.05)
            try:
                chunk = slow.recv(65536)
            except TimeoutError:
                continue
            finally:
                slow.settimeout(10)
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
        received += read_all(slow)
    assert received.startswith(b"HTTP/1.1 408 "), received
    lines = [r.getMessage() for r in caplog.records if "http1_header_timeout" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0], lines


def test_complete_head_is_not_timed_out(run_server: Serve) -> None:
    """The header timeout ends with the head: a request whose app answers later is served."""
    running = run_server(hello, http1_header_timeout=0.2)
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        sock.sendall(b"\r\n")
        data = b""
        while b"hello" not in data.lower() and b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 "), data


def test_idle_keep_alive_is_not_408(run_server: Serve) -> None:
    """No bytes of a next request: the keep-alive timeout closes quietly, no 408."""
    running = run_server(hello, http1_header_timeout=0.2, keep_alive_timeout=0.5)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        data = read_all(sock)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"408" not in data


async def big_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"x" * 65536
    for _ in range(256):  # 16 MiB
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def stalled(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "send_stall_timeout" in r.getMessage()]


def test_peer_that_does_not_read_is_closed_after_send_stall_timeout(
    run_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "multiplex")
    running = run_server(big_body, send_stall_timeout=0.3)
    state = running.server.state
    assert state is not None
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.settimeout(10)
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        deadline = time.monotonic() + 20
        while not stalled(caplog) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the server gives up on us (bounded wait, not asserted)
        assert running.call(lambda: len(state.connections)) == 0
        received = read_all(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert len(received) < 16 * 1024 * 1024
    lines = stalled(caplog)
    assert len(lines) == 1 and "127.0.0.1" in lines[0], lines


async def read_then_answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_stalled_request_body_is_closed_after_body_timeout(
    run_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "multiplex")
    running = run_server(read_then_answer, body_timeout=0.3)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        assert get(running).startswith(b"HTTP/1.1 200 ")  # served meanwhile
        assert read_all(sock) == b""  # closed, nothing answered
    lines = [r.getMessage() for r in caplog.records if "body_timeout" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1" in lines[0], lines


def test_complete_body_is_served_with_body_timeout(run_server: Serve) -> None:
    running = run_server(read_then_answer, body_timeout=0.3)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nconnection: close\r\n\r\n"
        )
        sock.sendall(b"0123456789")
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")


def test_pipelining_flood_is_read_only_as_fast_as_answered(run_server: Serve) -> None:
    """A client that pipelines thousands of requests and reads no response: the server
    stops reading it (what the parser holds ahead stays bounded) and still answers every
    request, in order, once the client reads."""
    from multiplex.protocols.http1 import HTTP1Protocol

    running = run_server(hello)
    count = 3000
    request = b"GET / HTTP/1.1\r\nhost: x\r\nuser-agent: " + b"p" * 200 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, hold little
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        payload = request * count
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        held = running.call(
            lambda: max(
                (c.held for c in running.server.state.connections if isinstance(c, HTTP1Protocol)),
                default=0,
            )
        )
        # The pause threshold (64 KiB) plus what one read brought (asyncio reads up to
        # 256 KiB at a time; measured 113-188 KB held of 723 KB sent, the rest waiting
        # in kernel buffers).
        assert held <= 65536 + 262144, held
        sock.setblocking(True)
        sock.sendall(payload[sent:])
        answers = 0
        data = b""
        while answers < count:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answers} responses"
            data += chunk
            answers = data.count(b"HTTP/1.1 200 ")
    assert answers == count


def _reject_lines(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "multiplex"
        and "Bad HTTP/1.1 request" in r.getMessage()
        and what in r.getMessage()
    ]


def test_too_many_header_fields_get_431_and_close(
    run_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """Thousands of tiny fields within the byte limit: past http1_max_header_count the
    request is answered 431 and the connection closed; the app never sees it."""
    caplog.set_level(logging.INFO, "multiplex")
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await hello(scope, receive, send)

    running = run_server(app, http1_max_header_count=50, http1_max_head_size=64 * 1024)
    fields = b"".join(b"x%d: \r\n" % i for i in range(2000))  # empty values: ~12 KB
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET /flood HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n")
        answer = read_all(sock)  # EOF: closed after the answer
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert b"connection: close" in answer.lower()
        assert get(running).startswith(b"HTTP/1.1 200 ")  # served meanwhile
    # Exactly at the limit is served, one more is not: host, connection and 48 more.
    for extra, status in ((48, b"200"), (49, b"431")):
        fields = b"".join(b"x%d: v\r\n" % i for i in range(extra))
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(
                b"GET /within HTTP/1.1\r\nhost: x\r\nconnection: close\r\n" + fields + b"\r\n"
            )
            assert read_all(sock).startswith(b"HTTP/1.1 " + status + b" ")
    assert "/flood" not in calls and "/within" in calls
    assert len(_reject_lines(caplog, "http1_max_header_count = 50")) == 2


@pytest.mark.parametrize("whole", [True, False], ids=["whole-head", "unfinished-head"])
def test_huge_request_line_gets_431_and_close(
    run_server: Serve, caplog: pytest.LogCaptureFixture, whole: bool
) -> None:
    """A request target longer than http1_max_head_size, whether the head
    arrives whole in one read or never ends."""
    caplog.set_level(logging.INFO, "multiplex")
    running = run_server(hello, http1_max_head_size=16 * 1024)
    head = b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(head if whole else head[:-4])
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
        assert get(running).startswith(b"HTTP/1.1 200 ")
    assert len(_reject_lines(caplog, "")) == 1


async def sixty_four_kib(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"b" * 65536})


def test_pipelined_responses_for_a_peer_that_does_not_read_stay_bounded(
    run_server: Serve,
) -> None:
    """300 pipelined requests for 64 KiB each (19 MiB of answers) from a client that
    reads nothing: once the kernel buffers are full, the server holds at most its
    write-buffer high-water mark plus one response, and stops answering (and reading)
    until the client reads; then every response arrives."""
    from multiplex.protocols.http1 import HTTP1Protocol

    high = 64 * 1024
    running = run_server(sixty_four_kib, write_buffer_high=high)
    count = 300
    state = running.server.state
    assert state is not None

    def queued() -> int:
        return int(
            running.call(
                lambda: max(
                    (
                        c.transport.get_write_buffer_size()
                        for c in state.connections
                        if isinstance(c, HTTP1Protocol)
                    ),
                    default=0,
                )
            )
        )

    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" * count)
        for _ in range(1000):  # until the server has to wait for us
            if running.call(lambda: any(c.write_paused for c in state.connections)):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the server never had to wait for this client")
        assert queued() <= high + 65536 + 1024
        assert get(running).startswith(b"HTTP/1.1 200 ")  # served meanwhile
        data = b""
        while data.count(b"HTTP/1.1 200 ") < count or not data.endswith(b"b" * 1024):
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {data.count(b'HTTP/1.1 200 ')} responses"
            data += chunk
            if len(data) % (1 << 20) < 65536:
                assert queued() <= high + 65536 + 1024
    assert data.count(b"HTTP/1.1 200 ") == count
