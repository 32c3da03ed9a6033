"""PRIORITY_UPDATE frames on the client's HTTP/3 control stream (RFC 9218 section 7.2).

aioquic's H3Connection parses the control stream but drops frame types it does not
know, PRIORITY_UPDATE among them. This reader sees the same bytes of the client's
unidirectional streams (QUIC delivers them in order), works out which one is the
control stream from its type, and picks out PRIORITY_UPDATE frames. Every other frame
is skipped as it arrives, so nothing is buffered beyond a frame header or one
priority field value.
"""

from __future__ import annotations

from multiplex.scheduling import MAX_PRIORITY_FIELD

CONTROL_STREAM_TYPE = 0x00
PRIORITY_UPDATE_REQUEST = 0xF0700
PRIORITY_UPDATE_PUSH = 0xF0701
# A client has its control stream, two QPACK streams and perhaps a few of its own.
MAX_TRACKED_STREAMS = 8


class PriorityUpdate:
    __slots__ = ("element_id", "push", "value")

    def __init__(self, push: bool, element_id: int, value: bytes) -> None:
        self.push = push  # the element is a push ID, not a request stream ID
        self.element_id = element_id
        self.value = value


def _varint(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """A QUIC variable-length integer at `pos`: (value, next position), or None when
    the buffer ends first (RFC 9000 section 16)."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    length = 1 << (first >> 6)
    if pos + length > len(buf):
        return None
    value = first & 0x3F
    for i in range(1, length):
        value = (value << 8) | buf[pos + i]
    return value, pos + length


class _UniStream:
    __slots__ = ("buf", "done", "skip", "stream_type")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.stream_type: int | None = None
        self.skip = 0  # payload bytes of a frame we do not read
        self.done = False  # not the control stream: nothing more to look at


class PrioritySniffer:
    """Feed it the client's unidirectional stream data; it returns the updates."""

    __slots__ = ("_streams",)

    def __init__(self) -> None:
        self._streams: dict[int, _UniStream] = {}

    def feed(self, stream_id: int, data: bytes) -> list[PriorityUpdate]:
        state = self._streams.get(stream_id)
        if state is None:
            if len(self._streams) >= MAX_TRACKED_STREAMS:
                return []
            state = self._streams[stream_id] = _UniStream()
        if state.done:
            return []
        if state.skip:
            n = min(state.skip, len(data))
            state.skip -= n
            data = data[n:]
        buf = state.buf
        buf += data
        updates: list[PriorityUpdate] = []
        pos = 0
        while True:
            if state.skip:
                n = min(state.skip, len(buf) - pos)
                state.skip -= n
                pos += n
                if state.skip:
                    break
            if state.stream_type is None:
                parsed = _varint(buf, pos)
                if parsed is None:
                    break
                state.stream_type, pos = parsed
                if state.stream_type != CONTROL_STREAM_TYPE:
                    state.done = True
                    buf.clear()
                    return updates
                continue
            header = _varint(buf, pos)
            if header is None:
                break
            frame_type, after_type = header
            length = _varint(buf, after_type)
            if length is None:
                break
            size, payload_at = length
            if frame_type not in (PRIORITY_UPDATE_REQUEST, PRIORITY_UPDATE_PUSH) or (
                size > MAX_PRIORITY_FIELD + 8
            ):
                pos = payload_at
                state.skip = size  # not ours, or too long to be a priority signal
                continue
            if len(buf) - payload_at < size:
                break  # wait for the whole (short) frame
            element = _varint(buf, payload_at)
            end = payload_at + size
            if element is not None and element[1] <= end:
                updates.append(
                    PriorityUpdate(
                        frame_type == PRIORITY_UPDATE_PUSH, element[0], bytes(buf[element[1] : end])
                    )
                )
            else:
                # A frame too short for its element ID: RFC 9114 section 7.1 calls
                # that H3_FRAME_ERROR; marked with a negative element for the caller.
                updates.append(PriorityUpdate(frame_type == PRIORITY_UPDATE_PUSH, -1, b""))
            pos = end
        del buf[:pos]
        return updates
