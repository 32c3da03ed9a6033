"""HTTP/2 abuse classes (issue 6), each performed with raw frames over a real socket.

Every test asserts the code the abusive connection gets (GOAWAY ENHANCE_YOUR_CALM) and
that a well-behaved connection to the same server is served meanwhile. Limits are made
small through config overrides; nothing here asserts on timing.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import hpack
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, PingFrame, RstStreamFrame

from multiplex.protocols.http2 import H2Protocol
from tests.conftest import RunningServer
from tests.protocols.h2raw import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    HEADER_TABLE_SIZE,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    PING,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    RawH2,
    raw_frame,
    request_headers,
    settings_payload,
)

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., RunningServer]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/wait` reads its request and then waits for the disconnect; anything else is
    answered `ok` at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/wait":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def serve(run_server: Serve) -> Serve:
    def start(**overrides: Any) -> RunningServer:
        overrides.setdefault("h2c", True)
        overrides.setdefault("graceful_timeout", 2.0)
        return run_server(app, **overrides)

    return start


def assert_served(running: RunningServer) -> None:
    """A well-behaved client on a new connection gets its response."""
    with RawH2(running.port) as good:
        good.handshake()
        good.send_headers(1, request_headers("/"))
        response = good.read_response(1)
    assert (response.status, response.body) == (200, b"ok")


def assert_calmed(
    conn: RawH2, caplog: pytest.LogCaptureFixture, limit: str, running: RunningServer
) -> None:
    outcome = conn.read_until_error()
    assert (outcome.kind, outcome.error_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
    assert conn.read_until_closed() == [] or conn.eof
    assert_served(running)
    lines = [r for r in caplog.records if r.name == "multiplex" and limit in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "127.0.0.1:" in lines[0].getMessage()


def test_rapid_reset_is_enhance_your_calm(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """CVE-2023-44487: streams opened and reset at once by the client."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_resets_per_window=10)
    with RawH2(running.port) as conn:
        conn.handshake()
        out = b""
        for stream_id in range(1, 2 * 50, 2):
            out += raw_frame(
                HEADERS, END_STREAM | END_HEADERS, stream_id, conn.encode(request_headers("/wait"))
            )
            out += raw_frame(RST_STREAM, 0, stream_id, struct.pack(">L", CANCEL))
        conn.send(out)
        assert_calmed(conn, caplog, "h2_max_resets_per_window", running)


def test_resets_under_the_limit_are_served(serve: Serve) -> None:
    running = serve(h2_max_resets_per_window=10)
    with RawH2(running.port) as conn:
        conn.handshake()
        for stream_id in range(1, 2 * 5, 2):
            conn.send_headers(stream_id, request_headers("/wait"))
            conn.send_frame(RST_STREAM, 0, stream_id, struct.pack(">L", CANCEL))
        conn.send_headers(11, request_headers("/"))
        assert conn.read_response(11).status == 200


def test_made_you_reset_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2025-8671: the client makes the server reset streams (DATA on a stream it
    half-closed gets RST_STREAM STREAM_CLOSED); those resets count too."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_resets_per_window=10)
    with RawH2(running.port) as conn:
        conn.handshake()
        resets = 0
        outcome = None
        for stream_id in range(1, 2 * 50, 2):
            try:
                conn.send_headers(stream_id, request_headers("/wait"))  # half-closed (remote)
                conn.send_data(stream_id, b"late")
            except OSError:
                pass  # closed by now: the GOAWAY is waiting to be read
            outcome = conn.read_until_error(stream_id)
            if outcome.kind != "rst_stream":
                break
            assert outcome.error_code == STREAM_CLOSED
            resets += 1
        assert outcome is not None
        assert (outcome.kind, outcome.error_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
        assert resets <= 11  # the one that went over may be flushed before the GOAWAY
    assert_served(running)
    assert any("h2_max_resets_per_window" in r.getMessage() for r in caplog.records)


def test_continuation_flood_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2024-27316: a header block that never ends, in many CONTINUATION frames."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_continuation_frames=8)
    with RawH2(running.port) as conn:
        conn.handshake()
        block = conn.encode(request_headers("/", extra=[(b"x-filler", b"a" * 200)]))
        out = raw_frame(HEADERS, END_STREAM, 1, block[:10])
        out += b"".join(raw_frame(CONTINUATION, 0, 1, b"") for _ in range(100))
        conn.send(out)
        assert_calmed(conn, caplog, "h2_max_continuation_frames", running)


def test_header_block_size_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_header_block_size=4096)
    with RawH2(running.port) as conn:
        conn.handshake()
        block = conn.encode(request_headers("/", extra=[(b"x-filler", b"a" * 8000)]))
        out = raw_frame(HEADERS, END_STREAM, 1, block[:2000])
        out += raw_frame(CONTINUATION, 0, 1, block[2000:4000])
        out += raw_frame(CONTINUATION, END_HEADERS, 1, block[4000:])
        conn.send(out)
        assert_calmed(conn, caplog, "h2_max_header_block_size", running)


def test_header_block_in_continuations_under_the_limits_is_served(serve: Serve) -> None:
    running = serve(h2_max_continuation_frames=8, h2_max_header_block_size=4096)
    with RawH2(running.port) as conn:
        conn.handshake()
        block = conn.encode(request_headers("/", extra=[(b"x-filler", b"a" * 1000)]))
        parts = [block[i : i + 200] for i in range(0, len(block), 200)]
        assert 2 < len(parts) <= 9
        out = raw_frame(HEADERS, END_STREAM, 1, parts[0])
        for i, part in enumerate(parts[1:], 2):
            out += raw_frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, 1, part)
        # Split mid-header, to exercise the frame scan across reads.
        conn.send(out[:5])
        conn.send(out[5:])
        response = conn.read_response(1)
    assert (response.status, response.body) == (200, b"ok")


@pytest.mark.parametrize("kind", ["PING", "SETTINGS"])
def test_control_frame_flood_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """CVE-2019-9512 (ping flood) and CVE-2019-9515 (settings flood)."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_control_frames_per_window=20)
    with RawH2(running.port) as conn:
        conn.handshake()
        if kind == "PING":
            frame = raw_frame(PING, 0, 0, b"12345678")
        else:
            frame = raw_frame(SETTINGS, 0, 0, settings_payload({0x4: 65535}))
        conn.send(frame * 100)
        assert_calmed(conn, caplog, "h2_max_control_frames_per_window", running)


def test_empty_data_frame_flood_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2019-9518: DATA frames without payload nor END_STREAM."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_empty_frames_per_window=20)
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/wait", method="POST"), end_stream=False)
        conn.send(raw_frame(DATA, 0, 1, b"") * 100)
        assert_calmed(conn, caplog, "h2_max_empty_frames_per_window", running)


def _buffered(running: RunningServer) -> int:
    assert running.server.state is not None
    state = running.server.state
    return int(
        running.call(
            lambda: max(
                (
                    c.transport.get_write_buffer_size()
                    for c in state.connections
                    if isinstance(c, H2Protocol)
                ),
                default=0,
            )
        )
    )


def test_peer_that_does_not_read_is_not_read_either(serve: Serve) -> None:
    """CVE-2019-9512/9517 (internal data buffering): a peer sends PINGs and never reads
    the ACKs. Once our write buffer is over its high-water mark we stop reading it, so
    what we queue for it stays bounded."""
    running = serve(h2_max_control_frames_per_window=10**9)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.settimeout(2.0)
    try:
        sock.sendall(PREFACE + raw_frame(SETTINGS, 0, 0) + raw_frame(SETTINGS, ACK, 0))
        chunk = raw_frame(PING, 0, 0, b"12345678") * 4096
        sent = 0
        try:
            while sent < 16 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except TimeoutError:
            pass  # the server stopped reading us: what we expect
        assert _buffered(running) < 1024 * 1024
        assert_served(running)
    finally:
        sock.close()


def test_zero_window_stall_resets_the_stream(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that opens a stream with a zero window and never opens it: after
    `send_stall_timeout` the stream gets RST_STREAM CANCEL, the connection lives on."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(send_stall_timeout=0.3)
    with RawH2(running.port) as conn:
        conn.handshake({INITIAL_WINDOW_SIZE: 0})
        conn.send_headers(1, request_headers("/"))
        assert_served(running)
        outcome = conn.read_until_error(1)
        assert (outcome.kind, outcome.error_code, outcome.stream_id) == ("rst_stream", CANCEL, 1)
        conn.ping()
        conn.read_ping_ack()  # the connection itself is still served
    lines = [r.getMessage() for r in caplog.records if "send_stall_timeout" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines


PRIORITY_FRAME, WINDOW_UPDATE_FRAME = 0x2, 0x8
FLOW_CONTROL_ERROR, PROTOCOL_ERROR = 0x3, 0x1


def test_priority_frame_flood_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2019-9513 (resource loop): RFC 7540 PRIORITY frames reshuffling a tree. We
    ignore the tree, but each frame costs work: they count as control frames."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_control_frames_per_window=20)
    with RawH2(running.port) as conn:
        conn.handshake()
        out = b""
        for n in range(100):
            # Stream 1 + 2n depends on stream 3 + 2n, weight 16: a churning tree.
            out += raw_frame(PRIORITY_FRAME, 0, 1 + 2 * n, struct.pack(">LB", 3 + 2 * n, 15))
        conn.send(out)
        assert_calmed(conn, caplog, "h2_max_control_frames_per_window", running)


def test_connection_window_overflow_is_flow_control_error(serve: Serve) -> None:
    """RFC 9113 section 6.9.1: a window above 2^31-1 is a connection error."""
    running = serve()
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_frame(WINDOW_UPDATE_FRAME, 0, 0, struct.pack(">L", 2**31 - 1))
        outcome = conn.read_until_error()
    assert (outcome.kind, outcome.error_code) == ("goaway", FLOW_CONTROL_ERROR), outcome
    assert_served(running)


def test_stream_window_overflow_is_flow_control_error(serve: Serve) -> None:
    running = serve()
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/wait", method="POST"), end_stream=False)
        conn.send_frame(WINDOW_UPDATE_FRAME, 0, 1, struct.pack(">L", 2**31 - 1))
        outcome = conn.read_until_error(1)
    assert outcome.kind in ("rst_stream", "goaway"), outcome
    assert outcome.error_code == FLOW_CONTROL_ERROR, outcome
    assert_served(running)


def test_hpack_bomb_is_bounded(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """An HPACK bomb: one 4 KiB entry put in the dynamic table, then referenced by one
    byte a thousand times, decoding to 4 MiB of fields from a 1 KiB block. The decoded
    size meets h2_max_header_list_size: the connection ends (ENHANCE_YOUR_CALM) before
    the fields are all built, and others are served."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_header_list_size=64 * 1024)
    with RawH2(running.port) as conn:
        conn.handshake()
        # Literal with incremental indexing, new name (0x40), 7-bit lengths with the
        # Huffman bit clear; then indexed field 62 (the newest dynamic entry) again
        # and again.
        name, value = b"x-bomb", b"v" * 4000
        literal = b"\x40" + bytes([len(name)]) + name + b"\x7f" + _hpack_int(len(value) - 127)
        block = conn.encoder.encode(request_headers("/")) + literal + value + b"\xbe" * 1000
        conn.send_frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
        outcome = conn.read_until_error()
    # hpack stops decoding at the limit and h2 calls it a denial of service.
    assert (outcome.kind, outcome.error_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
    assert not [f for f in outcome.frames if f.stream_id == 1]  # nothing reached the app
    assert_served(running)
    lines = [r.getMessage() for r in caplog.records if "larger than 65536" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines


def _hpack_int(rest: int) -> bytes:
    """The continuation bytes of an HPACK integer whose prefix was full (RFC 7541 5.1)."""
    out = b""
    while rest >= 128:
        out += bytes([(rest % 128) + 128])
        rest //= 128
    return out + bytes([rest])


def test_empty_header_block_flood_is_bounded(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2019-9516 (0-length headers leak): header blocks of empty fields. An empty
    name is malformed: the first such block ends the connection."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve()
    with RawH2(running.port) as conn:
        conn.handshake()
        out = b""
        for stream_id in range(1, 200, 2):
            block = conn.encode([*request_headers("/"), (b"", b"")])
            out += raw_frame(HEADERS, END_STREAM | END_HEADERS, stream_id, block)
        conn.send(out)
        outcome = conn.read_until_error()
    assert (outcome.kind, outcome.error_code) == ("goaway", PROTOCOL_ERROR), outcome
    assert_served(running)


def test_priority_inside_request_headers_is_not_counted(serve: Serve) -> None:
    """Clients such as nghttp put RFC 7540 priority in every request's HEADERS frame
    (flag PRIORITY): that is no flood, and must not count as a control frame."""
    running = serve(h2_max_control_frames_per_window=20)
    with RawH2(running.port) as conn:
        conn.handshake()
        for stream_id in range(1, 100, 2):
            block = struct.pack(">LB", 0, 15) + conn.encode(request_headers("/"))
            conn.send_frame(HEADERS, END_STREAM | END_HEADERS | 0x20, stream_id, block)
            assert conn.read_response(stream_id).status == 200


async def big_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"d" * 100_000})


def test_data_dribble_is_enhance_your_calm(
    run_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2019-9511: a window of one byte, grown one byte at a time, makes the server
    frame the body a byte per DATA frame; past h2_max_tiny_frames_per_window, calm."""
    caplog.set_level(logging.INFO, "multiplex")
    running = run_server(big_body, h2c=True, h2_max_tiny_frames_per_window=50)
    with RawH2(running.port) as conn:
        conn.handshake({INITIAL_WINDOW_SIZE: 1})
        conn.send_headers(1, request_headers("/"))
        frame = conn.read_frame()
        while frame is not None and not isinstance(frame, DataFrame):
            frame = conn.read_frame()  # the first byte, which the initial window allows
        for _ in range(100):
            # One byte more, then wait for the one-byte frame it buys (updates sent
            # together would add up to one bigger window).
            conn.send_frame(WINDOW_UPDATE_FRAME, 0, 1, struct.pack(">L", 1))
            frame = conn.read_frame()
            while frame is not None and not isinstance(frame, (DataFrame, GoAwayFrame)):
                frame = conn.read_frame()
            if not isinstance(frame, DataFrame):
                break
            assert len(frame.data) < 128  # tiny, as the window made it
        assert isinstance(frame, GoAwayFrame), frame
        assert frame.error_code == ENHANCE_YOUR_CALM
    with RawH2(running.port) as good:  # another connection is served meanwhile
        good.handshake()
        good.send_headers(1, request_headers("/"))
        assert good.read_response(1).status == 200
    assert "h2_max_tiny_frames_per_window" in caplog.text


def test_a_small_window_alone_is_served(run_server: Serve) -> None:
    """A one-byte window is legal (h2spec sends one): a few tiny frames are fine."""
    running = run_server(big_body, h2c=True, h2_max_tiny_frames_per_window=50)
    with RawH2(running.port) as conn:
        conn.handshake({INITIAL_WINDOW_SIZE: 1})
        conn.send_headers(1, request_headers("/"))
        first = conn.read_frame()
        while first is not None and not isinstance(first, DataFrame):
            first = conn.read_frame()
        assert first is not None and len(first.data) == 1
        conn.send_frame(WINDOW_UPDATE_FRAME, 0, 1, struct.pack(">L", 200_000))
        conn.send_frame(WINDOW_UPDATE_FRAME, 0, 0, struct.pack(">L", 200_000))
        received = len(first.data)
        while True:
            frame = conn.read_frame()
            assert frame is not None and not isinstance(frame, GoAwayFrame), frame
            if isinstance(frame, DataFrame):
                received += len(frame.data)
                if "END_STREAM" in frame.flags:
                    break
    assert received == 100_000


def test_reset_flood_on_closed_streams_is_enhance_your_calm(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """CVE-2019-9514 (reset flood): DATA on streams that are over makes the server send
    RST_STREAM STREAM_CLOSED for each. Those resets are counted like the client's own
    (`resets_sent`, per read): past h2_max_resets_per_window the connection ends, so the
    resets it got stay within the limit plus one batch."""
    caplog.set_level(logging.INFO, "multiplex")
    limit, batch = 20, 5
    running = serve(h2_max_resets_per_window=limit)
    with RawH2(running.port) as conn:
        conn.handshake()
        for stream_id in (1, 3, 5):
            conn.send_headers(stream_id, request_headers("/"))
            assert conn.read_response(stream_id).status == 200
        resets = 0
        goaway = None
        for _ in range(100):
            out = b"".join(raw_frame(DATA, 0, 1 + 2 * (i % 3), b"x") for i in range(batch))
            try:
                conn.send(out + raw_frame(PING, 0, 0, b"barrier!"))
            except OSError:
                pass  # closed by now: the GOAWAY is waiting to be read
            frame = conn.read_frame()
            while frame is not None:
                if isinstance(frame, RstStreamFrame):
                    assert frame.error_code == STREAM_CLOSED
                    resets += 1
                elif isinstance(frame, GoAwayFrame):
                    goaway = frame
                    break
                elif isinstance(frame, PingFrame):
                    break
                frame = conn.read_frame()
            if goaway is not None or frame is None:
                break
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM, goaway
        assert limit <= resets <= limit + batch, resets
    assert_served(running)
    lines = [r.getMessage() for r in caplog.records if "h2_max_resets_per_window" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines


def _queued(running: RunningServer) -> int:
    """What the server holds for its HTTP/2 peers that has not reached the kernel:
    the transport's write buffer and h2's unflushed output, the largest connection."""
    assert running.server.state is not None
    state = running.server.state
    return int(
        running.call(
            lambda: max(
                (
                    c.transport.get_write_buffer_size() + c.queued_output()
                    for c in state.connections
                    if isinstance(c, H2Protocol) and not c.closed
                ),
                default=0,
            )
        )
    )


@pytest.mark.parametrize("kind", ["SETTINGS", "RST_STREAM"])
def test_answers_queued_for_a_peer_that_does_not_read_stay_bounded(serve: Serve, kind: str) -> None:
    """CVE-2019-9515/9514 with a peer that reads nothing: SETTINGS (each ACKed) or DATA on
    a finished stream (each answered RST_STREAM), with the rate limits out of the way.
    What the server queues stays near its high-water mark, because it stops reading a
    peer whose output it cannot write (the PING case is the test above)."""
    running = serve(h2_max_control_frames_per_window=10**9, h2_max_resets_per_window=10**9)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.settimeout(2.0)
    try:
        opening = PREFACE + raw_frame(SETTINGS, 0, 0) + raw_frame(SETTINGS, ACK, 0)
        if kind == "SETTINGS":
            frame = raw_frame(SETTINGS, 0, 0, settings_payload({INITIAL_WINDOW_SIZE: 65535}))
        else:
            block = hpack.Encoder().encode(request_headers("/"), huffman=False)
            opening += raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
            frame = raw_frame(DATA, 0, 1, b"")  # 9 bytes in, a 13-byte RST_STREAM out
        sock.sendall(opening)
        chunk = frame * 4096
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except TimeoutError:
            pass  # the server stopped reading us: what we expect
        assert sent < 64 * 1024 * 1024  # it did stop
        # The 64 KiB high-water mark plus what one read of ours turned into.
        assert _queued(running) < 1024 * 1024
        assert_served(running)
    finally:
        sock.close()


MIB = 1024 * 1024
_producing: dict[str, Any] = {}


async def fifty_mib(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """50 MiB in 1 MiB sends; after each send returns, the largest amount the server
    holds for a connection (transport buffer plus h2's unflushed output) is recorded
    (often nothing: the send returned because it all went to the kernel)."""
    if scope["path"] != "/big":
        await app(scope, receive, send)
        return
    state = _producing["state"]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"z" * MIB
    for _ in range(50):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        _producing["sent"] += len(chunk)
        for c in state.connections:
            if isinstance(c, H2Protocol) and not c.closed:
                queued = c.transport.get_write_buffer_size() + c.queued_output()
                _producing["max"] = max(_producing["max"], queued)
    await send({"type": "http.response.body", "body": b""})


def test_big_window_and_no_reading_keeps_our_buffer_bounded(run_server: Serve) -> None:
    """CVE-2019-9517 (internal data buffering): the peer opens the largest windows and
    does not read. The app produces 50 MiB; the server never holds more than its
    write-buffer high-water mark plus one flush for it (the app's send() waits), and
    the whole body still arrives once the peer reads."""
    from multiplex.protocols.http2 import FLUSH_THRESHOLD

    high = 64 * 1024
    bound = high + FLUSH_THRESHOLD + 16 * 1024 + 1024
    running = run_server(fifty_mib, h2c=True, write_buffer_high=high)
    _producing.update(state=running.server.state, sent=0, max=0)
    with RawH2(running.port) as conn:
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.handshake({INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.send_frame(WINDOW_UPDATE_FRAME, 0, 0, struct.pack(">L", 2**31 - 1 - 65535))
        conn.send_headers(1, request_headers("/big"))
        assert_served(running)  # others are served meanwhile
        state = running.server.state
        assert state is not None
        for _ in range(1000):  # until the kernel buffers are full and the server waits
            if running.call(
                lambda: any(getattr(c, "write_paused", False) for c in state.connections)
            ):
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the server never had to wait for this peer")
        assert _queued(running) <= bound
        assert _producing["sent"] < 50 * MIB  # held back by the peer, not buffered
        received = 0
        while True:
            frame = conn.read_frame()
            assert frame is not None and not isinstance(frame, GoAwayFrame), frame
            if isinstance(frame, DataFrame):
                received += len(frame.data)
                if "END_STREAM" in frame.flags:
                    break
                if received % (4 * MIB) == 0:
                    assert _queued(running) <= bound  # and while the peer reads
    assert received == 50 * MIB
    # One flush may go past the mark (that is what pauses the app), by one frame at most.
    # (Sampled when each send() returns: often the buffer has just drained, even 0.)
    assert _producing["sent"] == 50 * MIB
    assert _producing["max"] <= bound, _producing


async def echo_path(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The request's path comes back in a response header, as a redirect's location."""
    if scope["type"] != "http":
        return
    location = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-echo", location)]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_huge_header_table_setting_keeps_our_encoder_bounded(run_server: Serve) -> None:
    """A client announcing SETTINGS_HEADER_TABLE_SIZE = 2^32-1 would let our HPACK
    encoder remember every response field it ever sent on the connection (here, 300
    distinct 1 KiB paths echoed back). The table we keep is capped at
    h2_max_hpack_table_size, and the client still decodes every response."""
    cap = 4096
    running = run_server(echo_path, h2c=True, h2_max_hpack_table_size=cap)
    with RawH2(running.port) as conn:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes
        conn.decoder.max_allowed_table_size = 2**32 - 1
        conn.handshake({HEADER_TABLE_SIZE: 2**32 - 1})
        for n in range(300):
            stream_id = 1 + 2 * n
            path = f"/{n:04d}" + "p" * 1024
            conn.send_headers(stream_id, request_headers(path))
            response = conn.read_response(stream_id)
            assert (response.status, dict(response.headers)[b"x-echo"]) == (200, path.encode())
        state = running.server.state
        assert state is not None
        held = running.call(
            lambda: [
                (c.h2.encoder.header_table.maxsize, c.h2.encoder.header_table._current_size)
                for c in state.connections
                if isinstance(c, H2Protocol)
            ]
        )
        assert len(held) == 1 and held[0][0] == cap and held[0][1] <= cap, held
        # What the server told our decoder (a dynamic table size update) agrees.
        assert conn.decoder.header_table_size == cap


@pytest.mark.parametrize("kind", ["empty-headers", "empty-continuations", "empty-values"])
def test_zero_length_header_floods_are_bounded(
    serve: Serve, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """CVE-2019-9516 and its relatives, each ended at once:
    - HEADERS frames with an empty block: a request without pseudo-fields is malformed,
      PROTOCOL_ERROR at the first (or at the 101st stream, if h2 reads that far first);
    - an empty HEADERS followed by empty CONTINUATIONs: counted per block,
      ENHANCE_YOUR_CALM past h2_max_continuation_frames;
    - one field with an empty value put in the dynamic table and referenced ten
      thousand times (a byte each): each still counts 32 bytes against
      h2_max_header_list_size, ENHANCE_YOUR_CALM before the list is built."""
    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_continuation_frames=8, h2_max_header_list_size=16 * 1024)
    with RawH2(running.port) as conn:
        conn.handshake()
        if kind == "empty-headers":
            out = b"".join(
                raw_frame(HEADERS, END_STREAM | END_HEADERS, stream_id, b"")
                for stream_id in range(1, 2000, 2)
            )
            # Whichever h2 meets first in the read: the malformed stream 1, or more than
            # h2_max_concurrent_streams opened at once.
            code, logged = PROTOCOL_ERROR, "HTTP/2 protocol error from"
        elif kind == "empty-continuations":
            out = raw_frame(HEADERS, END_STREAM, 1, b"")
            out += raw_frame(CONTINUATION, 0, 1, b"") * 1000
            code, logged = ENHANCE_YOUR_CALM, "h2_max_continuation_frames"
        else:
            # Literal with incremental indexing, new name "x", empty value; then indexed
            # field 62 (that entry) ten thousand times.
            block = conn.encode(request_headers("/")) + b"\x40\x01x\x00" + b"\xbe" * 10_000
            out = raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
            code, logged = ENHANCE_YOUR_CALM, "header list larger than 16384"
        conn.send(out)
        outcome = conn.read_until_error()
    assert (outcome.kind, outcome.error_code) == ("goaway", code), outcome
    assert not [f for f in outcome.frames if f.stream_id == 1]  # nothing reached the app
    assert_served(running)
    lines = [r.getMessage() for r in caplog.records if logged in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], [r.getMessage() for r in caplog.records]


def test_streams_refused_after_goaway_count_as_resets(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """During a graceful shutdown every new stream is refused (RST_STREAM
    REFUSED_STREAM): a client that keeps opening them makes us send a reset each, a
    reset flood (CVE-2019-9514) for the whole graceful_timeout. Those resets count
    against h2_max_resets_per_window like the others."""
    import threading

    caplog.set_level(logging.INFO, "multiplex")
    running = serve(h2_max_resets_per_window=10, graceful_timeout=30.0)
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/wait"))  # in flight: the connection stays
        conn.ping()
        conn.read_ping_ack()
        stopper = threading.Thread(target=running.shutdown)
        stopper.start()
        try:
            goaway = conn.read_frame()
            while not isinstance(goaway, GoAwayFrame):
                assert goaway is not None
                goaway = conn.read_frame()
            assert goaway.error_code == 0 and goaway.last_stream_id == 1
            # In batches under h2_max_concurrent_streams (h2 counts a refused stream as
            # open until we reset it, after the read), each behind a PING barrier.
            refused = 0
            outcome = None
            for batch in range(10):
                first = 3 + 40 * batch
                out = b"".join(
                    raw_frame(
                        HEADERS,
                        END_STREAM | END_HEADERS,
                        stream_id,
                        conn.encode(request_headers("/")),
                    )
                    for stream_id in range(first, first + 40, 2)
                )
                try:
                    conn.send(out + raw_frame(PING, 0, 0, b"barrier!"))
                except OSError:
                    pass  # closed by now: the GOAWAY is waiting to be read
                frames = []  # up to the PING ACK, a GOAWAY or the end
                while (frame := conn.read_frame()) is not None:
                    frames.append(frame)
                    if isinstance(frame, (PingFrame, GoAwayFrame)):
                        break
                refused += sum(
                    isinstance(f, RstStreamFrame) and f.error_code == REFUSED_STREAM for f in frames
                )
                outcome = next((f for f in frames if isinstance(f, GoAwayFrame)), None)
                if outcome is not None:
                    break
            assert outcome is not None and outcome.error_code == ENHANCE_YOUR_CALM, outcome
            assert 10 <= refused <= 30, refused
        finally:
            stopper.join(timeout=40)
    lines = [r.getMessage() for r in caplog.records if "h2_max_resets_per_window" in r.getMessage()]
    assert len(lines) == 1 and "127.0.0.1:" in lines[0], lines


def test_hpack_table_size_update_past_our_setting_is_compression_error(serve: Serve) -> None:
    """The client's encoder may not grow our decoder's dynamic table past the
    SETTINGS_HEADER_TABLE_SIZE we announced (4,096, h2's default): a size update to
    1 MiB is COMPRESSION_ERROR, so what we keep for a client's fields stays bounded."""
    running = serve()
    with RawH2(running.port) as conn:
        settings = conn.handshake()
        assert settings.get(HEADER_TABLE_SIZE, 4096) == 4096
        update = b"\x3f" + _hpack_int(1024 * 1024 - 31)  # 001xxxxx: dynamic table size update
        block = update + conn.encode(request_headers("/"))
        conn.send_frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
        outcome = conn.read_until_error()
    assert (outcome.kind, outcome.error_code) == ("goaway", COMPRESSION_ERROR), outcome
    assert_served(running)
