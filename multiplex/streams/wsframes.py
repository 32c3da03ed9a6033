"""The short road for WebSocket frames: the common case, decoded and built without wsproto.

Profiling the echo benchmark showed wsproto's frame layer at about half of our
per-message cost: a `Buffer` copy and commit, a `Header` and `RsvBits` named tuple, an
`Opcode(...)` enum lookup, a generator resumption and a fresh incremental UTF-8 decoder
for every frame, and a four-slice `translate` unmask. Most frames a server receives are
the simplest kind: one whole, masked, unfragmented text or binary frame with no reserved
bit, no extension, and its message is the frame. For those, this module reads the header
with a few integer tests, unmasks (in C when the websockets library is installed, else
with one big-integer XOR) and decodes text strictly in one `str` call.

Everything else stays with wsproto, in order: control frames, fragments, non-minimal
lengths, reserved bits, unmasked client frames, messages above the size limit, invalid
UTF-8, a frame not yet complete in the bytes at hand (wsproto then reports its partial
payloads, which is how an invalid text frame fails fast), and anything that arrives while
wsproto holds part of a frame or a message. The short road stops at the first such frame
and hands wsproto the rest, so wsproto never sees a gap: when the short road gives up on
a frame, wsproto reads that same frame from its first byte and produces its own error.

Sending: a text or binary message with no extension active is one FIN frame, unmasked
(the server's frames are never masked): two to ten bytes of header before the payload.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from wsproto.frame_protocol import FrameProtocol, XorMaskerSimple

try:
    # The websockets library's C masking, where it is installed (uvicorn[standard]
    # brings it; so does `pip install multiplex[speedups]`): 0.4 µs for 16 KiB against
    # 16 µs for wsproto's slices and 35 µs for the big-integer XOR (timeit here). Pure
    # Python below otherwise; the tests run both.
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - depends on what is installed
    apply_mask = None  # type: ignore[assignment]
_c_apply_mask: Callable[[bytes, bytes], bytes] | None = apply_mask

# FIN set, RSV1-3 clear, opcode TEXT / BINARY: the only first bytes the short road takes.
_TEXT_FIN = 0x81
_BINARY_FIN = 0x82
_MASKED = 0x80

# Up to this many bytes the big-integer XOR unmasks faster than wsproto's four
# `translate` slices; beyond it the slices win (timeit here: 0.40 vs 1.32 µs at 32 bytes,
# 1.72 vs 1.99 µs at 768, 2.34 vs 2.16 µs at 1024).
_INT_UNMASK_MAX = 768


def unmask(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the four-byte masking `key` repeated (RFC 6455 5.3)."""
    if _c_apply_mask is not None:
        return _c_apply_mask(payload, key)
    return unmask_in_python(payload, key)


def unmask_in_python(payload: bytes, key: bytes) -> bytes:
    """`unmask` without the C helper."""
    n = len(payload)
    if n > _INT_UNMASK_MAX:
        return bytes(XorMaskerSimple(key).process(bytearray(payload)))
    if not n:
        return b""
    keys = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ keys).to_bytes(n, "little")


# What `read_messages` calls: no wrapper in between (one call less per frame).
_unmask: Callable[[bytes, bytes], bytes] = (
    _c_apply_mask if _c_apply_mask is not None else unmask_in_python
)


def wsproto_idle(fp: FrameProtocol) -> bool:
    """Whether wsproto holds no byte, frame or message in progress.

    Only then may the short road read the next bytes: otherwise they continue something
    wsproto started. (wsproto keeps this state in private attributes; pinned by
    wsproto>=1.2, and the differential tests fail loudly if their meaning changes.)
    """
    decoder = fp._frame_decoder
    return decoder.header is None and not len(decoder.buffer) and fp._message_decoder.opcode is None


def read_messages(data: bytes, limit: int, queue: deque[dict[str, Any]]) -> int:
    """Append to `queue` the ASGI receive message of each whole simple frame at the start
    of `data` (see the module docstring), and return how many bytes they took; the bytes
    after that are wsproto's. `limit` is the largest message size (wsproto's road closes
    with 1009 beyond it, so the short road leaves such a frame to it).
    """
    n = len(data)
    pos = 0
    # Six bytes: the smallest masked frame (two of header, four of masking key).
    while n - pos >= 6:
        first = data[pos]
        second = data[pos + 1]
        if (first != _TEXT_FIN and first != _BINARY_FIN) or second < _MASKED:
            break
        length = second & 0x7F
        head = pos + 2
        if length == 126:
            length = (data[head] << 8) | data[head + 1]
            if length < 126:  # not the shortest encoding: a protocol error, wsproto's
                break
            head += 2
        elif length == 127:
            if n - head < 8:
                break
            length = int.from_bytes(data[head : head + 8], "big")
            if length <= 0xFFFF or length >> 63:  # not minimal, or the MSB set
                break
            head += 8
        if length > limit:
            break
        start = head + 4
        end = start + length
        if end > n:
            break
        payload = _unmask(data[start:end], data[head:start])
        if first == _TEXT_FIN:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # wsproto decodes it again and closes with its own 1007
            queue.append({"type": "websocket.receive", "text": text})
        else:
            queue.append({"type": "websocket.receive", "bytes": payload})
        pos = end
    return pos


def data_frame(payload: bytes, text: bool) -> bytes:
    """One unmasked FIN text or binary frame: what wsproto's `send_data` builds when no
    extension is active."""
    n = len(payload)
    first = _TEXT_FIN if text else _BINARY_FIN
    if n <= 125:
        return bytes((first, n)) + payload
    if n <= 0xFFFF:
        return bytes((first, 126, n >> 8, n & 0xFF)) + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload
