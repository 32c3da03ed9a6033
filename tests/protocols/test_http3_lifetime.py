"""What a closed HTTP/3 connection leaves behind: nothing that only the cyclic collector
could free (see tests/protocols/lifetime.py). aioquic builds reference cycles into every
connection (bound-method callbacks); CreditedQuicConnection.release breaks them once
the connection is finished."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from multiplex.protocols.http3 import H3Protocol
from tests import apps
from tests.conftest import RunningServer
from tests.protocols.h3client import h3_connect
from tests.protocols.lifetime import connection_refs, server_garbage, settle_until_freed


def _parts(proto: H3Protocol) -> tuple[object, ...]:
    return (proto, proto.quic, proto.quic.tls, proto.h3)


@pytest.mark.usefixtures("no_gc")
def test_a_closed_connection_is_freed_by_refcount(
    run_server: Callable[..., RunningServer], tls_config: dict[str, Any], dev_certs: Any
) -> None:
    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)
    gc.collect()  # what starting the server left (the collector is off)

    async def talk() -> list[Any]:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            for _ in range(3):
                assert (await client.request("/")).status == 200
            return connection_refs(running, H3Protocol, _parts)

    refs = asyncio.run(asyncio.wait_for(talk(), 30))
    # The client's CONNECTION_CLOSE, then the server's draining period (RFC 9000
    # section 10.2.2), then ConnectionTerminated.
    assert settle_until_freed(running, refs) == []
    # The client (aioquic too) runs in this process: only the server's types count.
    assert server_garbage(("multiplex.",)) == []


@pytest.mark.usefixtures("no_gc")
def test_a_connection_closed_under_a_running_stream_is_freed_by_refcount(
    run_server: Callable[..., RunningServer],
    tls_config: dict[str, Any],
    dev_certs: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stream's task outlives the connection and answers after it has ended
    (Wire verbs on a released connection): nothing raises but the disconnect."""
    gate = apps.Gate()
    running = run_server(gate, quic_bind=["127.0.0.1:0"], **tls_config)
    gc.collect()

    async def talk() -> list[Any]:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            client.start("/wait")
            assert (await client.request("/now")).status == 200
            return connection_refs(running, H3Protocol, _parts)

    refs = asyncio.run(asyncio.wait_for(talk(), 30))

    def ended() -> bool:
        state = running.server.state
        assert state is not None
        return not [c for c in state.connections if isinstance(c, H3Protocol)]

    for _ in range(500):  # the draining period (bounded, not timed)
        if running.call(ended):
            break
        threading.Event().wait(0.01)
    assert running.call(ended)
    assert settle_until_freed(running, refs, turns=1) != []  # the task holds it
    gate.release(running.loop)
    assert settle_until_freed(running, refs) == []
    assert gate.completed == ["/now"]  # /wait's send raised: its client is gone
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert server_garbage(("multiplex.",)) == []
