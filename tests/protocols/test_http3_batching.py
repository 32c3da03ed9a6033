"""HTTP/3 output per loop turn, in memory (h3cost's aioquic client against our endpoint):
the responses of apps started in a turn leave in that turn's packets, with its ACK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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
