"""The PRIORITY_UPDATE reader for the client's HTTP/3 control stream, fed byte strings
the way QUIC delivers stream data: in order, cut anywhere."""

from __future__ import annotations

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import encode_frame

from multiplex.protocols.h3control import (
    MAX_TRACKED_STREAMS,
    PRIORITY_UPDATE_PUSH,
    PRIORITY_UPDATE_REQUEST,
    PrioritySniffer,
)

CONTROL = encode_uint_var(0x00)
SETTINGS = encode_frame(0x4, encode_uint_var(0x6) + encode_uint_var(4096))


def update(kind: int, element: int, value: bytes) -> bytes:
    return encode_frame(kind, encode_uint_var(element) + value)


def fed(
    sniffer: PrioritySniffer, stream_id: int, data: bytes, step: int
) -> list[tuple[bool, int, bytes]]:
    out = []
    for i in range(0, len(data), step):
        for u in sniffer.feed(stream_id, data[i : i + step]):
            out.append((u.push, u.element_id, u.value))
    return out


def test_updates_found_among_other_frames_whatever_the_cuts() -> None:
    data = (
        CONTROL
        + SETTINGS
        + update(PRIORITY_UPDATE_REQUEST, 8, b"u=1, i")
        + encode_frame(0x21, b"x" * 5000)  # a reserved/unknown frame, skipped unread
        + update(PRIORITY_UPDATE_PUSH, 3, b"u=6")
    )
    expected = [(False, 8, b"u=1, i"), (True, 3, b"u=6")]
    for step in (1, 2, 3, 7, 64, len(data)):
        assert fed(PrioritySniffer(), 2, data, step) == expected, step


def test_other_unidirectional_streams_are_ignored() -> None:
    sniffer = PrioritySniffer()
    qpack_encoder = encode_uint_var(0x02) + update(PRIORITY_UPDATE_REQUEST, 0, b"u=0")
    assert fed(sniffer, 6, qpack_encoder, 4) == []


def test_a_frame_too_short_for_its_element_is_reported() -> None:
    data = CONTROL + encode_frame(PRIORITY_UPDATE_REQUEST, b"")
    assert fed(PrioritySniffer(), 2, data, 1) == [(False, -1, b"")]


def test_an_overlong_field_value_is_skipped_not_buffered() -> None:
    sniffer = PrioritySniffer()
    data = CONTROL + update(PRIORITY_UPDATE_REQUEST, 0, b"u=1" + b" " * 5000)
    data += update(PRIORITY_UPDATE_REQUEST, 4, b"u=2")
    assert fed(sniffer, 2, data, 100) == [(False, 4, b"u=2")]
    assert len(sniffer._streams[2].buf) < 100


def test_tracked_streams_are_bounded() -> None:
    sniffer = PrioritySniffer()
    for n in range(MAX_TRACKED_STREAMS + 5):
        sniffer.feed(2 + 4 * n, encode_uint_var(0x54))  # some unknown stream type
    assert len(sniffer._streams) == MAX_TRACKED_STREAMS
