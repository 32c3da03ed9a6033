"""HTTP/2 conformance with raw frames over a real socket, in the spirit of h2spec.

Each test answers one requirement of RFC 9113 (section in the name) and asserts the
error code the RFC requires. Where the RFC allows a stream error and a connection error
alike (RFC 9113 section 5.4.1: an endpoint MAY treat a stream error as a connection
error), both are accepted, but the code is always checked.

Cleartext HTTP/2 with prior knowledge (`h2c=True`) unless a test needs TLS.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame

from tests.apps import Gate, hello
from tests.conftest import RunningServer
from tests.protocols.h2raw import (
    ACK,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    NO_ERROR,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    Header,
    Outcome,
    RawH2,
    request_headers,
    settings_payload,
    window_update_payload,
)

pytestmark = pytest.mark.timeout(60)

MAX_WINDOW = 2**31 - 1
Serve = Callable[..., RunningServer]


class Recorder:
    """Answers `200 <path> <body length>` and records every request it is called for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.paths.append(scope["path"])
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{scope['path']} {size}".encode()})


@pytest.fixture
def serve(run_server: Serve) -> Serve:
    """`run_server` with cleartext HTTP/2 by prior knowledge and a short graceful timeout."""

    def start(app: Any, **overrides: Any) -> RunningServer:
        overrides.setdefault("h2c", True)
        overrides.setdefault("graceful_timeout", 5.0)
        return run_server(app, **overrides)

    return start


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def recorded(serve: Serve, recorder: Recorder) -> Iterator[tuple[RunningServer, RawH2]]:
    """A server running `recorder`, and a handshaken connection to it."""
    running = serve(recorder)
    with RawH2(running.port) as conn:
        conn.handshake()
        yield running, conn


@pytest.fixture
def conn(serve: Serve) -> Iterator[RawH2]:
    """A handshaken connection to a server running `hello`."""
    running = serve(hello)
    with RawH2(running.port) as client:
        client.handshake()
        yield client


def assert_connection_error(outcome: Outcome, code: int) -> None:
    """A connection error (RFC 9113 section 5.4.1): GOAWAY with `code`, then the close."""
    assert outcome.kind == "goaway", f"expected GOAWAY({code}), got {outcome}"
    assert outcome.error_code == code, f"expected GOAWAY({code}), got {outcome}"


def assert_stream_or_connection_error(outcome: Outcome, code: int, stream_id: int) -> None:
    """A stream error (RST_STREAM on `stream_id`) or a connection error, with `code`."""
    assert outcome.kind in ("goaway", "rst_stream"), f"expected error {code}, got {outcome}"
    if outcome.kind == "rst_stream":
        assert outcome.stream_id == stream_id
    assert outcome.error_code == code, f"expected error code {code}, got {outcome}"


def assert_app_not_called(
    running: RunningServer, conn: RawH2, recorder: Recorder, outcome: Outcome, next_id: int
) -> None:
    """The rejected request never reached the app. After a stream error the connection
    must still serve a valid request (which also orders the check after the server has
    processed everything before it)."""
    if outcome.kind == "rst_stream":
        conn.send_headers(next_id, request_headers("/after"))
        response = conn.read_response(next_id)
        assert response.status == 200
        assert running.call(lambda: list(recorder.paths)) == ["/after"]
    else:
        conn.read_until_closed()
        assert running.call(lambda: list(recorder.paths)) == []


# --- 3.4: the connection preface -------------------------------------------------------


def test_3_4_invalid_preface_over_tls_is_a_connection_error(
    run_server: Serve, tls_config: dict[str, Any], recorder: Recorder
) -> None:
    """RFC 9113 section 3.4: a preface that is not the client connection preface MUST be
    treated as a connection error of type PROTOCOL_ERROR (GOAWAY allowed, then close)."""
    running = run_server(recorder, **tls_config)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with RawH2(running.port, tls=context) as conn:
        assert conn.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        conn.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 9)
        frames = conn.read_until_closed()
    assert conn.eof
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert all(f.error_code == PROTOCOL_ERROR for f in goaways), goaways
    assert not any(isinstance(f, (HeadersFrame, DataFrame)) for f in frames)
    assert recorder.paths == []


def test_3_4_invalid_preface_h2c_is_not_served(serve: Serve, recorder: Recorder) -> None:
    """RFC 9113 section 3.4 with prior knowledge: bytes that are not the preface are not
    HTTP/2. Our h2c listener hands them to HTTP/1.1, which must refuse a request line of
    version 2.0 (RFC 9112 section 2.3: 505, or 400) and never call the app."""
    running = serve(recorder)
    with RawH2(running.port) as conn:
        conn.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\x00" * 9)
        received = b""
        while chunk := conn.sock.recv(65536):
            received += chunk
    assert not received.startswith(b"\x00"), "answered with HTTP/2 frames"
    assert received == b"" or received.startswith((b"HTTP/1.1 4", b"HTTP/1.1 505"))
    assert running.call(lambda: list(recorder.paths)) == []


# --- 4.2: frame size ------------------------------------------------------------------


def test_4_2_data_frame_over_max_frame_size_is_frame_size_error(
    serve: Serve, recorder: Recorder
) -> None:
    """RFC 9113 section 4.2: a frame larger than SETTINGS_MAX_FRAME_SIZE (16384 by
    default) MUST get FRAME_SIZE_ERROR."""
    running = serve(recorder)
    with RawH2(running.port) as conn:
        settings = conn.handshake()
        limit = settings.get(MAX_FRAME_SIZE, 16384)
        conn.send_headers(1, request_headers("/upload", "POST"), end_stream=False)
        conn.send_data(1, b"x" * (limit + 1))
        outcome = conn.read_until_error(1)
    assert_stream_or_connection_error(outcome, FRAME_SIZE_ERROR, 1)


def test_4_2_headers_frame_over_max_frame_size_is_connection_frame_size_error(
    conn: RawH2,
) -> None:
    """RFC 9113 section 4.2: a frame size error in a frame carrying a field block MUST be
    a connection error."""
    limit = conn.server_settings.get(MAX_FRAME_SIZE, 16384)
    extra = [(b"x-pad", b"a" * (limit + 100))]
    conn.send_headers(1, request_headers(extra=extra))
    assert_connection_error(conn.read_until_error(), FRAME_SIZE_ERROR)


def test_4_2_frame_up_to_advertised_max_frame_size_is_accepted(
    serve: Serve, recorder: Recorder
) -> None:
    """RFC 9113 section 4.2 / 6.5.2: a frame up to the SETTINGS_MAX_FRAME_SIZE we
    advertised (here 32768, from `h2_max_frame_size`) must be accepted."""
    running = serve(recorder, h2_max_frame_size=32768)
    with RawH2(running.port) as conn:
        assert conn.handshake()[MAX_FRAME_SIZE] == 32768
        conn.send_headers(1, request_headers("/upload", "POST"), end_stream=False)
        conn.send_data(1, b"x" * 20000)
        response = conn.read_response(1)
    assert (response.status, response.body) == (200, b"/upload 20000")


def test_6_5_2_header_list_up_to_advertised_max_header_list_size_is_served(
    serve: Serve, recorder: Recorder
) -> None:
    """RFC 9113 section 6.5.2: SETTINGS_MAX_HEADER_LIST_SIZE announces the largest field
    section we accept; one of 100 000 octets under an announced 128 KiB is served (the
    block spread over CONTINUATION frames, section 6.10)."""
    running = serve(recorder, h2_max_header_list_size=128 * 1024)
    with RawH2(running.port) as conn:
        assert conn.handshake()[MAX_HEADER_LIST_SIZE] == 128 * 1024
        extra = [(f"x-big-{i}".encode(), b"v" * 10_000) for i in range(10)]
        block = conn.encode(request_headers("/big", extra=extra))
        step = 16384
        chunks = [block[i : i + step] for i in range(0, len(block), step)]
        conn.send_frame(HEADERS, END_STREAM, 1, chunks[0])
        for chunk in chunks[1:-1]:
            conn.send_frame(CONTINUATION, 0, 1, chunk)
        conn.send_frame(CONTINUATION, END_HEADERS, 1, chunks[-1])
        response = conn.read_response(1)
    assert (response.status, response.body) == (200, b"/big 0")


# --- 5.1: stream states -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["HEADERS", "DATA"])
def test_5_1_frame_on_half_closed_remote_stream_is_stream_closed(serve: Serve, kind: str) -> None:
    """RFC 9113 section 5.1, half-closed (remote): frames other than WINDOW_UPDATE,
    PRIORITY or RST_STREAM MUST get a stream error STREAM_CLOSED."""
    gate = Gate()
    running = serve(gate)
    try:
        with RawH2(running.port) as conn:
            conn.handshake()
            conn.send_headers(1, request_headers("/wait"))  # END_STREAM: half-closed (remote)
            conn.ping(b"barrier!")
            if kind == "HEADERS":
                conn.send_headers(1, [(b"x-late", b"1")])
            else:
                conn.send_data(1, b"late")
            outcome = conn.read_until_error(1)
    finally:
        gate.release(running.loop)
    assert_stream_or_connection_error(outcome, STREAM_CLOSED, 1)


def test_5_1_data_on_idle_stream_is_connection_protocol_error(conn: RawH2) -> None:
    """RFC 9113 section 5.1, idle: any frame other than HEADERS or PRIORITY MUST be a
    connection error PROTOCOL_ERROR."""
    conn.send_data(1, b"hello")
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


def test_5_1_1_even_stream_id_from_client_is_protocol_error(conn: RawH2) -> None:
    """RFC 9113 section 5.1.1: a stream identifier of the wrong parity (even, from a
    client) MUST be a connection error PROTOCOL_ERROR."""
    conn.send_headers(2, request_headers())
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


def test_5_1_1_decreasing_stream_id_is_protocol_error(conn: RawH2) -> None:
    """RFC 9113 section 5.1.1: a new stream's identifier MUST be greater than all the
    peer opened before; otherwise a connection error PROTOCOL_ERROR."""
    conn.send_headers(5, request_headers())
    assert conn.read_response(5).status == 200
    conn.send_headers(3, request_headers())
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


def test_5_1_2_streams_beyond_max_concurrent_streams_are_refused(serve: Serve) -> None:
    """RFC 9113 section 5.1.2: a HEADERS frame exceeding the announced
    SETTINGS_MAX_CONCURRENT_STREAMS MUST be a stream error PROTOCOL_ERROR or
    REFUSED_STREAM (or, section 5.4.1, a connection error); the app never sees it."""
    gate = Gate()
    running = serve(gate, h2_max_concurrent_streams=2)
    try:
        with RawH2(running.port) as conn:
            assert conn.handshake()[MAX_CONCURRENT_STREAMS] == 2
            conn.send_headers(1, request_headers("/wait1"))
            conn.send_headers(3, request_headers("/wait3"))
            conn.send_headers(5, request_headers("/over"))
            outcome = conn.read_until_error(5)
    finally:
        gate.release(running.loop)
    assert outcome.kind in ("rst_stream", "goaway"), outcome
    if outcome.kind == "rst_stream":
        assert outcome.stream_id == 5
    assert outcome.error_code in (PROTOCOL_ERROR, REFUSED_STREAM), outcome
    assert "/over" not in gate.completed


def test_5_4_2_valid_request_after_stream_error_on_same_connection(serve: Serve) -> None:
    """RFC 9113 section 5.4.2: a stream error ends only that stream; the connection and
    its other streams go on."""
    gate = Gate()
    running = serve(gate)
    try:
        with RawH2(running.port) as conn:
            conn.handshake()
            conn.send_headers(1, request_headers("/wait"))
            conn.send_frame(WINDOW_UPDATE, 0, 1, window_update_payload(MAX_WINDOW))
            outcome = conn.read_until_error(1)
            assert (outcome.kind, outcome.error_code) == ("rst_stream", FLOW_CONTROL_ERROR)
            conn.send_headers(3, request_headers("/after"))
            response = conn.read_response(3)
    finally:
        gate.release(running.loop)
    assert (response.status, response.body) == (200, b"/after")


# --- 6.x: frames on the wrong stream ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "flags", "payload"),
    [
        pytest.param(DATA, END_STREAM, b"hello", id="6.1-DATA"),
        pytest.param(HEADERS, END_STREAM | END_HEADERS, None, id="6.2-HEADERS"),
    ],
)
def test_6_frame_requiring_a_stream_on_stream_0_is_protocol_error(
    conn: RawH2, kind: int, flags: int, payload: bytes | None
) -> None:
    """RFC 9113 sections 6.1 and 6.2: DATA or HEADERS on stream 0 MUST be a connection
    error PROTOCOL_ERROR."""
    if payload is None:
        payload = conn.encode(request_headers())
    conn.send_frame(kind, flags, 0, payload)
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        pytest.param(SETTINGS, b"", id="6.5-SETTINGS"),
        pytest.param(PING, b"12345678", id="6.7-PING"),
        pytest.param(GOAWAY, b"\x00\x00\x00\x00\x00\x00\x00\x00", id="6.8-GOAWAY"),
    ],
)
def test_6_connection_frame_on_a_stream_is_protocol_error(
    conn: RawH2, kind: int, payload: bytes
) -> None:
    """RFC 9113 sections 6.5, 6.7 and 6.8: SETTINGS, PING or GOAWAY with a stream
    identifier other than 0 MUST be a connection error PROTOCOL_ERROR."""
    conn.send_headers(1, request_headers())
    assert conn.read_response(1).status == 200
    conn.send_frame(kind, 0, 1, payload)
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


# --- 6.5: SETTINGS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        pytest.param(ENABLE_PUSH, 2, PROTOCOL_ERROR, id="6.5.2-ENABLE_PUSH=2"),
        pytest.param(
            INITIAL_WINDOW_SIZE, MAX_WINDOW + 1, FLOW_CONTROL_ERROR, id="6.5.2-INITIAL_WINDOW"
        ),
        pytest.param(MAX_FRAME_SIZE, 16383, PROTOCOL_ERROR, id="6.5.2-MAX_FRAME_SIZE-low"),
        pytest.param(MAX_FRAME_SIZE, 2**24, PROTOCOL_ERROR, id="6.5.2-MAX_FRAME_SIZE-high"),
    ],
)
def test_6_5_2_settings_value_out_of_range(
    conn: RawH2, setting: int, value: int, code: int
) -> None:
    """RFC 9113 section 6.5.2: ENABLE_PUSH other than 0/1 and MAX_FRAME_SIZE outside
    [2^14, 2^24-1] are PROTOCOL_ERROR; INITIAL_WINDOW_SIZE above 2^31-1 is
    FLOW_CONTROL_ERROR; all connection errors."""
    conn.send_frame(SETTINGS, 0, 0, settings_payload({setting: value}))
    assert_connection_error(conn.read_until_error(), code)


def test_6_5_settings_length_not_multiple_of_6_is_frame_size_error(conn: RawH2) -> None:
    """RFC 9113 section 6.5: a SETTINGS length that is not a multiple of 6 octets MUST
    be a connection error FRAME_SIZE_ERROR."""
    conn.send_frame(SETTINGS, 0, 0, settings_payload({MAX_CONCURRENT_STREAMS: 10}) + b"\x00")
    assert_connection_error(conn.read_until_error(), FRAME_SIZE_ERROR)


@pytest.mark.xfail(
    strict=True,
    reason="h2/hyperframe answer a SETTINGS ACK with a payload with PROTOCOL_ERROR, "
    "RFC 9113 section 6.5 requires FRAME_SIZE_ERROR",
)
def test_6_5_settings_ack_with_payload_is_frame_size_error(conn: RawH2) -> None:
    """RFC 9113 section 6.5: a SETTINGS frame with ACK and a non-zero length MUST be a
    connection error FRAME_SIZE_ERROR."""
    conn.send_frame(SETTINGS, ACK, 0, settings_payload({MAX_CONCURRENT_STREAMS: 10}))
    assert_connection_error(conn.read_until_error(), FRAME_SIZE_ERROR)


def test_6_5_2_server_settings_reflect_config(serve: Serve) -> None:
    """RFC 9113 section 6.5.2: the server's SETTINGS carry our configured limits, and it
    never announces ENABLE_PUSH other than 0 ("if a server does include a value, it MUST
    be 0")."""
    running = serve(
        hello,
        h2_max_concurrent_streams=7,
        h2_initial_window_size=100_000,
        h2_max_frame_size=20_000,
        h2_max_header_list_size=12_345,
    )
    with RawH2(running.port) as conn:
        settings = conn.handshake()
    assert settings[MAX_CONCURRENT_STREAMS] == 7
    assert settings[INITIAL_WINDOW_SIZE] == 100_000
    assert settings[MAX_FRAME_SIZE] == 20_000
    assert settings[MAX_HEADER_LIST_SIZE] == 12_345
    assert settings.get(ENABLE_PUSH, 0) == 0


def test_6_5_3_settings_are_acknowledged(serve: Serve) -> None:
    """RFC 9113 section 6.5.3: the server MUST answer our SETTINGS with a SETTINGS ACK."""
    running = serve(hello)
    with RawH2(running.port) as conn:
        conn.handshake({MAX_CONCURRENT_STREAMS: 10})
        conn.ping(b"barrier!")
        frames = conn.frames_until_ping_ack()
    assert any(f.type == SETTINGS and "ACK" in f.flags for f in frames)


# --- 6.7: PING --------------------------------------------------------------------------


def test_6_7_ping_is_answered_with_same_payload(conn: RawH2) -> None:
    """RFC 9113 section 6.7: a PING without ACK MUST be answered with a PING ACK carrying
    the identical payload."""
    conn.send_frame(PING, 0, 0, b"\x01\x02\x03\x04abcd")
    assert conn.read_ping_ack().opaque_data == b"\x01\x02\x03\x04abcd"


def test_6_7_ping_of_wrong_length_is_frame_size_error(conn: RawH2) -> None:
    """RFC 9113 section 6.7: a PING whose length is not 8 MUST be a connection error
    FRAME_SIZE_ERROR."""
    conn.send_frame(PING, 0, 0, b"1234567")
    assert_connection_error(conn.read_until_error(), FRAME_SIZE_ERROR)


# --- 6.9: WINDOW_UPDATE -----------------------------------------------------------------


def test_6_9_window_update_zero_on_connection_is_protocol_error(conn: RawH2) -> None:
    """RFC 9113 section 6.9: an increment of 0 on the connection window MUST be a
    connection error PROTOCOL_ERROR."""
    conn.send_frame(WINDOW_UPDATE, 0, 0, window_update_payload(0))
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


def test_6_9_window_update_zero_on_stream_is_protocol_error(serve: Serve) -> None:
    """RFC 9113 section 6.9: an increment of 0 on a stream MUST be a stream error
    PROTOCOL_ERROR (or, section 5.4.1, a connection error)."""
    gate = Gate()
    running = serve(gate)
    try:
        with RawH2(running.port) as conn:
            conn.handshake()
            conn.send_headers(1, request_headers("/wait"))
            conn.send_frame(WINDOW_UPDATE, 0, 1, window_update_payload(0))
            outcome = conn.read_until_error(1)
    finally:
        gate.release(running.loop)
    assert_stream_or_connection_error(outcome, PROTOCOL_ERROR, 1)


def test_6_9_1_connection_window_overflow_is_flow_control_error(conn: RawH2) -> None:
    """RFC 9113 section 6.9.1: a WINDOW_UPDATE taking the connection window beyond
    2^31-1 MUST end the connection with FLOW_CONTROL_ERROR."""
    conn.send_frame(WINDOW_UPDATE, 0, 0, window_update_payload(MAX_WINDOW))
    assert_connection_error(conn.read_until_error(), FLOW_CONTROL_ERROR)


def test_6_9_1_stream_window_overflow_is_rst_stream_flow_control_error(serve: Serve) -> None:
    """RFC 9113 section 6.9.1: a WINDOW_UPDATE taking a stream window beyond 2^31-1
    MUST reset that stream with FLOW_CONTROL_ERROR."""
    gate = Gate()
    running = serve(gate)
    try:
        with RawH2(running.port) as conn:
            conn.handshake()
            conn.send_headers(1, request_headers("/wait"))
            conn.send_frame(WINDOW_UPDATE, 0, 1, window_update_payload(MAX_WINDOW))
            outcome = conn.read_until_error(1)
    finally:
        gate.release(running.loop)
    assert (outcome.kind, outcome.stream_id, outcome.error_code) == (
        "rst_stream",
        1,
        FLOW_CONTROL_ERROR,
    )


# --- 6.10: CONTINUATION -----------------------------------------------------------------


def test_6_10_continuation_without_headers_is_protocol_error(conn: RawH2) -> None:
    """RFC 9113 section 6.10: a CONTINUATION not preceded by HEADERS, PUSH_PROMISE or
    CONTINUATION without END_HEADERS MUST be a connection error PROTOCOL_ERROR."""
    conn.send_frame(CONTINUATION, END_HEADERS, 1, conn.encode(request_headers()))
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "interleaved",
    [
        pytest.param(b"\x00\x00\x08\x06\x00\x00\x00\x00\x0012345678", id="PING"),
        pytest.param(b"\x00\x00\x00\x09\x04\x00\x00\x00\x03", id="CONTINUATION-other-stream"),
    ],
)
def test_6_10_frame_interleaved_in_header_block_is_protocol_error(
    conn: RawH2, interleaved: bytes
) -> None:
    """RFC 9113 sections 4.3 and 6.10: a header block is contiguous; any other frame
    (or a CONTINUATION of another stream) in it MUST be a connection error
    PROTOCOL_ERROR."""
    block = conn.encode(request_headers())
    conn.send_frame(HEADERS, END_STREAM, 1, block[:5])
    conn.send(interleaved)
    conn.send_frame(CONTINUATION, END_HEADERS, 1, block[5:])
    assert_connection_error(conn.read_until_error(), PROTOCOL_ERROR)


def test_6_10_header_block_split_over_continuation_is_served(conn: RawH2) -> None:
    """RFC 9113 section 6.10: HEADERS without END_HEADERS plus CONTINUATION frames form
    one field block (the positive counterpart of the tests above)."""
    block = conn.encode(request_headers())
    conn.send_frame(HEADERS, END_STREAM, 1, block[:4])
    conn.send_frame(CONTINUATION, 0, 1, block[4:8])
    conn.send_frame(CONTINUATION, END_HEADERS, 1, block[8:])
    assert conn.read_response(1).body == b"hello 2"


# --- 8.1.1: malformed messages ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_length", "sent"),
    [pytest.param(b"10", b"x" * 11, id="more"), pytest.param(b"10", b"x" * 9, id="less")],
)
def test_8_1_1_content_length_mismatch_is_protocol_error(
    recorded: tuple[RunningServer, RawH2], content_length: bytes, sent: bytes
) -> None:
    """RFC 9113 section 8.1.1: a content-length that does not equal the sum of the DATA
    payloads makes the request malformed: PROTOCOL_ERROR."""
    _, conn = recorded
    extra = [(b"content-length", content_length)]
    conn.send_headers(1, request_headers("/upload", "POST", extra), end_stream=False)
    conn.send_data(1, sent)
    outcome = conn.read_until_error(1)
    assert_stream_or_connection_error(outcome, PROTOCOL_ERROR, 1)
    assert all(not (isinstance(f, HeadersFrame) and f.stream_id == 1) for f in outcome.frames)


# --- 8.2 and 8.3: fields and pseudo-header fields ---------------------------------------

AUTHORITY = (b":authority", b"localhost")
METHOD, SCHEME, PATH = (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")

MALFORMED_REQUESTS: dict[str, list[Header]] = {
    "8.3.1-missing-method": [SCHEME, AUTHORITY, PATH],
    "8.3.1-missing-scheme": [METHOD, AUTHORITY, PATH],
    "8.3.1-missing-path": [METHOD, SCHEME, AUTHORITY],
    "8.3.1-empty-path": [METHOD, SCHEME, AUTHORITY, (b":path", b"")],
    "8.3.1-duplicate-path": [METHOD, SCHEME, AUTHORITY, PATH, (b":path", b"/again")],
    "8.3-unknown-pseudo-header": [METHOD, SCHEME, AUTHORITY, PATH, (b":foo", b"bar")],
    "8.3-response-pseudo-header": [METHOD, SCHEME, AUTHORITY, PATH, (b":status", b"200")],
    "8.3-pseudo-header-after-regular": [METHOD, SCHEME, AUTHORITY, (b"accept", b"*/*"), PATH],
    "8.2.1-uppercase-name": [METHOD, SCHEME, AUTHORITY, PATH, (b"X-Upper", b"1")],
    "8.2.2-connection": [METHOD, SCHEME, AUTHORITY, PATH, (b"connection", b"keep-alive")],
    "8.2.2-keep-alive": [METHOD, SCHEME, AUTHORITY, PATH, (b"keep-alive", b"timeout=5")],
    "8.2.2-proxy-connection": [METHOD, SCHEME, AUTHORITY, PATH, (b"proxy-connection", b"x")],
    "8.2.2-transfer-encoding": [
        METHOD,
        SCHEME,
        AUTHORITY,
        PATH,
        (b"transfer-encoding", b"chunked"),
    ],
    "8.2.2-upgrade": [METHOD, SCHEME, AUTHORITY, PATH, (b"upgrade", b"websocket")],
    "8.2.2-te-not-trailers": [METHOD, SCHEME, AUTHORITY, PATH, (b"te", b"gzip")],
    "8.2.1-empty-name": [METHOD, SCHEME, AUTHORITY, PATH, (b"", b"x")],
    "8.2.1-space-in-name": [METHOD, SCHEME, AUTHORITY, PATH, (b"x y", b"1")],
    "8.2.1-colon-in-name": [METHOD, SCHEME, AUTHORITY, PATH, (b"x:y", b"1")],
    "8.2.1-8bit-name": [METHOD, SCHEME, AUTHORITY, PATH, (b"x\xe9", b"1")],
    "8.2.1-nul-in-value": [METHOD, SCHEME, AUTHORITY, PATH, (b"x", b"a\x00b")],
    "8.2.1-lf-in-value": [METHOD, SCHEME, AUTHORITY, PATH, (b"x", b"a\nb")],
    "8.2.1-cr-in-value": [METHOD, SCHEME, AUTHORITY, PATH, (b"x", b"a\rb")],
    "8.2.1-leading-space": [METHOD, SCHEME, AUTHORITY, PATH, (b"x", b" a")],
    "8.2.1-trailing-tab": [METHOD, SCHEME, AUTHORITY, PATH, (b"x", b"a\t")],
    "8.3.1-host-differs-from-authority": [METHOD, SCHEME, AUTHORITY, PATH, (b"host", b"other")],
    "8.3.1-two-hosts": [METHOD, SCHEME, PATH, (b"host", b"a"), (b"host", b"a")],
    "8.3.1-no-authority-or-host": [METHOD, SCHEME, PATH],
    "8.5-protocol-outside-connect": [METHOD, SCHEME, AUTHORITY, PATH, (b":protocol", b"x")],
    "8.5-connect-with-path": [(b":method", b"CONNECT"), AUTHORITY, PATH],
}


@pytest.mark.parametrize("headers", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_8_malformed_request_headers_are_protocol_error(
    recorded: tuple[RunningServer, RawH2], recorder: Recorder, headers: list[Header]
) -> None:
    """RFC 9113 sections 8.2.1, 8.2.2 and 8.3.1: a request with these fields is
    malformed: a stream error PROTOCOL_ERROR (h2 makes it a connection error, which
    section 5.4.1 allows), and the app is never called."""
    running, conn = recorded
    conn.send_headers(1, headers)
    outcome = conn.read_until_error(1)
    assert_stream_or_connection_error(outcome, PROTOCOL_ERROR, 1)
    assert_app_not_called(running, conn, recorder, outcome, next_id=3)


def test_8_2_2_te_trailers_is_allowed(recorded: tuple[RunningServer, RawH2]) -> None:
    """RFC 9113 section 8.2.2: `te` MAY be present with the value `trailers`."""
    _, conn = recorded
    conn.send_headers(1, request_headers("/te", extra=[(b"te", b"trailers")]))
    assert conn.read_response(1).body == b"/te 0"


# --- 6.8: GOAWAY and graceful shutdown --------------------------------------------------


def test_6_8_graceful_shutdown_goaway_finishes_in_flight_streams(serve: Serve) -> None:
    """RFC 9113 section 6.8: on shutdown the server sends GOAWAY(NO_ERROR) whose last
    stream id covers the stream in flight, which still completes; a stream opened after
    it is refused (RST_STREAM REFUSED_STREAM) or ignored, never served."""
    gate = Gate()
    running = serve(gate)
    stopper = threading.Thread(target=running.shutdown)
    try:
        with RawH2(running.port) as conn:
            conn.handshake()
            conn.send_headers(1, request_headers("/wait"))
            conn.ping(b"barrier!")
            conn.frames_until_ping_ack()  # stream 1 is open on the server
            stopper.start()
            goaway = conn.read_until_error()
            assert (goaway.kind, goaway.error_code) == ("goaway", NO_ERROR)
            assert goaway.last_stream_id == 1

            conn.send_headers(3, request_headers("/late"))
            conn.ping(b"barrier2")
            late = conn.frames_until_ping_ack()
            gate.release(running.loop)
            response = conn.read_response(1)
            rest = conn.read_until_closed()
    finally:
        gate.release(running.loop)
        stopper.join(timeout=30)
    assert (response.status, response.body) == (200, b"/wait")
    on_stream_3 = [f for f in late + rest if f.stream_id == 3]
    assert all(isinstance(f, RstStreamFrame) for f in on_stream_3), on_stream_3
    assert all(f.error_code == REFUSED_STREAM for f in on_stream_3), on_stream_3
    assert gate.completed == ["/wait"]
    assert not stopper.is_alive()


@pytest.mark.parametrize(
    "trailer",
    [(b":path", b"/x"), (b"X-Upper", b"1"), (b"x", b"a\nb"), (b"connection", b"close")],
    ids=["pseudo-header", "uppercase", "lf-in-value", "connection-specific"],
)
def test_8_1_malformed_trailers_are_protocol_error(
    recorded: tuple[RunningServer, RawH2], trailer: Header
) -> None:
    """RFC 9113 sections 8.1 and 8.2: trailers carry no pseudo-headers and follow the
    same field rules as the request head."""
    _, conn = recorded
    conn.send_headers(1, request_headers("/upload", method="POST"), end_stream=False)
    conn.send_data(1, b"body", end_stream=False)
    conn.send_headers(1, [trailer], end_stream=True)
    outcome = conn.read_until_error(1)
    assert_stream_or_connection_error(outcome, PROTOCOL_ERROR, 1)


def test_8_1_valid_trailers_are_accepted(recorded: tuple[RunningServer, RawH2]) -> None:
    _, conn = recorded
    conn.send_headers(1, request_headers("/trailers", method="POST"), end_stream=False)
    conn.send_data(1, b"body", end_stream=False)
    conn.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)
    assert conn.read_response(1).status == 200
