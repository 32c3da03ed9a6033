"""The benchmark's lean WebSocket client counts only right, complete echoes: it fails on a
changed, lost or extra echo, and answers the server's pings along the way. No timing is
asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from interop.benchmarks import apps, ws_client
from tests.conftest import RunningServer

Start = Callable[..., RunningServer]


def _run(server: RunningServer, connections: int, window: int, n: int = 0, dur: float = 0.0) -> int:
    url = f"ws://127.0.0.1:{server.port}/"
    run = ws_client.run(url, connections, window, n, dur, 32, stall=2.0)
    rate, total, _cores = asyncio.run(run)
    assert rate > 0
    return total


class _Faulty:
    """The benchmark's echo, except that the `at`-th message (counted over the server)
    is changed, dropped or sent twice."""

    def __init__(self, fault: str, at: int = 37) -> None:
        self.fault = fault
        self.at = at
        self.seen = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            self.seen += 1
            text = message["text"]
            if self.seen == self.at:
                if self.fault == "drop":
                    continue
                if self.fault == "change":
                    text = text[:-1] + "y"
                if self.fault == "twice":
                    await send({"type": "websocket.send", "text": text})
            await send({"type": "websocket.send", "text": text})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", [1, 16])
def test_counts_every_echo(run_server: Start, window: int) -> None:
    server = run_server(apps.app)
    assert _run(server, 3, window, n=300) == 900


@pytest.mark.timeout(60)
def test_time_bound_run_answers_pings(run_server: Start) -> None:
    """A run for a time, during which the server pings (the frame parser's road)."""
    server = run_server(apps.app, ws_ping_interval=0.05)
    assert _run(server, 2, 4, dur=0.5) > 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["change", "drop", "twice"])
@pytest.mark.parametrize("window", [1, 16])
def test_fails_on_a_wrong_echo(run_server: Start, fault: str, window: int) -> None:
    server = run_server(_Faulty(fault))
    with pytest.raises(ws_client.EchoError):
        _run(server, 1, window, n=200)
