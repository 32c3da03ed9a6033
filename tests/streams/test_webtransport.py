"""WebTransport sessions over HTTP/3 with aioquic's client (tests/protocols/wtclient.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import pytest

from tests.protocols.test_http3 import RunServer, ca, quic_server, run_async
from tests.protocols.wtclient import Session, WTClient, wt_connect

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


class EchoApp:
    """`/echo` accepts and echoes: datagrams back as datagrams, a bidirectional stream's
    bytes back on it (ending when it ends), a unidirectional stream's bytes, upper-cased,
    on a new unidirectional stream. `/deny` refuses with 403. `/open` opens a stream of
    each kind itself. What each session saw is kept for the test."""

    def __init__(self) -> None:
        self.disconnects: list[dict[str, Any]] = []
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "webtransport":
            return
        self.scopes.append(scope)
        assert (await receive())["type"] == "webtransport.connect"
        if scope["path"] == "/deny":
            await send({"type": "webtransport.close", "status": 403})
            return
        await send({"type": "webtransport.accept"})
        if scope["path"] == "/open":
            await send(
                {
                    "type": "webtransport.stream.open",
                    "unidirectional": True,
                    "data": b"uni from server",
                    "end": True,
                }
            )
            opened = await receive()
            assert opened["type"] == "webtransport.stream.opened" and opened["unidirectional"]
            await send({"type": "webtransport.stream.open", "data": b"bidi from server"})
            bidi = await receive()
            await send(
                {
                    "type": "webtransport.stream.send",
                    "stream": bidi["stream"],
                    "data": b"!",
                    "end": True,
                }
            )
        uni: dict[int, bytearray] = {}
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "webtransport.disconnect":
                self.disconnects.append(message)
                return
            if kind == "webtransport.datagram.receive":
                await send({"type": "webtransport.datagram.send", "data": message["data"]})
            elif kind == "webtransport.stream.receive":
                stream = message["stream"]
                if stream % 4 == 2:  # the client's unidirectional stream
                    uni.setdefault(stream, bytearray()).extend(message["data"])
                    if message["end"]:
                        data = bytes(uni.pop(stream)).upper()
                        await send(
                            {
                                "type": "webtransport.stream.open",
                                "unidirectional": True,
                                "data": data,
                                "end": True,
                            }
                        )
                else:
                    await send(
                        {
                            "type": "webtransport.stream.send",
                            "stream": stream,
                            "data": message["data"],
                            "end": message["end"],
                        }
                    )


@pytest.fixture
def server(run_server: RunServer, tls_config: dict[str, Any]) -> tuple[Any, EchoApp]:
    app = EchoApp()
    running = quic_server(run_server, tls_config, app, webtransport=True)
    return running, app


def scenario(running: Any, dev_certs: Any, steps: Any) -> Any:
    async def run() -> Any:
        async with wt_connect(running.quic_port, ca(dev_certs)) as client:
            return await steps(client)

    return run_async(run(), timeout=80)


def test_session_accepted_and_datagram_echoed(server: Any, dev_certs: Any) -> None:
    running, app = server

    async def steps(client: WTClient) -> Session:
        session = await client.session("/echo?x=1")
        client.datagram(session, b"ping")
        await session.until(lambda: session.datagrams)
        return session

    session = scenario(running, dev_certs, steps)
    assert session.status == 200
    assert session.datagrams == [b"ping"]
    scope = app.scopes[0]
    assert (scope["type"], scope["path"], scope["query_string"], scope["http_version"]) == (
        "webtransport",
        "/echo",
        b"x=1",
        "3",
    )
    assert "tls" in scope["extensions"]


def test_session_denied_with_403(server: Any, dev_certs: Any) -> None:
    running, _ = server

    async def steps(client: WTClient) -> Session:
        return await client.session("/deny")

    session = scenario(running, dev_certs, steps)
    assert session.status == 403
    assert session.connect_ended


def test_bidirectional_stream_echoes_one_mib(server: Any, dev_certs: Any) -> None:
    running, _ = server
    data = os.urandom(MiB)

    async def steps(client: WTClient) -> bytes:
        session = await client.session("/echo")
        stream = client.open_stream(session)
        for i in range(0, len(data), 64 * 1024):
            client.send(stream, data[i : i + 64 * 1024], end=i + 64 * 1024 >= len(data))
            await asyncio.sleep(0)
        await session.until(lambda: stream in session.ended)
        return bytes(session.streams[stream])

    echoed = scenario(running, dev_certs, steps)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


def test_unidirectional_streams_both_ways(server: Any, dev_certs: Any) -> None:
    running, _ = server

    async def steps(client: WTClient) -> list[bytes]:
        session = await client.session("/echo")
        stream = client.open_stream(session, unidirectional=True)
        client.send(stream, b"hello from the client", end=True)
        await session.until(lambda: len(session.ended) == 1)
        (back,) = session.ended
        assert back % 4 == 3  # a server-initiated unidirectional stream
        return [bytes(session.streams[back])]

    assert scenario(running, dev_certs, steps) == [b"HELLO FROM THE CLIENT"]


def test_server_opened_streams(server: Any, dev_certs: Any) -> None:
    running, _ = server

    async def steps(client: WTClient) -> dict[int, bytes]:
        session = await client.session("/open")
        await session.until(lambda: len(session.ended) == 2)
        return {stream: bytes(data) for stream, data in session.streams.items()}

    streams = scenario(running, dev_certs, steps)
    assert sorted(streams.values()) == [b"bidi from server!", b"uni from server"]
    kinds = {stream % 4 for stream in streams}
    assert kinds == {1, 3}  # one server bidirectional, one server unidirectional


def test_hundred_concurrent_streams_in_one_session(server: Any, dev_certs: Any) -> None:
    running, _ = server

    async def steps(client: WTClient) -> dict[int, bytes]:
        session = await client.session("/echo")
        streams = [client.open_stream(session) for _ in range(100)]
        for n, stream in enumerate(streams):
            client.send(stream, f"stream {n}".encode() * 100, end=True)
        await session.until(lambda: len(session.ended) == 100)
        return {n: bytes(session.streams[s]) for n, s in enumerate(streams)}

    echoed = scenario(running, dev_certs, steps)
    assert echoed == {n: f"stream {n}".encode() * 100 for n in range(100)}


def test_two_sessions_on_one_connection_are_kept_apart(server: Any, dev_certs: Any) -> None:
    running, _ = server

    async def steps(client: WTClient) -> tuple[Session, Session]:
        first = await client.session("/echo")
        second = await client.session("/echo")
        client.datagram(first, b"one")
        client.datagram(second, b"two")
        a = client.open_stream(first)
        b = client.open_stream(second)
        client.send(a, b"to first", end=True)
        client.send(b, b"to second", end=True)
        await first.until(lambda: first.datagrams and a in first.ended)
        await second.until(lambda: second.datagrams and b in second.ended)
        return first, second

    first, second = scenario(running, dev_certs, steps)
    assert first.datagrams == [b"one"] and second.datagrams == [b"two"]
    assert list(first.streams.values()) == [bytearray(b"to first")]
    assert list(second.streams.values()) == [bytearray(b"to second")]


def test_client_closing_mid_stream_ends_the_session_once(server: Any, dev_certs: Any) -> None:
    running, app = server

    async def steps(client: WTClient) -> None:
        session = await client.session("/echo")
        stream = client.open_stream(session)
        client.send(stream, b"half of a message")  # not ended
        await session.until(lambda: stream in session.streams)
        client.close_session(session, 7, b"bye")
        for _ in range(200):
            if app.disconnects:
                break
            await asyncio.sleep(0.01)

    scenario(running, dev_certs, steps)
    assert app.disconnects == [{"type": "webtransport.disconnect", "code": 7, "reason": "bye"}]


def test_webtransport_off_by_default(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    app = EchoApp()
    running = quic_server(run_server, tls_config, app)

    async def steps(client: WTClient) -> Session:
        return await client.session("/echo")

    session = scenario(running, dev_certs, steps)
    assert session.status == 501
    assert app.scopes == []


def test_datagram_flood_is_dropped_and_counted(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """An app that does not read: at most webtransport_max_datagrams wait for it; the
    rest are dropped and counted, never queued."""

    async def deaf(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "webtransport.accept"})
        await asyncio.sleep(60)  # reads nothing more

    running = quic_server(
        run_server, tls_config, deaf, webtransport=True, webtransport_max_datagrams=8
    )

    def counters() -> list[tuple[int, int]]:
        protocols = {p for e in running.server.quic_endpoints for p in e.connections.values()}
        return [
            (s.datagrams_queued, s.datagrams_dropped)
            for p in protocols
            for s in p._wt_sessions.values()
        ]

    async def steps(client: WTClient) -> list[tuple[int, int]]:
        session = await client.session("/flood")
        for _ in range(20):
            for _ in range(100):
                client.h3.send_datagram(session.session_id, b"x" * 100)
            client.transmit()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        return counters()

    ((queued, dropped),) = scenario(running, dev_certs, steps)
    assert queued == 8
    assert dropped > 500, dropped  # of 2,000 sent (loopback UDP may lose a few itself)


def test_reset_of_the_connect_stream_ends_the_session(server: Any, dev_certs: Any) -> None:
    running, app = server

    async def steps(client: WTClient) -> None:
        session = await client.session("/echo")
        client._quic.reset_stream(session.session_id, 0x10C)
        client._quic.stop_stream(session.session_id, 0x10C)
        client.transmit()
        for _ in range(200):
            if app.disconnects:
                break
            await asyncio.sleep(0.01)

    scenario(running, dev_certs, steps)
    assert len(app.disconnects) == 1, app.disconnects


def test_lost_connection_ends_every_session_once(server: Any, dev_certs: Any) -> None:
    running, app = server

    async def steps(client: WTClient) -> None:
        await client.session("/echo")
        await client.session("/echo")

    scenario(running, dev_certs, steps)  # leaving the block closes the QUIC connection
    for _ in range(200):
        if len(app.disconnects) >= 2:
            break
        time.sleep(0.01)
    assert len(app.disconnects) == 2, app.disconnects


def test_sessions_per_connection_are_limited(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    app = EchoApp()
    running = quic_server(
        run_server, tls_config, app, webtransport=True, webtransport_max_sessions=2
    )

    async def steps(client: WTClient) -> list[int]:
        return [(await client.session("/echo")).status for _ in range(3)]

    assert scenario(running, dev_certs, steps) == [200, 200, 429]


def test_oversized_datagram_raises_in_the_app(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    errors: list[str] = []

    async def big(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "webtransport.accept"})
        try:
            await send({"type": "webtransport.datagram.send", "data": b"x" * 5000})
        except ValueError as exc:
            errors.append(str(exc))
        await send({"type": "webtransport.datagram.send", "data": b"small"})
        await receive()

    running = quic_server(run_server, tls_config, big, webtransport=True)

    async def steps(client: WTClient) -> list[bytes]:
        session = await client.session("/big")
        await session.until(lambda: session.datagrams)
        return session.datagrams

    assert scenario(running, dev_certs, steps) == [b"small"]
    assert len(errors) == 1 and "do not fit in one QUIC packet" in errors[0]


def test_stream_data_the_app_does_not_read_stays_within_the_window(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    window = 256 * 1024

    async def deaf(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "webtransport.accept"})
        await asyncio.sleep(60)  # reads nothing more

    running = quic_server(
        run_server, tls_config, deaf, webtransport=True, quic_max_stream_data=window
    )

    def unread() -> int:
        protocols = {p for e in running.server.quic_endpoints for p in e.connections.values()}
        return max((n for p in protocols for s, n in p.unread.items() if s % 4 == 0), default=0)

    async def steps(client: WTClient) -> int:
        session = await client.session("/deaf")
        stream = client.open_stream(session)
        for _ in range(64):  # 4 MiB offered; the server's credit stops it long before
            client.send(stream, b"z" * 65536)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        return int(running.call(unread))

    held = scenario(running, dev_certs, steps)
    assert window // 2 <= held <= window, held
