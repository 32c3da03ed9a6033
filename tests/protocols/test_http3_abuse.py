"""HTTP/3 abuse over a real QUIC connection, with aioquic's client as the attacker (made
to misbehave where it would not by itself): Rapid Reset, stream-open floods, QPACK
bombs and blocked streams, huge header lists, and a reader that stops acknowledging.
Each one meets its bound, and other connections are served meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests import apps
from tests.conftest import RunningServer
from tests.protocols.h3client import h3_connect
from tests.protocols.test_http3 import (
    RunServer,
    ca,
    quic_server,
    run_async,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)
H3_EXCESSIVE_LOAD = 0x107
STREAM_LIMIT_ERROR = 0x4


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


def test_stop_sending_alone_counts_as_a_reset(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """Rapid Reset with STOP_SENDING only (the client keeps its side of each stream)."""
    running = quic_server(run_server, tls_config, slow, quic_max_resets_per_window=20)

    async def scenario() -> int | None:
        async with h3_connect(running.quic_port, ca(dev_certs)) as abuser:
            for _ in range(60):
                response = abuser.start("/wait")
                abuser.quic.stop_stream(response.stream_id, 0x10C)
                abuser.transmit()
                await asyncio.sleep(0)
            await asyncio.wait_for(abuser.closed, 10)
            return abuser.terminated.error_code if abuser.terminated else None

    assert run_async(scenario()) == H3_EXCESSIVE_LOAD


# --- stream-open floods ---------------------------------------------------------------------


class Hang:
    """An app that ignores its client: it waits for the test's release, not for
    http.disconnect, so a reset does not end it. Counts the apps started."""

    def __init__(self) -> None:
        self.started = 0
        self.event: asyncio.Event | None = None

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        def set_event() -> None:
            if self.event is None:
                self.event = asyncio.Event()
            self.event.set()

        loop.call_soon_threadsafe(set_event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/hang":
            await apps.hello(scope, receive, send)
            return
        self.started += 1
        if self.event is None:
            self.event = asyncio.Event()
        await self.event.wait()
        try:
            await apps.hello(scope, receive, send)
        except Exception:
            pass  # the client is long gone


def app_tasks(running: RunningServer) -> int:
    return int(running.call(lambda: len(running.server.state.tasks)))


def test_streams_past_max_streams_are_a_stream_limit_error(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """A client that ignores MAX_STREAMS and opens one stream more than it may: the
    connection closes with STREAM_LIMIT_ERROR (aioquic enforces the limit we set)."""
    hang = Hang()
    running = quic_server(run_server, tls_config, hang, quic_max_streams=10)

    async def scenario() -> int | None:
        async with h3_connect(running.quic_port, ca(dev_certs)) as abuser:
            assert abuser.quic._remote_max_streams_bidi == 10
            abuser.quic._remote_max_streams_bidi = 1000  # pretend we were allowed more
            for _ in range(11):
                abuser.start("/hang")
            await asyncio.wait_for(abuser.closed, 10)
            return abuser.terminated.error_code if abuser.terminated else None

    try:
        assert run_async(scenario()) == STREAM_LIMIT_ERROR
    finally:
        hang.release(running.loop)


def test_app_tasks_never_exceed_max_streams(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """A client starts 30 requests on a connection allowed 10 streams and resets the
    first 10 at once, against apps that do not stop when reset: a reset stream's slot
    comes back only when its app is done, so the other 20 wait and never more than 10
    apps run. Meanwhile another connection is served; once the apps finish, the queued
    requests all get their turn."""
    hang = Hang()
    limit = 10
    running = quic_server(
        run_server, tls_config, hang, quic_max_streams=limit, quic_max_resets_per_window=1000
    )
    port = running.quic_port

    async def scenario() -> tuple[int, int, int]:
        async with h3_connect(port, ca(dev_certs)) as abuser:
            for i in range(3 * limit):
                response = abuser.start("/hang")
                if i < limit:
                    # Only the streams it may open: aioquic would send RESET_STREAM for
                    # a stream still waiting for MAX_STREAMS (STREAM_LIMIT_ERROR).
                    abuser.reset(response.stream_id)
            await asyncio.to_thread(wait_for, lambda: hang.started >= limit, 20, "10 apps")
            # The client had credit for more only if the server handed back slots: give
            # that every chance to show before counting.
            await asyncio.sleep(0.5)
            started, running_apps = hang.started, app_tasks(running)
            async with h3_connect(port, ca(dev_certs)) as good:
                status = (await good.request("/")).status
            hang.release(running.loop)
            await asyncio.to_thread(wait_for, lambda: hang.started == 3 * limit, 20, "all 30")
        return started, running_apps, status

    started, running_apps, status = run_async(scenario())
    assert (started, running_apps, status) == (limit, limit, 200)


def test_a_client_holding_every_stream_does_not_stop_others(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """One client opens all its streams and keeps them open; four other connections
    are served all the same."""
    hang = Hang()
    running = quic_server(run_server, tls_config, hang, quic_max_streams=10)
    port = running.quic_port

    async def scenario() -> list[int]:
        async with h3_connect(port, ca(dev_certs)) as hog:
            for _ in range(10):
                hog.start("/hang")
            await asyncio.to_thread(wait_for, lambda: hang.started == 10, 20, "10 apps")

            async def one() -> int:
                async with h3_connect(port, ca(dev_certs)) as client:
                    return (await client.request("/")).status

            statuses = list(await asyncio.gather(*(one() for _ in range(4))))
        return statuses

    try:
        assert run_async(scenario()) == [200] * 4
    finally:
        hang.release(running.loop)
