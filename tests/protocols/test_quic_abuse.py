"""QUIC-level abuse of the endpoint: a flood of Initials from many addresses turns Retry
on once quic_retry_threshold handshakes are under way, and a Retry costs the server
no connection state. (Anti-amplification and half-open handshakes are tested in
test_quic.py and test_http3_abuse.py.)"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from tests import apps
from tests.protocols.h3client import h3_connect
from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async

pytestmark = pytest.mark.timeout(60)

# RFC 9000 section 17.2: the long header's type bits, in QUIC version 1.
INITIAL = 0
RETRY = 3


def first_answer_type(port: int) -> int:
    """Send one client's first Initial from a fresh UDP port, then nothing more; the
    long-header packet type of the first datagram that comes back."""
    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN))
    client.connect(("127.0.0.1", port), now=time.monotonic())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        for data, _ in client.datagrams_to_send(now=time.monotonic()):
            udp.sendto(data, ("127.0.0.1", port))
        answer = udp.recv(65536)
    assert answer[0] & 0x80, "not a long header"
    return (answer[0] & 0x30) >> 4


def test_initial_flood_turns_retry_on(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """With quic_retry_threshold = 3 (and quic_retry off): the first three clients get
    the handshake (an Initial), the next seven only a Retry, and the server keeps state
    for the three alone. A real client then passes the Retry and is served."""
    threshold = 3
    running = quic_server(run_server, tls_config, apps.hello, quic_retry_threshold=threshold)
    port = running.quic_port
    endpoint = running.server.quic_endpoints[0]

    answers = [first_answer_type(port) for _ in range(10)]
    assert answers == [INITIAL] * threshold + [RETRY] * (10 - threshold)

    def state() -> tuple[int, int]:
        return len(endpoint.handshaking), len(set(endpoint.connections.values()))

    assert running.call(state) == (threshold, threshold)

    async def scenario() -> tuple[int, int]:
        async with h3_connect(port, ca(dev_certs)) as client:
            return client.retry_count, (await client.request("/")).status

    assert run_async(scenario()) == (1, 200)


def test_no_retry_under_the_threshold(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """Below the threshold nobody pays the Retry round trip."""
    running = quic_server(run_server, tls_config, apps.hello, quic_retry_threshold=3)
    port = running.quic_port
    assert [first_answer_type(port) for _ in range(2)] == [INITIAL, INITIAL]

    async def scenario() -> tuple[int, int]:
        async with h3_connect(port, ca(dev_certs)) as client:
            return client.retry_count, (await client.request("/")).status

    assert run_async(scenario()) == (0, 200)
