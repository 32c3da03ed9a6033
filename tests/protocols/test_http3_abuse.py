"""HTTP/3 abuse over a real QUIC connection, with aioquic's client as the attacker (made
to misbehave where it would not by itself): Rapid Reset, stream-open floods, QPACK
bombs and blocked streams, huge header lists, and a reader that stops acknowledging.
Each one meets its bound, and other connections are served meanwhile."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aioquic.h3.connection import FrameType, Setting, encode_frame

from multiplex.config import Config
from tests import apps
from tests.conftest import RunningServer
from tests.protocols.h3client import H3Client, Response, client_configuration, h3_connect
from tests.protocols.test_http3 import (
    MiB,
    RunServer,
    Sampler,
    ca,
    quic_server,
    run_async,
    send_buffers,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)
H3_EXCESSIVE_LOAD = 0x107
STREAM_LIMIT_ERROR = 0x4
QPACK_DECOMPRESSION_FAILED = 0x200


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


# --- QPACK and header lists -----------------------------------------------------------------


def qint(value: int, prefix: int, flags: int = 0) -> bytes:
    """A QPACK/HPACK integer with an N-bit prefix (RFC 7541 section 5.1)."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([flags | value])
    out = bytearray([flags | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# A GET / for localhost, from the static table (RFC 9204 appendix A): :method GET (17),
# :scheme https (23), :path / (1), and :authority (0) with a literal value.
STATIC_GET = b"\xd1\xd7\xc1" + b"\x50" + qint(9, 7) + b"localhost"


class DeafEncoder:
    """The client's QPACK encoder, deaf to the server's acknowledgements: the test
    writes its own encoder instructions, which aioquic's encoder would not recognise."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def apply_settings(self, max_table_capacity: int, blocked_streams: int) -> bytes:
        return bytes(self.real.apply_settings(max_table_capacity, blocked_streams))

    def encode(self, stream_id: int, headers: Any) -> tuple[bytes, bytes]:
        return tuple(self.real.encode(stream_id, headers))  # type: ignore[return-value]

    def feed_decoder(self, data: bytes) -> None:
        pass


def raw_request(client: H3Client, block: bytes) -> Response:
    """A request whose HEADERS frame carries `block` as it is."""
    stream_id = client.quic.get_next_available_stream_id()
    response = client.responses[stream_id] = Response(stream_id)
    client.quic.send_stream_data(stream_id, encode_frame(FrameType.HEADERS, block), True)
    client.transmit()
    return response


async def settings_of(client: H3Client) -> dict[int, int]:
    while client.h3.received_settings is None:
        await asyncio.sleep(0.01)
    return dict(client.h3.received_settings)


async def insert_entry(client: H3Client, name: bytes, value: bytes) -> None:
    """Put one entry in the server's QPACK dynamic table (absolute index 0)."""
    await settings_of(client)  # aioquic's own encoder sets its capacity then
    client.h3._encoder = DeafEncoder(client.h3._encoder)
    instructions = (
        qint(4096, 5, 0x20)  # Set Dynamic Table Capacity
        + qint(len(name), 5, 0x40)  # Insert with Literal Name
        + name
        + qint(len(value), 7)
        + value
    )
    encoder_stream = client.h3._local_encoder_stream_id
    assert encoder_stream is not None
    client.quic.send_stream_data(encoder_stream, instructions)
    client.transmit()


def test_qpack_settings_come_from_the_config(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    running = quic_server(
        run_server,
        tls_config,
        apps.hello,
        quic_qpack_max_table_capacity=1024,
        quic_qpack_blocked_streams=3,
        quic_max_field_section_size=20_000,
    )

    async def scenario() -> dict[int, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            return await settings_of(client)

    settings = run_async(scenario())
    assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 1024
    assert settings[Setting.QPACK_BLOCKED_STREAMS] == 3
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 20_000
    defaults = Config()
    assert (defaults.quic_qpack_max_table_capacity, defaults.quic_qpack_blocked_streams) == (
        4096,
        16,
    )


def test_header_list_over_the_limit_gets_431(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """100 KB of header fields get 431 without reaching the app; 60 KB are served (the
    limit is 64 KiB), on the same connection."""
    served: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            served.append(scope["path"])
            await apps.hello(scope, receive, send)

    running = quic_server(run_server, tls_config, app)

    async def scenario() -> tuple[int, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            # 4,000 bytes a field: pylsqpack's encoder takes no field value much longer.
            huge = await client.request("/huge", headers=[(b"x-big", b"a" * 4000)] * 25)
            fine = await client.request("/fine", headers=[(b"x-big", b"a" * 4000)] * 15)
            return huge.status, fine.status

    assert run_async(scenario()) == (431, 200)
    assert served == ["/fine"]


def test_qpack_references_past_the_limit_get_431(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """A 40-byte block of 20 references to one 4 KB dynamic table entry decodes to 80 KB:
    431; the connection goes on."""
    running = quic_server(run_server, tls_config, apps.hello)

    async def scenario() -> tuple[int, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as client:
            await insert_entry(client, b"x-bomb", b"b" * 4000)
            # Required Insert Count 1 (encoded as 2), Base 1; index 0 is relative 0.
            block = b"\x02\x00" + STATIC_GET + b"\x80" * 20
            bomb = await asyncio.wait_for(raw_request(client, block).done, 10)
            after = await client.request("/")
            return bomb.status, after.status

    assert run_async(scenario()) == (431, 200)


def test_qpack_bomb_closes_the_connection_undecoded(
    run_server: RunServer,
    tls_config: dict[str, Any],
    dev_certs: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """200,000 references to a 4 KB entry (a 200 KB block that would decode to 800 MB):
    the connection closes with H3_EXCESSIVE_LOAD before anything is decoded, and
    another connection is served."""
    caplog.set_level(logging.WARNING, "multiplex")
    running = quic_server(run_server, tls_config, apps.hello)

    async def scenario() -> tuple[int | None, int]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as abuser:
            await insert_entry(abuser, b"x-bomb", b"b" * 4000)
            raw_request(abuser, b"\x02\x00" + STATIC_GET + b"\x80" * 200_000)
            await asyncio.wait_for(abuser.closed, 20)
            code = abuser.terminated.error_code if abuser.terminated else None
        async with h3_connect(running.quic_port, ca(dev_certs)) as good:
            status = (await good.request("/")).status
        return code, status

    assert run_async(scenario()) == (H3_EXCESSIVE_LOAD, 200)
    assert "quic_max_field_section_size" in caplog.text


def test_qpack_blocked_streams_are_bounded(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """Header blocks that wait for table entries that never come: as many as
    quic_qpack_blocked_streams may wait, one more closes the connection
    (QPACK_DECOMPRESSION_FAILED)."""
    running = quic_server(run_server, tls_config, apps.hello, quic_qpack_blocked_streams=2)
    blocked = b"\x02\x00" + STATIC_GET + b"\x80"  # needs entry 0, never inserted

    async def scenario() -> tuple[int, int | None]:
        async with h3_connect(running.quic_port, ca(dev_certs)) as abuser:
            await settings_of(abuser)
            for _ in range(2):
                raw_request(abuser, blocked)
            status = (await abuser.request("/")).status  # still fine with two waiting
            raw_request(abuser, blocked)
            await asyncio.wait_for(abuser.closed, 10)
            return status, abuser.terminated.error_code if abuser.terminated else None

    assert run_async(scenario()) == (200, QPACK_DECOMPRESSION_FAILED)


# --- a reader that stops -------------------------------------------------------------------


def test_client_that_stops_acknowledging_holds_back_the_app(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    """The app tries to send 50 MiB in 64 KiB messages to a client with windows large
    enough for all of it, which then reads nothing more (no ACKs): what the server holds
    for the connection stays within quic_send_buffer + one message, and the app waits
    in send() instead of handing over the rest."""
    chunk = 64 * 1024
    total = 50 * MiB
    progress = {"sent": 0, "waiting": False, "done": False}

    async def flood(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        data = b"x" * chunk
        try:
            while progress["sent"] < total:
                progress["waiting"] = True
                await send({"type": "http.response.body", "body": data, "more_body": True})
                progress["waiting"] = False
                progress["sent"] += chunk
        except Exception:
            pass  # the client has gone
        finally:
            progress["done"] = True

    limit = Config().quic_send_buffer
    # Send-ahead as large as the stream's bound, so that it is quic_send_buffer (not the
    # scheduler's connection-wide send-ahead) that holds the bytes back here.
    running = quic_server(run_server, tls_config, flood, quic_send_ahead=limit)
    bound = limit + chunk + 16  # one app message and its DATA frame header

    def connection_buffers() -> list[int]:
        return [sum(send_buffers(running))]

    configuration = client_configuration(ca(dev_certs), max_stream_data=64 * MiB, max_data=64 * MiB)
    with Sampler(connection_buffers) as sampler:

        async def scenario() -> tuple[int, bool, int]:
            async with h3_connect(running.quic_port, configuration=configuration) as client:
                response = client.start("/")
                await asyncio.to_thread(wait_for, lambda: response.received > MiB, 20, "1 MiB")
                client.datagram_received = lambda data, addr: None  # type: ignore[method-assign]
                await asyncio.to_thread(sampler.settle, limit // 2)
                first = progress["sent"]
                await asyncio.sleep(0.5)
                stuck = progress["sent"] == first and progress["waiting"]
                return int(progress["sent"]), stuck, response.received

        sent, stuck, received = run_async(scenario())
    assert stuck, "the app went on sending to a client that acknowledges nothing"
    assert sent - received <= bound, (sent, received)
    assert limit // 2 <= sampler.peak <= bound, sampler.peak
    wait_for(lambda: bool(progress["done"]), 20, "the app to see the client gone")
