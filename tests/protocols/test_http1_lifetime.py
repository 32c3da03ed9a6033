"""What a closed HTTP/1.1 connection leaves behind: nothing that only the cyclic
collector could free (see tests/protocols/lifetime.py). httptools' parser holds its
callbacks, bound methods of the protocol; the protocol drops it once done."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

from multiplex.protocols.http1 import HTTP1Protocol
from multiplex.protocols.http2 import H2Protocol
from tests import apps
from tests.conftest import RunningServer, client_socket
from tests.protocols.lifetime import connection_refs, server_garbage, settle_until_freed
from tests.protocols.rawh2 import H2Client, Response
from tests.protocols.test_http1 import read_head, upgrade_request


def _connect(running: RunningServer, tls: bool) -> socket.socket:
    return client_socket(running.port, "http/1.1" if tls else None)


def _parts(proto: HTTP1Protocol) -> set[object]:
    """The protocol and its transports (under TLS, the SSL layer's and the socket's)."""
    return {proto, proto.transport, proto._socket_transport}


def _get(sock: socket.socket, path: str = "/") -> bytes:
    """One keep-alive request; the response's head (the body is read and dropped)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    head, body = read_head(sock)
    (length,) = [
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the end of the body"
        body += chunk
    return head


@pytest.mark.usefixtures("no_gc")
@pytest.mark.parametrize("tls", [False, True], ids=["cleartext", "tls"])
def test_a_closed_connection_is_freed_by_refcount(
    run_server: Callable[..., RunningServer], tls_config: dict[str, Any], tls: bool
) -> None:
    running = run_server(apps.hello, **(tls_config if tls else {}))
    gc.collect()  # what starting the server left (the collector is off)
    with _connect(running, tls) as sock:
        for _ in range(3):
            assert _get(sock).startswith(b"HTTP/1.1 200 ")
        refs = connection_refs(running, HTTP1Protocol, _parts)
    assert settle_until_freed(running, refs) == []
    assert server_garbage() == []


@pytest.mark.usefixtures("no_gc")
def test_a_connection_upgraded_to_h2c_is_freed_by_refcount(
    run_server: Callable[..., RunningServer],
) -> None:
    """After `Upgrade: h2c` the HTTP/1.1 protocol is done, though the transport lives on
    under HTTP/2: no connection_lost comes to it, and it must not wait for a collection
    either; nor, once the client has gone, must the HTTP/2 connection."""
    running = run_server(apps.hello, h2c=True)
    gc.collect()
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    with H2Client(running.port, sock=sock, upgrade_settings=True) as client:
        assert _get(sock).startswith(b"HTTP/1.1 200 ")
        refs = connection_refs(running, HTTP1Protocol, _parts)
        sock.sendall(upgrade_request(client.conn))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        client.flush()  # our connection preface and SETTINGS
        response = client.responses[1] = Response()
        if rest:
            client.feed(rest)
        client.until(lambda: response.done)
        assert response.status == 200
        assert client.get("/second").status == 200  # stream 3, over HTTP/2
        refs += connection_refs(running, H2Protocol, lambda proto: (proto, proto.h2))
        # (the transport is the same: _parts of the HTTP/1.1 protocol had it)
    assert settle_until_freed(running, refs) == []
    # The client's h2 runs in this process: only the server's own types count.
    assert server_garbage(("multiplex.", "asyncio.")) == []


@pytest.mark.usefixtures("no_gc")
def test_a_connection_closed_under_a_running_request_is_freed_by_refcount(
    run_server: Callable[..., RunningServer], caplog: pytest.LogCaptureFixture
) -> None:
    """The request's task outlives the connection: it answers (Wire verbs after
    connection_lost) and ends only then; nothing raises but the disconnect."""
    gate = apps.Gate()
    running = run_server(gate)
    gc.collect()
    with _connect(running, tls=False) as sock:
        assert _get(sock, "/now").startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /wait HTTP/1.1\r\nHost: localhost\r\n\r\n")
        refs = connection_refs(running, HTTP1Protocol, _parts)
        running.call(lambda: None)
    assert settle_until_freed(running, refs, turns=5) != []  # the task holds it
    gate.release(running.loop)
    assert settle_until_freed(running, refs) == []
    assert gate.completed == ["/now"]  # /wait's send raised: its client is gone
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert server_garbage() == []
