"""HTTP/3 abuse over a real QUIC connection from aioquic's client: Rapid Reset (request
streams opened and reset at once) closes the connection with H3_EXCESSIVE_LOAD, and
another connection is served meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests import apps
from tests.protocols.h3client import h3_connect
from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async

pytestmark = pytest.mark.timeout(60)
H3_EXCESSIVE_LOAD = 0x107


async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/wait":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    await apps.hello(scope, receive, send)


def test_rapid_reset_is_h3_excessive_load(
    run_server: RunServer,
    tls_config: dict[str, Any],
    dev_certs: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "multiplex")
    running = quic_server(run_server, tls_config, slow, quic_max_resets_per_window=20)

    async def scenario() -> tuple[int | None, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as abuser:
            for _ in range(60):
                response = abuser.start("/wait")
                abuser.reset(response.stream_id)
                await asyncio.sleep(0)
            await asyncio.wait_for(abuser.closed, 10)
            code = abuser.terminated.error_code if abuser.terminated else None
        async with h3_connect(running.quic_port, ca(dev_certs)) as good:
            status = (await good.request("/")).status
        return code, status

    assert run_async(scenario()) == (H3_EXCESSIVE_LOAD, 200)
    assert "quic_max_resets_per_window = 20" in caplog.text


def test_resets_under_the_limit_are_fine(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    running = quic_server(run_server, tls_config, slow, quic_max_resets_per_window=20)

    async def scenario() -> int:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            for _ in range(5):
                response = client.start("/wait")
                client.reset(response.stream_id)
            return (await client.request("/")).status

    assert run_async(scenario()) == 200


def test_half_open_handshakes_are_forgotten(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """Clients that send their first Initial and then nothing: each connection's state
    goes after quic_handshake_timeout, not after the (longer) idle timeout."""
    import socket
    import time

    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    running = quic_server(run_server, tls_config, slow, quic_handshake_timeout=0.5)
    endpoint = running.server.quic_endpoints[0]

    def half_open() -> int:
        return int(running.call(lambda: len(endpoint.handshaking)))

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(5):
            client = QuicConnection(
                configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
            )
            client.connect(("127.0.0.1", running.quic_port), now=time.monotonic())
            for data, _ in client.datagrams_to_send(now=time.monotonic()):
                udp.sendto(data, ("127.0.0.1", running.quic_port))
        deadline = time.monotonic() + 5
        while half_open() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert half_open() == 5
        deadline = time.monotonic() + 10
        while half_open() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert half_open() == 0
    assert running.call(lambda: len(endpoint.connections)) == 0
