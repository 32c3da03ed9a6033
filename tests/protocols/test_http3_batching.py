"""HTTP/3 output per loop turn, in memory (h3cost's aioquic client against our endpoint):
the responses of apps started in a turn leave in that turn's packets, with its ACK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioquic.tls import Epoch

from interop.benchmarks import h3cost
from interop.benchmarks.apps import HELLO
from multiplex.protocols.http3 import H3Protocol

BATCHES = 20
BATCH = 16


def test_responses_leave_with_the_turns_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client sends each batch of GETs in two datagrams (a QPACK encoder stream
    update, then the requests). Both arrive in one loop turn; the first schedules the
    turn's output before the second's apps have started. Without waiting for those
    apps, the ACK went in a packet of its own and the responses in a second one: two
    datagrams a batch. Now the output waits one callback more, and one datagram takes
    everything (sometimes a second, when the server's delayed ACK comes due)."""
    deferred = 0
    turn_end = H3Protocol._turn_end

    def counted(self: H3Protocol) -> None:
        nonlocal deferred
        deferred += self._apps_behind
        turn_end(self)

    monkeypatch.setattr(H3Protocol, "_turn_end", counted)

    async def main() -> h3cost.Client:
        transport = h3cost.FakeDatagramTransport()
        client = h3cost.Client(h3cost.FACTORIES["multiplex"](transport), transport)
        await client.handshake()
        await client.batch(BATCH)  # the first batch fills the QPACK table
        client.datagrams_in = 0
        client.body = 0
        for _ in range(BATCHES):
            await client.batch(BATCH)
        return client

    client: Any = asyncio.run(main())
    assert client.body == len(HELLO) * BATCH * BATCHES
    assert client.datagrams_in <= 1.5 * BATCHES, client.datagrams_in
    assert deferred >= BATCHES // 2  # the wait for the apps was what did it


def test_a_due_timer_waits_for_the_apps_already_started() -> None:
    """Under load, reading a datagram of many requests can take longer than the ACK
    delay (1 ms), and the loop runs due timers before the callbacks already waiting
    (those apps' first steps). The timer's output waits for the end of the turn, so
    the ACK leaves with the responses instead of in a packet of its own before them."""

    async def main() -> tuple[int, int, int]:
        transport = h3cost.FakeDatagramTransport()
        client = h3cost.Client(h3cost.FACTORIES["multiplex"](transport), transport)
        await client.handshake()
        await client.batch(BATCH)
        protocol = next(iter(transport.endpoint.connections.values()))
        for _ in range(BATCH):
            stream_id = client.quic.get_next_available_stream_id()
            client.h3.send_headers(stream_id, h3cost.REQUEST, end_stream=True)
            client.open.add(stream_id)
        client._flush()  # the requests arrive; their apps wait for the loop
        space = protocol.quic._spaces[Epoch.ONE_RTT]
        assert space.ack_at is not None  # an acknowledgement is owed ...
        space.ack_at = protocol.loop.time()  # ... and comes due now
        protocol._handle_timer()
        sent_by_timer = len(transport.sent)
        for _ in range(5):
            await asyncio.sleep(0)
        sent = len(transport.sent)
        client._absorb()
        return sent_by_timer, sent, len(client.open)

    sent_by_timer, sent, still_open = asyncio.run(main())
    assert sent_by_timer == 0  # not the ACK alone, at once
    assert sent >= 1  # the ACK and the responses, in the turn's output
    assert still_open == 0
