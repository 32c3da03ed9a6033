"""Raw HTTP/2 frames over a blocking socket, for conformance tests in the spirit of h2spec.

Unlike a client built on the h2 library, nothing here validates what we send: frames are
packed by hand (`raw_frame`) so a test can put a SETTINGS frame on stream 1 or a HEADERS
frame on stream 0. What the server sends back is parsed with hyperframe and its header
blocks decoded with hpack.

Waiting is bounded by the socket timeout only; tests assert on what arrives (an error
code, a closed connection), never on how long it took.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 5.0

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xB
# Settings identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

Header = tuple[bytes, bytes]


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame exactly as given: no check of the type, flags, stream or length."""
    length = len(payload)
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings_payload(values: Mapping[int, int]) -> bytes:
    return b"".join(struct.pack(">HL", key, value) for key, value in values.items())


def window_update_payload(increment: int) -> bytes:
    return struct.pack(">L", increment)


def request_headers(
    path: str = "/",
    method: str = "GET",
    extra: Iterable[Header] = (),
    authority: str = "localhost",
) -> list[Header]:
    """A valid request's header list, plus `extra` regular fields at the end."""
    return [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
        *extra,
    ]


@dataclass
class Outcome:
    """How the server ended what a test provoked."""

    kind: str  # "goaway", "rst_stream" or "closed" (EOF / reset without a GOAWAY)
    error_code: int | None = None
    stream_id: int = 0  # the reset stream, for "rst_stream"
    last_stream_id: int | None = None  # for "goaway"
    frames: list[Frame] = field(default_factory=list)  # everything read on the way

    def __str__(self) -> str:
        return f"{self.kind} code={self.error_code} stream={self.stream_id}"


@dataclass
class Response:
    status: int
    headers: list[Header]
    body: bytes


class StreamReset(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


class RawH2:
    """One HTTP/2 connection on which the test writes bytes and reads frames."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.buffer = b""
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.server_settings: dict[int, int] = {}
        self.eof = False
        self._header_block: bytes | None = None

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # --- writing -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.send(raw_frame(kind, flags, stream_id, payload))

    def handshake(self, settings: Mapping[int, int] | None = None) -> dict[int, int]:
        """Preface and SETTINGS out; the server's SETTINGS in (and ACKed). Returns them."""
        self.send(PREFACE + raw_frame(SETTINGS, 0, 0, settings_payload(settings or {})))
        while True:
            frame = self.read_frame()
            if frame is None:
                raise ConnectionError("server closed the connection during the handshake")
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.server_settings = dict(frame.settings)
                self.send_frame(SETTINGS, ACK, 0)
                return self.server_settings

    def encode(self, headers: Iterable[Header]) -> bytes:
        # Never index: a test must be able to drop a header block without leaving the
        # server's dynamic table out of step with ours.
        return self.encoder.encode(list(headers), huffman=False)

    def send_headers(
        self,
        stream_id: int,
        headers: Iterable[Header],
        *,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> None:
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        self.send_frame(HEADERS, flags, stream_id, self.encode(headers))

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = True) -> None:
        self.send_frame(DATA, END_STREAM if end_stream else 0, stream_id, data)

    # --- reading -----------------------------------------------------------------

    def _read_exactly(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                return None
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self) -> Frame | None:
        """The next frame, or None once the server has closed the connection.
        Raises `TimeoutError` (socket.timeout) if nothing comes in time."""
        header = self._read_exactly(9)
        if header is None:
            return None
        frame, length = Frame.parse_frame_header(memoryview(header))
        payload = self._read_exactly(length)
        if payload is None:
            return None
        frame.parse_body(memoryview(payload))
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            # Decode every block, so the HPACK dynamic table stays in step.
            block = (self._header_block or b"") + frame.data
            if "END_HEADERS" in frame.flags:
                self._header_block = None
                frame.decoded = self.decoder.decode(block, raw=True)  # type: ignore[attr-defined]
            else:
                self._header_block = block
        return frame

    def read_until_error(self, stream_id: int | None = None) -> Outcome:
        """Read until a GOAWAY, a RST_STREAM (on `stream_id` if given) or the end of the
        connection. PINGs are answered, everything else is collected."""
        frames: list[Frame] = []
        while True:
            frame = self.read_frame()
            if frame is None:
                return Outcome("closed", frames=frames)
            frames.append(frame)
            if isinstance(frame, GoAwayFrame):
                return Outcome(
                    "goaway",
                    frame.error_code,
                    last_stream_id=frame.last_stream_id,
                    frames=frames,
                )
            if isinstance(frame, RstStreamFrame) and stream_id in (None, frame.stream_id):
                return Outcome("rst_stream", frame.error_code, frame.stream_id, frames=frames)

    def read_until_closed(self) -> list[Frame]:
        """Everything the server sends until it closes the connection."""
        frames: list[Frame] = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def ping(self, payload: bytes = b"barrier!") -> None:
        """Send a PING. Its ACK is a barrier: the server has processed all sent before."""
        self.send_frame(PING, 0, 0, payload)

    def frames_until_ping_ack(self) -> list[Frame]:
        """Every frame up to and including the next PING ACK."""
        frames: list[Frame] = []
        while True:
            frame = self.read_frame()
            if frame is None:
                raise ConnectionError(f"connection closed before the PING ACK: {frames}")
            frames.append(frame)
            if isinstance(frame, PingFrame) and "ACK" in frame.flags:
                return frames

    def read_ping_ack(self) -> PingFrame:
        frame = self.frames_until_ping_ack()[-1]
        assert isinstance(frame, PingFrame)
        return frame

    def read_response(self, stream_id: int) -> Response:
        """The response on `stream_id`; frames of other streams are skipped.
        Raises `StreamReset` on a RST_STREAM for it, a GOAWAY or the end of the connection."""
        status = 0
        headers: list[Header] = []
        body = b""
        while True:
            frame = self.read_frame()
            if frame is None:
                raise StreamReset(Outcome("closed"))
            if isinstance(frame, GoAwayFrame) and frame.error_code != NO_ERROR:
                raise StreamReset(
                    Outcome("goaway", frame.error_code, last_stream_id=frame.last_stream_id)
                )
            if frame.stream_id != stream_id:
                continue
            if isinstance(frame, RstStreamFrame):
                raise StreamReset(Outcome("rst_stream", frame.error_code, stream_id))
            if isinstance(frame, (HeadersFrame, ContinuationFrame)):
                decoded = getattr(frame, "decoded", None)
                if decoded is not None:
                    fields = [(bytes(n), bytes(v)) for n, v in decoded]
                    code = int(dict(fields).get(b":status", b"0"))
                    if code >= 200 and not status:
                        status = code
                    headers.extend((n, v) for n, v in fields if not n.startswith(b":"))
            elif isinstance(frame, DataFrame):
                body += frame.data
                if frame.flow_controlled_length:
                    # Give the credit back so large responses are not stalled.
                    increment = window_update_payload(frame.flow_controlled_length)
                    self.send_frame(WINDOW_UPDATE, 0, 0, increment)
                    if "END_STREAM" not in frame.flags:
                        self.send_frame(WINDOW_UPDATE, 0, stream_id, increment)
            if "END_STREAM" in frame.flags and status >= 200:
                return Response(status, headers, body)
