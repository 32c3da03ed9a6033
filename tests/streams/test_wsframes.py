"""The WebSocket short road (`multiplex.streams.wsframes`) against wsproto's.

The codec alone: its unmasking and its frames are wsproto's byte for byte, and it takes
exactly the frames it should, stopping at the first one it leaves to wsproto. Then the
two roads differentially, over real sockets: the same bytes, sent in the same pieces to
the echo app with the short road on and off, must draw the same bytes back (echoes,
pongs, close frames with their codes and reasons), for edge lengths, invalid UTF-8,
every protocol error the short road hands over, a stream split at every byte, and random
mixes of frames cut at random places.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode, XorMaskerSimple

from multiplex.streams import wsframes
from multiplex.streams.websocket import WebSocketStream
from multiplex.streams.wsframes import (
    data_frame,
    read_messages,
    unmask,
    unmask_in_python,
    wsproto_idle,
)
from tests import apps
from tests.conftest import RunningServer
from tests.wsraw import RawWS

Start = Callable[..., RunningServer]

LIMIT = 70_000  # the server's ws_max_message_size here: above 65,536, so 8-byte lengths fit
LENGTHS = [0, 1, 3, 4, 5, 125, 126, 127, 767, 768, 769, 1024, 65535, 65536, LIMIT]


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length_bytes: int | None = None,
) -> bytes:
    """A client frame built by hand, so that it may break any rule; `length_bytes` forces
    a 0-, 2- or 8-byte extended length (non-minimal encodings)."""
    n = len(payload)
    if length_bytes is None:
        length_bytes = 0 if n < 126 else 2 if n < 65536 else 8
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if length_bytes == 0:
        head = bytes((first, mask_bit | n))
    elif length_bytes == 2:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


def text(payload: str | bytes, **kwargs: Any) -> bytes:
    raw = payload.encode() if isinstance(payload, str) else payload
    return frame(Opcode.TEXT, raw, **kwargs)


def binary(payload: bytes, **kwargs: Any) -> bytes:
    return frame(Opcode.BINARY, payload, **kwargs)


def close_frame(code: int = 1000) -> bytes:
    return frame(Opcode.CLOSE, struct.pack("!H", code))


END_MARK = b"end of test"


# --- the codec alone -----------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 31, 32, 33, 767, 768, 769, 4096, 65537])
@pytest.mark.parametrize("road", ["as installed", "pure Python"])
def test_unmask_is_wsprotos(n: int, road: str) -> None:
    payload = os.urandom(n)
    key = os.urandom(4)
    function = unmask if road == "as installed" else unmask_in_python
    assert function(payload, key) == bytes(XorMaskerSimple(key).process(bytearray(payload)))


def test_the_c_masking_is_used_where_installed() -> None:
    """websockets is a test dependency, so the tests run the C road too."""
    assert wsframes._c_apply_mask is not None


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_data_frames_are_wsprotos(n: int) -> None:
    fp = FrameProtocol(client=False, extensions=[])
    data = os.urandom(n)
    assert data_frame(data, False) == bytes(fp.send_data(data))
    chars = "é" * (n // 2) + "x" * (n % 2)
    assert data_frame(chars.encode(), True) == bytes(fp.send_data(chars))


@pytest.mark.parametrize("n", LENGTHS)
def test_reads_whole_simple_frames(n: int) -> None:
    payload = bytes(random.Random(n).randrange(128) for _ in range(n))  # ASCII: valid text
    data = binary(payload) + text(payload) + text("é€𝄞")
    queue: deque[dict[str, Any]] = deque()
    assert read_messages(data, LIMIT, queue) == len(data)
    assert list(queue) == [
        {"type": "websocket.receive", "bytes": payload},
        {"type": "websocket.receive", "text": payload.decode()},
        {"type": "websocket.receive", "text": "é€𝄞"},
    ]
    assert type(queue[0]["bytes"]) is bytes


LEFT_TO_WSPROTO = {
    "ping": frame(Opcode.PING, b"p"),
    "pong": frame(Opcode.PONG, b"p"),
    "close": close_frame(),
    "first fragment": text("frag", fin=False),
    "continuation": frame(Opcode.CONTINUATION, b"x"),
    "rsv1": text("x", rsv=0x40),
    "rsv2": binary(b"x", rsv=0x20),
    "rsv3": binary(b"x", rsv=0x10),
    "unmasked": text("x", masked=False),
    "reserved opcode": frame(0x3, b"x"),
    "2-byte length for 125": binary(b"x" * 125, length_bytes=2),
    "8-byte length for 65535": binary(b"x" * 65535, length_bytes=8),
    "over the limit": binary(b"x" * (LIMIT + 1)),
    "bad utf-8": text(b"ok\xff"),
    "truncated utf-8": text(b"ok\xc3"),
    "surrogate": text(b"\xed\xa0\x80"),
    "overlong": text(b"\xc0\xaf"),
}
# What is sent over a socket: a frame that fails at its header goes without most of its
# payload, which the server would not read before closing (unread bytes at close make the
# kernel reset the connection, and the reset can destroy the close frame on its way).
ON_THE_WIRE = dict(LEFT_TO_WSPROTO)
ON_THE_WIRE["8-byte length for 65535"] = LEFT_TO_WSPROTO["8-byte length for 65535"][:30]
# Those that fail the connection (wsproto raises ParseFailed, or the size limit is hit).
FAILING = {
    k: v for k, v in ON_THE_WIRE.items() if k not in ("ping", "pong", "close", "first fragment")
}


@pytest.mark.parametrize("name", sorted(LEFT_TO_WSPROTO))
def test_stops_at_what_wsproto_must_read(name: str) -> None:
    first = text("before")
    data = first + LEFT_TO_WSPROTO[name] + text("after")
    queue: deque[dict[str, Any]] = deque()
    assert read_messages(data, LIMIT, queue) == len(first)
    assert list(queue) == [{"type": "websocket.receive", "text": "before"}]


def test_stops_at_an_incomplete_frame() -> None:
    whole = binary(b"y" * 300)
    for cut in range(len(whole)):
        queue: deque[dict[str, Any]] = deque()
        assert read_messages(whole[:cut], LIMIT, queue) == 0
        assert not queue


def test_wsproto_idle_follows_its_state() -> None:
    fp = FrameProtocol(client=False, extensions=[])
    assert wsproto_idle(fp)
    whole = binary(b"z" * 200)
    fp.receive_bytes(whole[:3])  # part of a header: buffered
    list(fp.received_frames())
    assert not wsproto_idle(fp)
    fp.receive_bytes(whole[3:20])  # a header and part of the payload: a frame in progress
    list(fp.received_frames())
    assert not wsproto_idle(fp)
    fp.receive_bytes(whole[20:])
    list(fp.received_frames())
    assert wsproto_idle(fp)
    fp.receive_bytes(text("a", fin=False))  # a whole frame of an unfinished message
    list(fp.received_frames())
    assert not wsproto_idle(fp)
    fp.receive_bytes(frame(Opcode.CONTINUATION, b"b"))
    list(fp.received_frames())
    assert wsproto_idle(fp)


# --- both roads over a socket ----------------------------------------------------------


@contextmanager
def road(short: bool) -> Iterator[None]:
    """Connections accepted inside take the short road or not (read at the accept)."""
    saved = WebSocketStream.short_road
    WebSocketStream.short_road = short
    try:
        yield
    finally:
        WebSocketStream.short_road = saved


def _send(ws: RawWS, pieces: list[bytes]) -> None:
    for index, piece in enumerate(pieces):
        if index:
            time.sleep(0.002)
        ws.sock.sendall(piece)


def exchange(port: int, short: bool, chunks: list[bytes], last: list[bytes]) -> bytes:
    """Everything the server sends back for `chunks`, then `last`, each sent on its own
    (with a pause, so that the server mostly reads them apart).

    After `chunks`, a marked text and ping, whose echo and pong say that every earlier
    frame was answered: so whether an echo beats the failure of the connection does not
    depend on timing. Then `last`, the pieces of what ends the connection (a bad frame, a
    close), or a close when it is empty; and everything until the end of TCP. Nothing is
    sent after a bad frame: data arriving at a closed socket would reset the connection,
    and the reset can destroy the close frame on its way.
    """
    with road(short):
        ws = RawWS(port)
    try:
        ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _send(ws, chunks)
        ws.sock.sendall(text(END_MARK) + frame(Opcode.PING, END_MARK))
        echo = bytes(FrameProtocol(client=False, extensions=[]).send_data(END_MARK.decode()))
        pong = bytes(FrameProtocol(client=False, extensions=[]).pong(END_MARK))
        received = ws.rest
        while True:
            data, controls = by_kind(received)
            if echo in data and pong in controls:
                break
            chunk = ws.sock.recv(65536)
            assert chunk, f"EOF before the end mark: {received[-200:]!r}"
            received += chunk
        _send(ws, last or [close_frame()])
        while chunk := ws.sock.recv(65536):
            received += chunk
        return received
    finally:
        ws.close()


def by_kind(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The server's frames, raw, as two lists in order: the data frames and the control
    frames. Their interleaving is left out: echoes come from the app's task and pongs
    from the control task, and which runs first depends on how TCP cut the bytes, which
    the pauses between chunks make likely but not certain."""
    frames: tuple[list[bytes], list[bytes]] = ([], [])
    pos = 0
    while len(data) - pos >= 2:
        length = data[pos + 1] & 0x7F
        head = 2 if length < 126 else 4 if length == 126 else 10
        if len(data) - pos < head:
            break
        if length >= 126:
            length = int.from_bytes(data[pos + 2 : pos + head], "big")
        end = pos + head + length
        if end > len(data):
            break  # not all there yet
        frames[1 if data[pos] & 0x08 else 0].append(data[pos:end])
        pos = end
    return frames


def _close_code_only(frame: bytes) -> bytes:
    # A close frame's reason from a UTF-8 error names a position in the piece wsproto
    # decoded, which depends on how TCP cut the frame; its code does not.
    return frame[:1] + frame[2:4] if frame[0] == 0x88 else frame


def same_on_both_roads(port: int, chunks: list[bytes], last: list[bytes] | None = None) -> bytes:
    short = exchange(port, True, chunks, last or [])
    long = exchange(port, False, chunks, last or [])
    short_data, short_controls = by_kind(short)
    long_data, long_controls = by_kind(long)
    where = f"chunks {[len(c) for c in chunks]}, last {[len(c) for c in last or []]}"
    assert short_data == long_data, where
    if last and len(last) > 1:
        short_controls = [_close_code_only(f) for f in short_controls]
        long_controls = [_close_code_only(f) for f in long_controls]
    assert short_controls == long_controls, where
    return short


@pytest.fixture
def port(run_server: Start) -> int:
    server = run_server(apps.WSEcho(), ws_max_message_size=LIMIT, ws_ping_interval=0)
    return server.port


def test_edge_lengths(port: int) -> None:
    for n in LENGTHS:
        payload = b"q" * n
        back = same_on_both_roads(port, [binary(payload) + text(payload)])
        assert bytes(FrameProtocol(client=False, extensions=[]).send_data(payload)) in back


@pytest.mark.parametrize("name", sorted(LEFT_TO_WSPROTO))
def test_what_wsproto_reads(port: int, name: str) -> None:
    other = ON_THE_WIRE[name]
    if name == "first fragment":
        other += frame(Opcode.CONTINUATION, b"ment")
    if name in FAILING or name == "close":
        back = same_on_both_roads(port, [text("before")], [other])
        assert back.count(b"\x88") >= 1  # a close frame came
        # and with that frame in two pieces
        same_on_both_roads(port, [text("before")], [other[:3], other[3:]])
    else:
        same_on_both_roads(port, [text("before") + other + text("after")])
        same_on_both_roads(port, [text("before"), other[:3], other[3:], text("after")])


def test_split_at_every_byte(port: int) -> None:
    stream = text("héllo") + frame(Opcode.PING, b"p") + binary(b"\x00\x01\x02") + text("ok")
    for cut in range(1, len(stream)):
        same_on_both_roads(port, [stream[:cut], stream[cut:]])
    for broken in (text(b"ab\xffcd"), text(b"a\xe2\x82")):  # invalid, truncated UTF-8
        for cut in range(1, len(broken)):
            same_on_both_roads(port, [text("héllo")], [broken[:cut], broken[cut:]])


def test_a_long_header_split_at_every_byte(port: int) -> None:
    stream = binary(b"w" * 300) + binary(b"v" * 65536)
    cuts = [*range(1, 9), 150, 306, *range(307, 318), len(stream) - 1]
    for cut in cuts:
        same_on_both_roads(port, [stream[:cut], stream[cut:]])


def _random_frames(rng: random.Random) -> list[bytes]:
    """One to six frames of any valid kind."""
    frames: list[bytes] = []
    for _ in range(rng.randrange(1, 7)):
        kind = rng.random()
        n = rng.choice([0, 1, rng.randrange(2, 126), rng.randrange(126, 1500), 65536])
        if kind < 0.35:
            frames.append(text("".join(rng.choice("aé€𝄞z ") for _ in range(n // 3))))
        elif kind < 0.6:
            frames.append(binary(rng.randbytes(n)))
        elif kind < 0.75:
            parts = [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(2, 4))]
            frames.append(binary(parts[0], fin=False))
            frames += [frame(Opcode.CONTINUATION, p, fin=False) for p in parts[1:-1]]
            frames.append(frame(Opcode.CONTINUATION, parts[-1]))
        elif kind < 0.85:
            frames.append(frame(Opcode.PING, rng.randbytes(rng.randrange(0, 126))))
        else:
            frames.append(frame(Opcode.PONG, rng.randbytes(rng.randrange(0, 126))))
    return frames


def _cut(rng: random.Random, data: bytes, most: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(most + 1))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_random_frames_cut_at_random(port: int) -> None:
    """Random valid frames cut in up to four pieces, and in two cases of five a frame that
    fails the connection after them, whole or in two pieces."""
    rng = random.Random(9)
    for _ in range(40):
        chunks = _cut(rng, b"".join(_random_frames(rng)), 3)
        last = None
        if rng.random() < 0.4:
            last = _cut(rng, FAILING[rng.choice(sorted(FAILING))], 1)
        same_on_both_roads(port, chunks, last)


# --- one writer at a time (WebSocketStream._write's baton) ------------------------------


class _SlowWire:
    """A wire whose every send waits until the test lets it finish, as a flow-control
    window would; it records what was written, in order."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gates: list[asyncio.Future[None]] = []

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.written.append(data[:1])  # the piece's start: it begins a frame
        await gate
        self.written.append(data[1:])  # and the rest, after the wait


def test_writers_take_turns_and_a_cancelled_one_passes_on() -> None:
    from multiplex.config import Config
    from multiplex.streams.seam import ConnectionInfo, Request, ServerState

    async def main() -> None:
        wire = _SlowWire()
        server = ServerState(apps.WSEcho(), Config(), {})
        info = ConnectionInfo("1.1", "http", ("127.0.0.1", 1), ("127.0.0.1", 2))
        stream = WebSocketStream(wire, 1, Request("GET", b"/", []), info, server)  # type: ignore[arg-type]
        first = asyncio.ensure_future(stream._write(b"AAAA"))
        second = asyncio.ensure_future(stream._write(b"BBBB"))
        third = asyncio.ensure_future(stream._write(b"CCCC"))
        fourth = asyncio.ensure_future(stream._write(b"DDDD"))
        await asyncio.sleep(0)
        assert len(wire.gates) == 1 and stream.writing  # the others wait their turn
        second.cancel()  # cancelled while waiting: leaves the queue
        wire.gates[0].set_result(None)
        await asyncio.sleep(0)
        third.cancel()  # handed the baton, cancelled before it ran: passes it on
        for _ in range(10):
            await asyncio.sleep(0)
            for gate in wire.gates:
                if not gate.done():
                    gate.set_result(None)
        await asyncio.wait_for(asyncio.gather(first, fourth), 10)  # a lost baton hangs
        assert second.cancelled() and third.cancelled()
        assert b"".join(wire.written) == b"AAAADDDD"  # never interleaved
        assert not stream.writing and not stream.writers

    asyncio.run(main())
