"""The QUIC endpoint itself: what happens to datagrams for connections it does not know."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import subprocess
import threading
import time
from typing import Any, cast

import httpx
import pytest
from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch

from multiplex.protocols.quic import CreditedQuicConnection
from tests import apps
from tests.conftest import require_tool
from tests.protocols.h3client import H3Client, h3_connect


class Counting:
    """hello, counting the requests served."""

    def __init__(self) -> None:
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await apps.hello(scope, receive, send)
        self.served += 1


def test_stateless_reset_for_a_forgotten_connection(run_server: Any, tls_config: Any) -> None:
    """RFC 9000 section 10.3: a 1-RTT packet for a connection the server no longer has
    (as after a restart) gets a stateless reset, which the client (ngtcp2) recognises
    by the token it was given for that connection ID."""
    gtlsclient = require_tool("gtlsclient")
    app = Counting()
    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)
    port = running.quic_port
    endpoint = running.server.quic_endpoints[0]

    def handshake_done() -> bool:
        return bool(endpoint.connections) and not endpoint.handshaking

    def forget_after_handshake() -> None:
        deadline = time.monotonic() + 20
        while not running.call(handshake_done) and time.monotonic() < deadline:
            time.sleep(0.01)
        running.call(endpoint.connections.clear)

    # The client holds its request back for a second after the handshake; by then the
    # server has forgotten the connection.
    forgetter = threading.Thread(target=forget_after_handshake)
    forgetter.start()
    result = subprocess.run(
        [
            gtlsclient,
            "--exit-on-all-streams-close",
            "-n",
            "2",
            "--delay-stream=1s",
            "--timeout=5s",
            "127.0.0.1",
            str(port),
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    forgetter.join()
    output = result.stdout.decode("latin-1") + result.stderr.decode("latin-1")
    assert app.served == 0
    # ngtcp2 logs the reset it verified ("SR token=...") and stops the connection.
    assert " SR token=" in output, output[-2000:]
    assert "ERR_DRAINING" in output, output[-2000:]


def test_datagrams_for_no_connection_are_dropped(run_server: Any, tls_config: Any) -> None:
    """Junk, short-header packets too short to reset, and non-Initial long headers for
    unknown connections get no answer, and the endpoint goes on serving."""
    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)
    port = running.quic_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for junk in (b"", b"\x00", b"\x40" + b"\x01" * 8, b"\xc0\x00\x00\x00\x01" + b"\x00" * 30):
            sock.sendto(junk, ("127.0.0.1", port))
        try:
            answer = sock.recv(2048)
        except TimeoutError:
            answer = b""
    assert answer == b""
    assert running.call(lambda: len(running.server.quic_endpoints[0].connections)) == 0


def _gtlsclient(*args: str) -> str:
    result = subprocess.run(
        [require_tool("gtlsclient"), "--exit-on-all-streams-close", "--timeout=5s", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode("latin-1")[-2000:]
    return result.stdout.decode("latin-1") + result.stderr.decode("latin-1")


class EarlyDataRecorder:
    """Records, per request, the method and whether it carried `early-data: 1`."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await apps.read_body(receive)
        self.seen.append((scope["method"], (b"early-data", b"1") in scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})


def test_zero_rtt_is_marked_and_unsafe_methods_get_425(
    run_server: Any, tls_config: Any, tmp_path: Any
) -> None:
    """With --quic-0rtt a resuming client's GET in 0-RTT reaches the app marked
    `early-data: 1`; a POST in 0-RTT is answered 425 without reaching the app."""
    app = EarlyDataRecorder()
    running = run_server(app, quic_bind=["127.0.0.1:0"], quic_0rtt=True, **tls_config)
    port = str(running.quic_port)
    url = f"https://localhost:{port}/"
    state = [f"--session-file={tmp_path / 'session'}", f"--tp-file={tmp_path / 'tp'}"]
    _gtlsclient(*state, "127.0.0.1", port, url)  # full handshake: gets a ticket
    early_get = _gtlsclient(*state, "127.0.0.1", port, url)
    assert "0RTT STREAM" in early_get  # the request really went out as early data
    body = tmp_path / "body"
    body.write_bytes(b"payload")
    early_post = _gtlsclient(*state, "-m", "POST", "-d", str(body), "127.0.0.1", port, url)
    assert "0RTT STREAM" in early_post
    assert "[:status: 425]" in early_post
    seen = running.call(lambda: list(app.seen))
    assert seen == [("GET", False), ("GET", True)]


def test_zero_rtt_off_by_default(run_server: Any, tls_config: Any, tmp_path: Any) -> None:
    """Without --quic-0rtt, tickets offer no early data and 0-RTT sent anyway is refused:
    the app never sees a request from early data."""
    app = EarlyDataRecorder()
    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)
    port = str(running.quic_port)
    url = f"https://localhost:{port}/"
    state = [f"--session-file={tmp_path / 'session'}", f"--tp-file={tmp_path / 'tp'}"]
    _gtlsclient(*state, "127.0.0.1", port, url)
    resumed = _gtlsclient(*state, "127.0.0.1", port, url)
    # ngtcp2 tries 0-RTT anyway; the server refuses it, so the request is answered
    # once, from 1-RTT, unmarked.
    assert "[:status: 200]" in resumed
    assert running.call(lambda: list(app.seen)) == [("GET", False), ("GET", False)]


def test_connection_migration(run_server: Any, tls_config: Any) -> None:
    """The client moves to a new local address (and, with --nat-rebinding, keeps its
    connection ID): the endpoint routes by connection ID, validates the new path, and
    both requests are answered on the one connection."""
    running = run_server(apps.big, quic_bind=["127.0.0.1:0"], **tls_config)
    port = str(running.quic_port)
    url = f"https://localhost:{port}/?300000"
    migrated = _gtlsclient(
        "--change-local-addr=50ms",
        "--delay-stream=300ms",
        "--no-http-dump",
        "-n",
        "2",
        "127.0.0.1",
        port,
        url,
    )
    assert "Path validation against path" in migrated, migrated[-3000:]
    assert migrated.count("[:status: 200]") == 2
    # NAT rebinding: same connection ID from a new address, no client-side validation;
    # the server must follow the new address.
    rebound = _gtlsclient(
        "--change-local-addr=50ms",
        "--nat-rebinding",
        "--delay-stream=300ms",
        "-n",
        "2",
        "127.0.0.1",
        port,
        url,
    )
    assert "Changing local address" in rebound
    assert rebound.count("[:status: 200]") == 2


def test_qlog_and_key_log_files(run_server: Any, tls_config: Any, tmp_path: Any) -> None:
    """--quic-qlog-dir writes a qlog per connection; the key log gets the secrets of both
    the TCP (TLS) and the QUIC connection, in NSS key log format."""
    qlog_dir = tmp_path / "qlog"
    keylog = tmp_path / "keys.log"
    running = run_server(
        apps.hello,
        quic_bind=["127.0.0.1:0"],
        quic_qlog_dir=str(qlog_dir),
        keylog_file=str(keylog),
        **tls_config,
    )
    port = str(running.quic_port)
    output = _gtlsclient("127.0.0.1", port, f"https://localhost:{port}/")
    assert "[:status: 200]" in output
    with httpx.Client(verify=False, http2=True) as client:
        assert client.get(f"{running.url}/").text == "hello 2"

    def written() -> str:
        # aioquic creates the file when the connection ends and then writes it, so an
        # empty file only means the write has not finished yet.
        return "".join(path.read_text() for path in qlog_dir.glob("*.qlog"))

    deadline = time.monotonic() + 10
    while '"qlog_version"' not in written() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(qlog_dir.glob("*.qlog")), "no qlog written"
    assert '"qlog_version"' in written()
    labels = {line.split()[0] for line in keylog.read_text().splitlines() if line.strip()}
    # TLS 1.3 secrets: the QUIC connection and the TCP one each log their traffic secrets.
    assert "CLIENT_TRAFFIC_SECRET_0" in labels and "SERVER_HANDSHAKE_TRAFFIC_SECRET" in labels
    assert len(keylog.read_text().splitlines()) >= 8  # two connections' worth


def test_anti_amplification_limit(run_server: Any, tls_config: Any) -> None:
    """RFC 9000 section 8.1: before the client's address is validated, the server sends
    at most three times what it received. A client that sends one Initial and then goes
    silent gets no more than that, however often the server's loss timers fire."""
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)
    port = running.quic_port
    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN))
    client.connect(("127.0.0.1", port), now=time.monotonic())
    sent = 0
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram, _ in client.datagrams_to_send(now=time.monotonic()):
            sock.sendto(datagram, ("127.0.0.1", port))
            sent += len(datagram)
        sock.settimeout(0.25)
        deadline = time.monotonic() + 3.0  # several of the server's PTO periods
        while time.monotonic() < deadline:
            try:
                received += len(sock.recv(65536))
            except TimeoutError:
                continue
    assert sent >= 1200
    assert received > 0, "the server never answered the Initial"
    assert received <= 3 * sent, (sent, received)


class RecordingClient(H3Client):
    """The test client, keeping a copy of every datagram it sends."""

    sent: list[tuple[bytes, Any]]

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.sent = []
        send = transport.sendto

        def recording(data: bytes, addr: Any = None) -> None:
            self.sent.append((data, addr))
            send(data, addr)

        transport.sendto = recording


def test_handshake_state_is_freed_and_late_handshake_packets_are_dropped(
    run_server: Any, tls_config: Any, dev_certs: Any
) -> None:
    """Once the handshake is confirmed, a connection keeps no Initial or Handshake
    crypto buffers or streams and no ephemeral key share (memory per idle connection).
    The client's handshake datagrams, arriving again afterwards (as retransmissions
    would), are dropped by aioquic without harm, and the connection keeps serving."""
    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)
    endpoint = running.server.quic_endpoints[0]

    def server_side() -> list[tuple[set[Epoch], set[Epoch], int, bool]]:
        return [
            (
                set(p.quic._crypto_buffers),
                set(p.quic._crypto_streams),
                len(p.quic.tls._ec_private_keys),
                p.quic.tls._x25519_private_key is None,
            )
            for p in set(endpoint.connections.values())
        ]

    async def scenario() -> list[int]:
        statuses = []
        async with h3_connect(
            running.quic_port, str(dev_certs.ca_cert), protocol=RecordingClient
        ) as client:
            h3 = cast(RecordingClient, client)
            statuses.append((await h3.request("/")).status)
            state = await asyncio.to_thread(running.call, server_side)
            assert state == [({Epoch.ONE_RTT}, {Epoch.ONE_RTT}, 0, True)]
            handshake = [
                (data, addr)
                for data, addr in h3.sent
                if data[0] & 0x80  # long headers
            ]
            assert handshake
            for data, addr in handshake:
                h3._transport.sendto(data, addr)
            statuses.append((await h3.request("/")).status)
            await h3.ping()
            statuses.append((await h3.request("/")).status)
            assert h3.terminated is None
        return statuses

    assert asyncio.run(asyncio.wait_for(scenario(), 30)) == [200, 200, 200]


def test_aioquic_debug_records_still_come_when_debug_is_on(
    run_server: Any, tls_config: Any, dev_certs: Any, caplog: Any
) -> None:
    """The connection's log adapter asks the logger before anything else (a cheaper
    debug() on the hot path): with aioquic's logger at debug level, its records still
    come, with the connection ID prefix; at the default level, none."""
    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)

    async def scenario() -> int:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            return (await client.request("/")).status

    quic_logger = logging.getLogger("quic")
    quic_logger.addHandler(caplog.handler)  # whatever propagation another test left behind
    try:
        with caplog.at_level(logging.INFO, logger="quic"):
            assert asyncio.run(asyncio.wait_for(scenario(), 30)) == 200
        assert not [r for r in caplog.records if r.levelno == logging.DEBUG]
        with caplog.at_level(logging.DEBUG, logger="quic"):
            assert asyncio.run(asyncio.wait_for(scenario(), 30)) == 200
    finally:
        quic_logger.removeHandler(caplog.handler)
    created = [r.getMessage() for r in caplog.records if r.getMessage().endswith("created by peer")]
    assert any(message.startswith("[") and " Stream 0 " in message for message in created)


# --- the STREAM frame writer: ours against aioquic's ---------------------------------------


class _Builder:
    """What _write_stream_frame asks of aioquic's packet builder: the room left in the
    packet, and a buffer per frame (kept, to compare the bytes written)."""

    def __init__(self, room: int) -> None:
        self.remaining_flight_space = room
        self.frames: list[tuple[Any, ...]] = []

    def start_frame(
        self, frame_type: int, capacity: int = 1, handler: Any = None, handler_args: Any = ()
    ) -> Buffer:
        buf = Buffer(capacity=capacity + self.remaining_flight_space + 16)
        self.frames.append((frame_type, capacity, handler.__name__, handler_args, buf))
        return buf


def _sender_states() -> list[QuicStream]:
    """Streams whose sending side is fresh, partly sent, sent whole (not yet found
    empty), found empty, with lost bytes to resend, acknowledged, with a FIN alone to
    send, or reset; stream IDs and offsets of one, two and four varint bytes."""
    streams = []
    for stream_id in (0, 4, 64, 16384):
        for size, fin in ((0, True), (1, False), (60, True), (60, False), (20000, True)):
            fresh = QuicStream(stream_id=stream_id, max_stream_data_remote=1 << 20)
            fresh.sender.write(b"x" * size, end_stream=fin)
            streams.append(fresh)
            part = copy.deepcopy(fresh)
            part.sender.get_frame(size // 2)
            streams.append(part)
            whole = copy.deepcopy(fresh)
            while whole.sender.get_frame(1 << 20) is not None and len(whole.sender._pending):
                pass
            streams.append(whole)
            empty = copy.deepcopy(whole)
            empty.sender.get_frame(1 << 20)
            streams.append(empty)
            if size:
                lost = copy.deepcopy(whole)
                lost.sender.on_data_delivery(QuicDeliveryState.LOST, 0, size // 2, False)
                streams.append(lost)
                acked = copy.deepcopy(whole)
                acked.sender.on_data_delivery(QuicDeliveryState.ACKED, 0, size, fin)
                streams.append(acked)
                fin_alone = QuicStream(stream_id=stream_id, max_stream_data_remote=1 << 20)
                fin_alone.sender.write(b"x" * size)
                fin_alone.sender.get_frame(1 << 20)
                fin_alone.sender.write(b"", end_stream=True)
                streams.append(fin_alone)
            reset = copy.deepcopy(part)
            reset.sender.reset(0x10C)
            streams.append(reset)
    return streams


def _written(write: Any, stream: QuicStream, room: int, max_offset: int) -> tuple[Any, ...]:
    connection = CreditedQuicConnection.__new__(CreditedQuicConnection)
    connection._quic_logger = None
    builder = _Builder(room)
    try:
        outcome: Any = write(connection, builder, None, stream, max_offset)
    except AssertionError as exc:  # aioquic's get_frame() after reset()
        outcome = repr(exc)
    frames = [(*frame[:4], frame[4].data) for frame in builder.frames]
    sender = {
        name: list(value) if isinstance(value, RangeSet) else value
        for name, value in vars(stream.sender).items()
    }
    return outcome, frames, sender


@pytest.mark.parametrize("room_step", [1, 7])
def test_stream_frame_writer_agrees_with_aioquic(
    room_step: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every sender state, room left in the packet (from none to more than the
    data) and flow-control limit: the same return value, frames, bytes and sender
    state (or the same assertion) as aioquic's _write_stream_frame."""
    aioquics = QuicConnection._write_stream_frame
    passed_on = 0

    def counted(*args: Any) -> Any:
        nonlocal passed_on
        passed_on += 1
        return aioquics(*args)

    # Our method's calls of aioquic's (through super()) are counted: the comparison
    # alone would hold even if ours always passed the call on.
    monkeypatch.setattr(QuicConnection, "_write_stream_frame", counted)
    calls = 0
    for stream in _sender_states():
        for room in [*range(0, 24, room_step), 60, 70, 1200, 30000]:
            for max_offset in (1 << 20, 30, stream.sender.highest_offset):
                ours = _written(
                    CreditedQuicConnection._write_stream_frame,
                    copy.deepcopy(stream),
                    room,
                    max_offset,
                )
                calls += 1
                theirs = _written(aioquics, copy.deepcopy(stream), room, max_offset)
                assert ours == theirs, (stream.stream_id, vars(stream.sender), room, max_offset)
    assert 0 < passed_on < calls, (passed_on, calls)  # both roads were taken
