"""Object lifetimes on the HTTP/2 hot path: what a finished request, and a closed
connection, leave behind.

Under many concurrent streams the garbage collector's cost grows with the objects that
are alive when it runs (it runs mid-burst, while a loop turn's new streams wait for
their tasks) and with those that survive into older generations. So a finished stream's
objects must be freed by reference counting, at once, not left for a collection or for
the next request on the connection. Checked with the collector off: an object that
needs it would still be alive.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from interop.benchmarks import h2ceiling
from interop.benchmarks.apps import app as hello_app
from multiplex.config import Config
from multiplex.protocols.http2 import H2Protocol
from multiplex.streams.http import HTTPStream
from multiplex.streams.seam import ConnectionInfo, ServerState
from tests import apps
from tests.conftest import RunningServer
from tests.protocols.h2raw import RawH2, request_headers
from tests.protocols.lifetime import connection_refs, server_garbage, settle_until_freed


async def _serve_one_batch() -> tuple[H2Protocol, list[weakref.ref[object]], list[HTTPStream]]:
    """One connection, one read of ten GETs, answered in full; weak references to the
    h2 stream objects and the app tasks of those requests, and the ASGI streams."""
    server = ServerState(hello_app, Config(), {})
    info = ConnectionInfo("2", "http", ("127.0.0.1", 50000), ("127.0.0.1", 8080))
    proto = H2Protocol(server, info)
    proto.connection_made(h2ceiling._Transport())  # type: ignore[arg-type]
    opening, (chunk,) = h2ceiling.client_bytes(10)
    proto.data_received(opening)
    proto.data_received(chunk)
    streams = list(proto.streams.values())
    assert len(streams) == 10
    refs: list[weakref.ref[object]] = []
    for stream_id, h2stream in proto.h2.streams.items():
        refs.append(weakref.ref(h2stream))
        refs.append(weakref.ref(h2stream.state_machine))
        task = proto.streams[stream_id].task  # type: ignore[attr-defined]
        assert task is not None
        refs.append(weakref.ref(task))
    for _ in range(10):  # the tasks, then the flush: bounded, not timed
        if not proto.streams:
            break
        await asyncio.sleep(0)
    assert not proto.streams
    return proto, refs, [s for s in streams if isinstance(s, HTTPStream)]


@pytest.mark.usefixtures("no_gc")
def test_a_finished_streams_objects_are_freed_by_refcount() -> None:
    loop = asyncio.new_event_loop()
    try:
        proto, refs, streams = loop.run_until_complete(_serve_one_batch())
    finally:
        loop.close()
    del streams  # the ASGI streams themselves, which the test held
    # h2's closed streams are gone from the connection at once (not at the next
    # request), what h2 needs of them kept in its bounded _closed_streams.
    assert not proto.h2.streams
    assert len(proto.h2._closed_streams) == 10
    alive = [ref() for ref in refs if ref() is not None]
    assert alive == []


@pytest.mark.usefixtures("no_gc")
def test_a_bodyless_stream_holds_no_body_or_trailer_containers() -> None:
    """A GET waiting for its task holds no empty deque or lists: each would be one
    more object for every collection that runs while many streams wait."""
    loop = asyncio.new_event_loop()
    try:
        _, _, streams = loop.run_until_complete(_serve_one_batch())
    finally:
        loop.close()
    assert len(streams) == 10
    for stream in streams:
        assert stream.chunks is None
        assert stream.trailer_fields is None


def test_requests_leave_no_cyclic_garbage() -> None:
    """What `gc_young_threshold` rests on: serving requests makes no garbage that only a
    collection could free, so the collector has nothing to find between requests."""

    async def serve_batches() -> list[int]:
        server = ServerState(hello_app, Config(), {})
        info = ConnectionInfo("2", "http", ("127.0.0.1", 50000), ("127.0.0.1", 8080))
        proto = H2Protocol(server, info)
        proto.connection_made(h2ceiling._Transport())  # type: ignore[arg-type]
        opening, chunks = h2ceiling.client_bytes(40)
        proto.data_received(opening)
        found = []
        for chunk in chunks:
            gc.collect()
            proto.data_received(chunk)
            for _ in range(10):  # bounded, not timed
                if not proto.streams:
                    break
                await asyncio.sleep(0)
            assert not proto.streams
            await asyncio.sleep(0)  # the flush
            found.append(gc.collect())
        return found

    loop = asyncio.new_event_loop()
    gc.disable()
    try:
        found = loop.run_until_complete(serve_batches())
    finally:
        gc.enable()
        loop.close()
    assert found == [0, 0, 0, 0]


def test_the_serving_process_raises_the_young_threshold() -> None:
    from multiplex.server import pace_collections

    before = gc.get_threshold()
    try:
        pace_collections(Config(gc_young_threshold=12_345))
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
    assert Config().gc_young_threshold == 20_000


# --- a closed connection --------------------------------------------------------------
#
# Over a real socket: the server runs in a thread of this process (tests/conftest.py), so
# `gc.disable()` holds for it too. Once the client has gone and the connection's streams
# have finished, the protocol, its h2 connection and the transport must be freed by
# reference counting alone. An idle connection lives as long as its client wants; a
# closed one left in reference cycles would wait for a collection, rare in a serving
# process (gc_young_threshold), and be promoted by those it survives.


def _h2_connection_objects(running: RunningServer) -> list[weakref.ref[object]]:
    """Weak references to the server's HTTP/2 connection, its h2 state machine and its
    transports (under TLS, the SSL layer's and the socket's below it)."""
    return connection_refs(
        running,
        H2Protocol,
        lambda proto: {proto, proto.h2, proto.transport, proto._socket_transport},
    )


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_a_closed_connection_is_freed_by_refcount(
    run_server: Callable[..., RunningServer], tls_config: dict[str, Any], tls: bool
) -> None:
    running = run_server(apps.hello, **(tls_config if tls else {"h2c": True}))
    gc.collect()  # what starting the server left (the collector is off)
    with RawH2(running.port, tls=_tls_context() if tls else None) as client:
        client.handshake()
        for stream_id in (1, 3, 5):
            client.send_headers(stream_id, request_headers())
            assert client.read_response(stream_id).status == 200
        refs = _h2_connection_objects(running)
    assert settle_until_freed(running, refs) == []
    assert server_garbage() == []


@pytest.mark.usefixtures("no_gc")
def test_a_connection_closed_under_a_running_stream_is_freed_by_refcount(
    run_server: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The stream's task outlives the connection: it answers (Wire verbs after
    connection_lost) and ends only then, and must find the connection usable: what
    its send raises is the client's disconnect, nothing logged as an error."""
    gate = apps.Gate()
    running = run_server(gate, h2c=True)
    gc.collect()
    with RawH2(running.port) as client:
        client.handshake()
        client.send_headers(1, request_headers("/wait"))
        client.send_headers(3, request_headers("/now"))
        assert client.read_response(3).status == 200
        refs = _h2_connection_objects(running)
    running.call(lambda: None)
    assert not running.call(lambda: all(ref() is None for ref in refs))  # the task holds it
    gate.release(running.loop)
    assert settle_until_freed(running, refs) == []
    assert gate.completed == ["/now"]  # /wait's send raised: its client is gone
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert server_garbage() == []
