"""The HTTP/1.1 hot path's shortcuts, in memory: each one answers as the long way does,
and is really taken where it should be.

- an unpipelined request is handled from the parser callbacks, not through the queue;
- a response head seen before comes from `http1._HEADS`;
- http.response.start headers seen before come from `streams.http._STARTS`;
- on_header notes Host, Expect and TE instead of walks over the fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from interop.benchmarks.h1cost import FakeTransport
from multiplex.config import Config
from multiplex.protocols import http1
from multiplex.protocols.http1 import HTTP1Protocol
from multiplex.streams import http as streams_http
from multiplex.streams.seam import ConnectionInfo, ServerState

GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"

App = Callable[[dict[str, Any], Any, Any], Any]


class Transport(FakeTransport):
    """h1cost's in-memory transport (what HTTP1Protocol asks of one), keeping what is
    written."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data
        super().write(data)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"Content-Type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


def serve(
    chunks: list[bytes], app: App = hello, before: Callable[[HTTP1Protocol], None] | None = None
) -> tuple[bytes, HTTP1Protocol]:
    """Feed `chunks` one loop turn apart into a fresh connection; what it wrote."""

    async def main() -> tuple[bytes, HTTP1Protocol]:
        config = Config(app="tests:app", access_log=False, date_header=False)
        state = ServerState(app, config, {})
        info = ConnectionInfo("1.1", "http", ("127.0.0.1", 5000), ("127.0.0.1", 80))
        protocol = HTTP1Protocol(state, info)
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        if before is not None:
            before(protocol)
        for chunk in chunks:
            protocol.data_received(chunk)
            for _ in range(20):
                await asyncio.sleep(0)
        protocol._cancel_timers()
        return bytes(transport.out), protocol

    return asyncio.run(main())


def count_calls(protocol: HTTP1Protocol, name: str) -> list[int]:
    calls = [0]
    original = getattr(protocol, name)

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return original(*args)

    setattr(protocol, name, counted)
    return calls


def test_unpipelined_requests_skip_the_queue() -> None:
    counter: list[list[int]] = []
    out, _ = serve([GET, GET], before=lambda p: counter.append(count_calls(p, "_handle_events")))
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert counter[0][0] == 0


def test_pipelined_requests_take_the_queue_and_answer_alike() -> None:
    one, _ = serve([GET, GET])
    counter: list[list[int]] = []
    two, _ = serve([GET + GET], before=lambda p: counter.append(count_calls(p, "_handle_events")))
    assert counter[0][0] >= 1  # the second request waited in the queue
    assert one == two


def test_cached_head_is_the_head_made_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    http1._HEADS.clear()
    http1._CHECKED.clear()
    first, _ = serve([GET])
    assert any(key[0] == 200 for key in http1._HEADS)
    # A head found in the cache is not made again: its fields are not checked again.
    http1._CHECKED.clear()
    second, _ = serve([GET])
    assert not http1._CHECKED
    assert first == second
    # The same response with the cache out of the way.
    monkeypatch.setattr(http1, "_HEAD_CACHE_SIZE", -1)
    http1._HEADS.clear()
    third, _ = serve([GET])
    assert not http1._HEADS
    assert third == first
    assert first.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n")
    assert first.endswith(b"\r\n\r\nhello")


def test_cached_head_keeps_the_content_length_check() -> None:
    async def too_long(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"abc"})

    for _ in range(2):  # the second time from the cache
        out, protocol = serve([GET], too_long)
        assert protocol.closed
        assert b"abc" not in out


@pytest.mark.parametrize(
    "items",
    [
        [(b"Content-Type", b"text/plain"), (b"content-length", b"5")],
        [(b"server", b"x"), (b"Date", b"y"), (b"transfer-encoding", b"chunked")],
        [[b"content-type", b"text/plain"]],
        ((b"a", b"1") for _ in range(2)),
        [],
    ],
)
def test_start_fields_from_the_cache_are_as_validated(items: Any) -> None:
    items = list(items)
    expected = streams_http._header_pairs("http.response.start", items)
    seen = streams_http._seen(expected)
    streams_http._STARTS.clear()
    assert streams_http._response_fields(iter(items)) == (expected, seen)
    assert streams_http._response_fields(items) == (expected, seen)
    hashable = all(type(item) is tuple for item in items)
    # Taken: a second call finds tuples of tuples in the cache (lists are not hashable).
    assert bool(streams_http._STARTS) == hashable
    if hashable:
        fields, _ = streams_http._response_fields(items)
        fields.append((b"x", b"y"))  # a copy: the cached pairs stay as they were
        assert streams_http._response_fields(items) == (expected, seen)


@pytest.mark.parametrize(
    "items", [[(b"a", "b")], [(b"a",)], [("a", b"b")], 5, [(b"a", b"b", b"c")], ["ab"]]
)
def test_start_fields_refused_alike(items: Any) -> None:
    streams_http._STARTS.clear()
    with pytest.raises(TypeError) as long_way:
        streams_http._header_pairs("http.response.start", items)
    for _ in range(2):
        with pytest.raises(TypeError) as short_way:
            streams_http._response_fields(items)
        assert str(short_way.value) == str(long_way.value)
    assert not streams_http._STARTS


def scope_of(request: bytes) -> tuple[bytes, dict[str, Any] | None]:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)
        await hello(scope, receive, send)

    out, _ = serve([request], app)
    return out, scopes[0] if scopes else None


@pytest.mark.parametrize(
    ("te", "trailers"),
    [
        (b"", False),
        (b"TE: trailers\r\n", True),
        (b"te: gzip, Trailers;q=1\r\n", True),
        (b"te: gzip\r\n", False),
        (b"te: gzip\r\nte: trailers\r\n", True),
    ],
)
def test_te_trailers_noted_as_the_fields_arrive(te: bytes, trailers: bool) -> None:
    _, scope = scope_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + te + b"\r\n")
    assert scope is not None
    assert ("http.response.trailers" in scope["extensions"]) == trailers


@pytest.mark.parametrize(
    ("head", "served"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", False),
    ],
)
def test_host_count_noted_as_the_fields_arrive(head: bytes, served: bool) -> None:
    out, scope = scope_of(head)
    assert (scope is not None) == served
    if not served:
        assert out.startswith(b"HTTP/1.1 400 ")


def test_expect_continue_noted_as_the_fields_arrive() -> None:
    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": message["body"][:2]})

    head = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\ncontent-length: 2\r\n\r\n"
    out, _ = serve([head, b"ok"], reader)
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_held_head_goes_when_no_body_follows(method: bytes) -> None:
    """A head is held for the body piece that follows at once, with no loop callback of
    its own; a streaming response whose first piece is empty gets its head out then."""
    transports: list[Transport] = []
    while_waiting: list[bytes] = []

    async def streaming(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await asyncio.sleep(0)  # the app waits: what has the client got meanwhile?
        while_waiting.append(bytes(transports[0].out))
        await send({"type": "http.response.body", "body": b"late"})

    def before(protocol: HTTP1Protocol) -> None:
        transports.append(protocol.transport)  # type: ignore[arg-type]

    out, _ = serve([method + b" / HTTP/1.1\r\nHost: a\r\n\r\n"], streaming, before)
    head = while_waiting[0]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert out == (head + b"4\r\nlate\r\n0\r\n\r\n" if method == b"GET" else head)


def test_head_and_single_body_go_in_one_write() -> None:
    writes: list[bytes] = []

    def before(protocol: HTTP1Protocol) -> None:
        protocol.transport.write = writes.append  # type: ignore[method-assign]

    serve([GET], hello, before)
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"hello")


def test_large_start_fields_are_not_kept() -> None:
    streams_http._STARTS.clear()
    items = [(b"x-big", b"v" * 3000)]
    assert streams_http._response_fields(items) == (items, 0)
    assert not streams_http._STARTS
