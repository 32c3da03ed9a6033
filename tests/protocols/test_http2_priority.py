"""RFC 9218 priorities on HTTP/2, seen as frame order on the wire.

Each test holds the connection's flow-control window shut (the client never sends a
WINDOW_UPDATE on stream 0 until it is ready), so that every response is queued at the
server; then it opens the window wide and records the order of the DATA frames that
follow. The order is decided by the server's scheduler, not by timing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame

from tests.conftest import RunningServer
from tests.protocols.h2raw import (
    INITIAL_WINDOW_SIZE,
    PROTOCOL_ERROR,
    WINDOW_UPDATE,
    RawH2,
    request_headers,
    window_update_payload,
)

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., RunningServer]
PRIORITY_UPDATE = 0x10
SETTINGS_NO_RFC7540_PRIORITIES = 0x9
BIG = 200_000  # about 13 DATA frames of 16 KiB
SMALL = 40_000


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/big` and `/small` send that many bytes in one body message. `?urgent` makes
    the app raise its own response to urgency 0 (the proposed extension). Every
    response says, in `x-priority`, what the scope's priority extension held."""
    if scope["type"] != "http":
        return
    size = BIG if scope["path"] == "/big" else SMALL
    signal = scope["extensions"].get("http.response.priority")
    if scope["query_string"] == b"urgent":
        await send({"type": "http.response.priority", "urgency": 0, "incremental": False})
    shown = f"{signal['urgency']},{int(signal['incremental'])}" if signal else "none"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"x-priority", shown.encode())],
        }
    )
    await send({"type": "http.response.body", "body": bytes([scope["path"][1] == "b"]) * size})


@pytest.fixture
def serve(run_server: Serve) -> Serve:
    def start(**overrides: Any) -> RunningServer:
        overrides.setdefault("h2c", True)
        return run_server(app, **overrides)

    return start


def priority_update(stream_id: int, value: bytes) -> bytes:
    return stream_id.to_bytes(4, "big") + value


class Recorder:
    """A connection whose window the test opens; it records DATA frames in order."""

    def __init__(self, port: int) -> None:
        self.conn = RawH2(port)
        # Stream windows wide open: only the connection window (65,535) holds data back.
        self.settings = self.conn.handshake({INITIAL_WINDOW_SIZE: 16 * 1024 * 1024})
        self.received = 0  # DATA bytes so far, all streams
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.order: list[tuple[int, int]] = []  # (stream, bytes) per DATA frame
        self.ended: set[int] = set()

    def request(self, stream_id: int, path: str, priority: bytes | None = None) -> None:
        extra = [(b"priority", priority)] if priority is not None else []
        self.conn.send_headers(stream_id, request_headers(path, extra=extra))

    def read_until(self, done: Callable[[], bool]) -> None:
        while not done():
            frame = self.conn.read_frame()
            assert frame is not None, "server closed the connection"
            assert not isinstance(frame, GoAwayFrame), frame
            if isinstance(frame, HeadersFrame):
                self.heads[frame.stream_id] = dict(frame.decoded)  # type: ignore[attr-defined]
            if isinstance(frame, DataFrame):
                self.received += len(frame.data)
                if frame.data:
                    self.order.append((frame.stream_id, len(frame.data)))
            if getattr(frame, "flags", None) and "END_STREAM" in frame.flags:
                self.ended.add(frame.stream_id)

    def fill_window(self) -> None:
        """Read until the server has used the whole initial connection window."""
        self.read_until(lambda: self.received >= 65_535)
        self.order.clear()

    def open_window(self, streams: set[int]) -> list[int]:
        """Open the connection window wide; the streams of the DATA frames that follow,
        one entry per frame, until every stream in `streams` has ended."""
        self.conn.send_frame(WINDOW_UPDATE, 0, 0, window_update_payload(2**31 - 1 - 65_535))
        self.read_until(lambda: streams <= self.ended)
        return [stream for stream, _ in self.order]

    def close(self) -> None:
        self.conn.close()


def runs(order: list[int]) -> list[int]:
    """The streams in the order their runs of frames came: [1, 1, 3, 1] -> [1, 3, 1]."""
    out: list[int] = []
    for stream in order:
        if not out or out[-1] != stream:
            out.append(stream)
    return out


def test_settings_say_no_rfc7540_priorities(serve: Serve) -> None:
    running = serve()
    client = Recorder(running.port)
    try:
        assert client.settings.get(SETTINGS_NO_RFC7540_PRIORITIES) == 1
    finally:
        client.close()


def test_urgent_response_overtakes_queued_low_urgency_ones(serve: Serve) -> None:
    running = serve()
    client = Recorder(running.port)
    try:
        for stream_id in (1, 3, 5):
            client.request(stream_id, "/big", b"u=5")
        client.fill_window()
        client.request(7, "/small", b"u=0")
        client.read_until(lambda: 7 in client.heads)  # its body is queued by now
        order = client.open_window({1, 3, 5, 7})
    finally:
        client.close()
    # All of the urgent response first; then the u=5 ones, one after another in
    # stream order (non-incremental).
    assert runs(order) == [7, 1, 3, 5], runs(order)
    assert client.heads[7][b"x-priority"] == b"0,0"
    assert client.heads[1][b"x-priority"] == b"5,0"


def test_priority_update_raises_a_running_stream(serve: Serve) -> None:
    running = serve()
    client = Recorder(running.port)
    try:
        for stream_id in (1, 3, 5):
            client.request(stream_id, "/big", b"u=5")
        client.fill_window()
        client.conn.send_frame(PRIORITY_UPDATE, 0, 0, priority_update(5, b"u=1"))
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    assert runs(order) == [5, 1, 3], runs(order)


def test_priority_update_before_its_stream(serve: Serve) -> None:
    """RFC 9218 section 7.1: an update may name a stream the client has not opened."""
    running = serve()
    client = Recorder(running.port)
    try:
        client.request(1, "/big", b"u=4")
        client.request(3, "/big", b"u=4")
        client.fill_window()
        client.conn.send_frame(PRIORITY_UPDATE, 0, 0, priority_update(5, b"u=2"))
        client.request(5, "/small")  # no priority header: the earlier update holds
        client.read_until(lambda: 5 in client.heads)
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    assert runs(order) == [5, 1, 3], runs(order)
    assert client.heads[5][b"x-priority"] == b"2,0"


def test_incremental_streams_interleave(serve: Serve) -> None:
    running = serve()
    client = Recorder(running.port)
    try:
        for stream_id in (1, 3, 5):
            client.request(stream_id, "/big", b"u=3, i")
        client.fill_window()
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    # Round-robin a frame at a time while all three have data left.
    first = order[:24]
    for i in range(0, len(first) - 2, 3):
        assert sorted(first[i : i + 3]) == [1, 3, 5], order
    assert client.heads[1][b"x-priority"] == b"3,1"


def test_non_incremental_streams_do_not_interleave(serve: Serve) -> None:
    running = serve()
    client = Recorder(running.port)
    try:
        for stream_id in (1, 3, 5):
            client.request(stream_id, "/big")  # the default: u=3, not incremental
        client.fill_window()
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    assert runs(order) == [1, 3, 5], runs(order)
    assert client.heads[3][b"x-priority"] == b"3,0"


def test_app_raises_its_own_priority(serve: Serve) -> None:
    """The proposed `http.response.priority` message overrides the client's signal."""
    running = serve()
    client = Recorder(running.port)
    try:
        client.request(1, "/big", b"u=2")
        client.request(3, "/big", b"u=2")
        client.fill_window()
        client.request(5, "/big?urgent", b"u=6")
        client.read_until(lambda: 5 in client.heads)
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    assert runs(order) == [5, 1, 3], runs(order)


def test_priorities_off_keeps_stream_order(serve: Serve) -> None:
    running = serve(priorities=False)
    client = Recorder(running.port)
    try:
        client.request(1, "/big", b"u=7")
        client.request(3, "/big", b"u=6")
        client.fill_window()
        client.request(5, "/small", b"u=0")
        client.read_until(lambda: 5 in client.heads)
        order = client.open_window({1, 3, 5})
    finally:
        client.close()
    assert runs(order) == [1, 3, 5], runs(order)


@pytest.mark.parametrize(
    ("stream_id", "payload"),
    [(0, priority_update(0, b"u=1")), (1, priority_update(1, b"u=1")), (0, b"\x00\x01")],
    ids=["about-stream-0", "on-stream-1", "too-short"],
)
def test_malformed_priority_update_is_protocol_error(
    serve: Serve, stream_id: int, payload: bytes
) -> None:
    running = serve()
    conn = RawH2(running.port)
    try:
        conn.handshake()
        conn.send_frame(PRIORITY_UPDATE, 0, stream_id, payload)
        outcome = conn.read_until_error()
    finally:
        conn.close()
    assert (outcome.kind, outcome.error_code) == ("goaway", PROTOCOL_ERROR), outcome


def test_bad_priority_values_are_ignored(serve: Serve) -> None:
    """RFC 9218 section 4: an out-of-range or mistyped member leaves the default."""
    running = serve()
    client = Recorder(running.port)
    try:
        client.request(1, "/small", b"u=9, i=?7, x=1")
        client.read_until(lambda: 1 in client.ended)
    finally:
        client.close()
    assert client.heads[1][b"x-priority"] == b"3,0"
