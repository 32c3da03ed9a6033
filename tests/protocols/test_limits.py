"""max_connections: past the cap a new TCP connection is reset at once and a new QUIC
connection is refused (CONNECTION_REFUSED); the connections already open go on, and room
comes back when one closes."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import httpx
import pytest
from aioquic.asyncio.client import connect
from aioquic.quic.packet import QuicErrorCode

from tests import apps
from tests.protocols.h3client import H3Client, client_configuration, h3_connect
from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async

pytestmark = pytest.mark.timeout(60)


def open_count(running: Any) -> int:
    return int(running.call(lambda: len(running.server.state.connections)))


def test_tcp_connections_past_the_cap_are_reset(
    run_server: RunServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "multiplex")
    running = run_server(apps.hello, max_connections=2)
    held = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while open_count(running) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as third:
            third.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            try:
                refused = third.recv(1024) == b""
            except ConnectionResetError:
                refused = True
        assert refused
        # The two open connections are served.
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    assert "max_connections = 2 reached" in caplog.text
    # Room again once they have closed.
    deadline = time.monotonic() + 10
    while open_count(running) >= 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.get(f"{running.url}/", timeout=5).status_code == 200


def test_quic_connection_past_the_cap_is_refused(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """RFC 9000 section 5.2.2: the refused client gets CONNECTION_CLOSE with
    CONNECTION_REFUSED in an Initial packet, and gives up at once (if the Initial were
    dropped, it would wait out the 10 s connect timeout and the test would fail)."""
    running = quic_server(run_server, tls_config, apps.hello, max_connections=1)
    refused: list[H3Client] = []

    class Recorded(H3Client):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            refused.append(self)

    async def scenario() -> tuple[int, int | None, str | None]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as first:
            status = (await first.request("/")).status
            with pytest.raises(ConnectionError):
                manager = connect(
                    "127.0.0.1",
                    running.quic_port,
                    configuration=client_configuration(ca(dev_certs)),
                    create_protocol=Recorded,
                )
                await asyncio.wait_for(manager.__aenter__(), 10)
            terminated = refused[0].terminated
            # The first connection is still served.
            assert (await first.request("/")).status == 200
        if terminated is None:
            return status, None, None
        return status, terminated.error_code, terminated.reason_phrase

    assert run_async(scenario()) == (
        200,
        QuicErrorCode.CONNECTION_REFUSED,
        "max_connections",
    )
