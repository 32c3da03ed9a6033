"""Our connection's frame dispatch (h2's _receive_frame without its eager trace repr)
against h2's own: the same events, the same frames queued and the same errors, read
after read, over well-behaved traffic and over the frames h2 answers with a stream or a
connection error (DATA or HEADERS on streams closed by END_STREAM, by our RST_STREAM or
implicitly, a stream ID too low, an even one, too many streams, a bad window)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from multiplex.config import Config
from multiplex.protocols.h2setup import new_h2_connection
from multiplex.protocols.http2 import _FRAME_HANDLERS, _Connection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
POST = [(b":method", b"POST"), *GET[1:]]


class _H2Dispatch(_Connection):
    """Ours in every way but the dispatch, which is h2's own."""

    _dispatch_frame = h2.connection.H2Connection._receive_frame

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        # h2's _receive_frame reads the table of bound handlers that ours does without.
        self._frame_dispatch_table = {
            kind: handler.__get__(self) for kind, handler in _FRAME_HANDLERS.items()
        }


def _headers(encoder: hpack.Encoder, stream_id: int, fields: Any, end: bool = True) -> Frame:
    frame = HeadersFrame(stream_id)
    frame.data = encoder.encode(fields)
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame


def _data(stream_id: int, data: bytes = b"x", end: bool = False) -> Frame:
    frame = DataFrame(stream_id)
    frame.data = data
    if end:
        frame.flags.add("END_STREAM")
    return frame


def _window(stream_id: int, delta: int) -> Frame:
    frame = WindowUpdateFrame(stream_id)
    frame.window_increment = delta
    return frame


def _rst(stream_id: int) -> Frame:
    frame = RstStreamFrame(stream_id)
    frame.error_code = ErrorCodes.CANCEL
    return frame


def _opening() -> list[Frame]:
    return [SettingsFrame(0), SettingsFrame(0, flags=["ACK"])]


def _script(name: str) -> list[Any]:
    """Reads (lists of frames) and, between them, server actions (strings)."""
    e = hpack.Encoder()  # one per call of _script
    ping = PingFrame(0)
    ping.opaque_data = b"12345678"
    priority = PriorityFrame(3)
    priority.depends_on = 1
    goaway = GoAwayFrame(0)
    goaway.last_stream_id = 0
    scripts: dict[str, Callable[[], list[Any]]] = {
        "requests": lambda: [
            _opening(),
            [_headers(e, 1, GET), _headers(e, 3, POST, end=False)],
            [_data(3, b"body"), _window(0, 1000), _window(3, 10), ping, priority],
            [_data(3, b"", end=True), _headers(e, 5, GET), goaway],
        ],
        "data after END_STREAM": lambda: [_opening(), [_headers(e, 1, GET)], [_data(1)]],
        "data after our reset": lambda: [
            _opening(),
            [_headers(e, 1, POST, end=False)],
            "reset 1",
            [_data(1), _data(1, end=True)],
        ],
        "data after their reset": lambda: [
            _opening(),
            [_headers(e, 1, POST, end=False)],
            [_rst(1)],
            [_data(1)],
        ],
        "headers on a stream ended": lambda: [
            _opening(),
            [_headers(e, 1, GET), _headers(e, 3, GET)],
            [_headers(e, 1, GET)],
        ],
        "headers below a newer stream": lambda: [
            _opening(),
            [_headers(e, 7, GET)],
            [_headers(e, 5, GET)],
        ],
        "headers on a stream we reset": lambda: [
            _opening(),
            [_headers(e, 1, POST, end=False), _headers(e, 3, GET)],
            "reset 1",
            [_headers(e, 1, GET)],
            [_data(1)],
        ],
        "even stream": lambda: [_opening(), [_headers(e, 2, GET)]],
        "window overflow": lambda: [
            _opening(),
            [_headers(e, 1, GET)],
            [_window(1, 2**31 - 1), _window(1, 2**31 - 1)],
        ],
        "zero window increment": lambda: [_opening(), [_headers(e, 1, GET)], [_window(1, 0)]],
        "too many streams": lambda: [
            _opening(),
            [_headers(e, 2 * n + 1, POST, end=False) for n in range(101)],
        ],
        "data on an idle stream": lambda: [_opening(), [_data(9)]],
        "rst on an idle stream": lambda: [_opening(), [_rst(9)]],
    }
    # Built one at a time: every script starts a new HPACK encoder state.
    return scripts[name]()


def _run(cls: type[_Connection], script: list[Any]) -> list[Any]:
    conn = new_h2_connection(Config(), cls)
    conn.initiate_connection()
    seen: list[Any] = [bytes(conn.data_to_send())]
    first = True
    for step in script:
        if isinstance(step, str):
            _, stream_id = step.split()
            conn.reset_stream(int(stream_id), ErrorCodes.INTERNAL_ERROR)
            seen.append(bytes(conn.data_to_send()))
            continue
        data = b"".join(frame.serialize() for frame in step)
        if first:
            data, first = PREFACE + data, False
        try:
            events = conn.receive_data(data)
        except Exception as exc:  # the error is what is compared
            seen.append((type(exc), str(exc), getattr(exc, "error_code", None)))
            seen.append(bytes(conn.data_to_send()))
            break
        seen.append([repr(event) for event in events])
        seen.append(bytes(conn.data_to_send()))
    seen.append((conn.state_machine.state, sorted(conn.streams), conn.resets_sent))
    return seen


@pytest.mark.parametrize(
    "name",
    [
        "requests",
        "data after END_STREAM",
        "data after our reset",
        "data after their reset",
        "headers on a stream ended",
        "headers below a newer stream",
        "headers on a stream we reset",
        "even stream",
        "window overflow",
        "zero window increment",
        "too many streams",
        "data on an idle stream",
        "rst on an idle stream",
    ],
)
def test_our_dispatch_is_h2s(name: str) -> None:
    assert _run(_Connection, _script(name)) == _run(_H2Dispatch, _script(name))
