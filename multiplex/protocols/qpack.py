"""QPACK limits for HTTP/3: the dynamic table and blocked streams we announce come from
the config, and no header block gets decoded that could blow up in memory.

aioquic hard-codes its QPACK settings (4096 bytes of table, 16 blocked streams) and
announces no SETTINGS_MAX_FIELD_SECTION_SIZE; pylsqpack decodes a whole block into
Python bytes before anyone can look at its size. A block of one-byte references to a
4 KiB dynamic table entry expands about 4,000 times (a QPACK bomb: 1 GiB from the 256
KiB a request stream's window lets in). So before decoding, a cheap walk over the
block's field lines (integers and string lengths, nothing decoded) bounds what it can
decode to; a block whose bound is over `BOMB_FACTOR` times the limit closes the
connection (H3_EXCESSIVE_LOAD), one under it is decoded and then measured exactly by
the protocol, which refuses it with 431 if it is over the limit.
"""

from __future__ import annotations

import logging
import re
import types
from typing import Any

import aioquic.h3.connection as h3_connection
import pylsqpack
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    H3Stream,
    HeadersState,
    ProtocolError,
    QpackDecompressionFailed,
    Setting,
    encode_frame,
    is_interim_response,
)
from aioquic.h3.events import H3Event, HeadersReceived
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived

from multiplex.protocols.fields import FIELD_OVERHEAD, build_request, request_from_fields
from multiplex.streams.seam import Headers, Request

logger = logging.getLogger("multiplex")

# A block that could decode to this many times the limit is not decoded at all. Legitimate
# blocks reach their bound only by referring to large dynamic entries many times: 16 times
# the 64 KiB default still allows 256 references to full 4 KiB entries.
BOMB_FACTOR = 16
# Static table entries are all under 96 bytes with the overhead (RFC 9204 appendix A).
STATIC_ENTRY_BOUND = 128


# aioquic checks every request field byte by byte in Python (validate_header_name and
# validate_header_value, RFC 9114 section 4.2 / RFC 9113 section 8.2.1): a tenth of the
# HTTP/3 request path. The same rules as one regular expression each, run in C:
# a name is lowercase visible ASCII with a colon only in first place; a value has no
# NUL, CR or LF and neither starts nor ends with a space or tab.
_NAME_OK = re.compile(rb":?[\x21-\x39\x3b-\x40\x5b-\x7e]*").fullmatch
# Written as what a good value is (empty, or a first and last byte that are neither
# whitespace nor NUL, CR, LF, with none of those three between): one left-to-right pass.
# The same rule as a search for what is bad ("[\x00\n\r]|\A[\t ]|[\t ]\Z") tries
# three alternatives at every byte: 0.56 against 0.26 us a value (timeit, six usual
# request values).
_VALUE_OK = re.compile(rb"[^\x00\n\r\t ](?:[^\x00\n\r]*[^\x00\n\r\t ])?|").fullmatch
# The field names of QPACK's static table (RFC 9204 appendix A), plus :protocol, host,
# te and priority: the names nearly every request carries, known good, so a set lookup
# (about 30 ns) saves the regular expression (about 200 ns) for them. Checked against
# _NAME_OK below.
_KNOWN_GOOD_NAMES = frozenset(
    b"""
    :authority :path :method :scheme :status :protocol age content-disposition
    content-length cookie date etag if-modified-since if-none-match last-modified link
    location referer set-cookie accept accept-encoding accept-ranges
    access-control-allow-headers access-control-allow-origin cache-control content-encoding
    content-type range strict-transport-security vary x-content-type-options
    x-xss-protection accept-language access-control-allow-credentials
    access-control-allow-methods access-control-expose-headers
    access-control-request-headers access-control-request-method alt-svc authorization
    content-security-policy early-data expect-ct forwarded if-range origin purpose server
    timing-allow-origin upgrade-insecure-requests user-agent x-forwarded-for
    x-frame-options host te priority
    """.split()
)
assert all(_NAME_OK(name) is not None for name in _KNOWN_GOOD_NAMES)


def fast_validate_header_name(key: bytes) -> None:
    if key not in _KNOWN_GOOD_NAMES and _NAME_OK(key) is None:
        h3_connection.validate_header_name(key)  # raises aioquic's own MessageError


def fast_validate_header_value(key: bytes, value: bytes) -> None:
    if _VALUE_OK(value) is None:
        h3_connection.validate_header_value(key, value)  # raises aioquic's own MessageError


# aioquic's request-frame handling and header validation, unchanged, but looking up the
# two per-field checks above: the functions are rebound to a copy of aioquic's module
# namespace, so nothing changes for any other user of aioquic in the process.
_NAMESPACE = dict(vars(h3_connection))
_NAMESPACE["validate_header_name"] = fast_validate_header_name
_NAMESPACE["validate_header_value"] = fast_validate_header_value


def _rebound(function: Any) -> Any:
    copy = types.FunctionType(
        function.__code__, _NAMESPACE, function.__name__, function.__defaults__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    return copy


for _name in (
    "validate_headers",
    "validate_request_headers",
    "validate_response_headers",
    "validate_push_promise_headers",
    "validate_trailers",
):
    _NAMESPACE[_name] = _rebound(getattr(h3_connection, _name))

# aioquic's validate_request_headers builds its two sets of pseudo-header names on every
# request; the same call with the sets built once.
_REQUEST_PSEUDO_ALLOWED = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
_REQUEST_PSEUDO_REQUIRED = frozenset((b":method", b":authority"))
_validate_headers = _NAMESPACE["validate_headers"]


# Regular fields aioquic's validate_headers looks at more closely than their bytes.
_REQUEST_FIELDS_CHECKED = frozenset(
    (b"content-length", b"te", *h3_connection.CONNECTION_SPECIFIC_HEADERS)
)


def _validate_request_headers(headers: Any, stream: Any = None) -> None:
    """The usual request in one pass, with the field checks inlined: pseudo-headers
    first, each allowed and once, the required ones there, regular fields none of
    which has a rule of its own. Anything else (and every error) goes through aioquic's
    validate_headers, which also records content-length on the stream."""
    seen: set[bytes] = set()
    regular = False
    authority = path = b""
    for key, value in headers:
        if (key not in _KNOWN_GOOD_NAMES and _NAME_OK(key) is None) or _VALUE_OK(value) is None:
            break
        if key[:1] == b":":
            if regular or key not in _REQUEST_PSEUDO_ALLOWED or key in seen:
                break
            seen.add(key)
            if key == b":authority":
                authority = value
            elif key == b":path":
                path = value
        elif key in _REQUEST_FIELDS_CHECKED:
            break
        else:
            regular = True
    else:
        if _REQUEST_PSEUDO_REQUIRED <= seen and authority and path:
            return
    _validate_headers(
        headers,
        allow_te=True,
        allowed_pseudo_headers=_REQUEST_PSEUDO_ALLOWED,
        required_pseudo_headers=_REQUEST_PSEUDO_REQUIRED,
        stream=stream,
    )


_NAMESPACE["validate_request_headers"] = _validate_request_headers


def validated_request(
    headers: Headers, stream: H3Stream, webtransport: bool, max_size: int
) -> Request | int:
    """`_validate_request_headers` and then `fields.request_from_fields`, in one walk
    over the usual request's fields instead of two: what the check passes is noted for
    the request on the way. Anything the one-pass check would send to aioquic's
    validate_headers takes both functions in turn, and so raises aioquic's error."""
    seen: set[bytes] = set()
    regular = host = expect = False
    method = authority = path = protocol = b""
    out: Headers = []
    cookies: list[bytes] = []
    size = 0
    for key, value in headers:
        if (key not in _KNOWN_GOOD_NAMES and _NAME_OK(key) is None) or _VALUE_OK(value) is None:
            break
        size += len(key) + len(value) + FIELD_OVERHEAD
        if key[:1] == b":":
            if regular or key not in _REQUEST_PSEUDO_ALLOWED or key in seen:
                break
            seen.add(key)
            if key == b":method":
                method = value
            elif key == b":path":
                path = value
            elif key == b":authority":
                authority = value
            elif key == b":protocol":
                protocol = value
        elif key in _REQUEST_FIELDS_CHECKED:
            break
        else:
            regular = True
            if key == b"cookie":
                cookies.append(value)
                continue
            if key == b"host":
                host = True
            elif key == b"expect" and not expect:
                expect = value.lower() == b"100-continue"
            out.append((key, value))
    else:
        if _REQUEST_PSEUDO_REQUIRED <= seen and authority and path:
            return build_request(
                method,
                path,
                authority,
                protocol,
                out,
                cookies,
                host,
                expect,
                size,
                webtransport,
                max_size,
            )
    _validate_request_headers(headers, stream)
    return request_from_fields(headers, webtransport, max_size)


# A frame 0x00 (DATA) header for payloads under 64 bytes: one varint byte of length.
_SHORT_DATA_HEADERS = [bytes((FrameType.DATA, n)) for n in range(64)]
_DATA_TYPE = encode_uint_var(FrameType.DATA)


def _data_frame_head(size: int) -> bytes:
    """The type and length that come before a DATA frame's payload of `size` bytes."""
    if size < 64:
        return _SHORT_DATA_HEADERS[size]
    return _DATA_TYPE + encode_uint_var(size)


class ExcessiveLoad(ProtocolError):
    error_code = ErrorCode.H3_EXCESSIVE_LOAD


class BoundedH3Connection(H3Connection):
    """aioquic's H3Connection with our QPACK settings and a size bound on decoding."""

    def __init__(
        self,
        quic: QuicConnection,
        *,
        enable_webtransport: bool,
        max_table_capacity: int,
        blocked_streams: int,
        max_field_section_size: int,
        client: Any = None,
    ) -> None:
        # Read by _get_local_settings(), which the base __init__ calls to send SETTINGS.
        self._limits = (max_table_capacity, blocked_streams, max_field_section_size)
        self._client = client
        self._webtransport = enable_webtransport
        # Requests built by the short road's field check (`validated_request`), by
        # stream, until the protocol takes them with their HeadersReceived event.
        self.requests: dict[int, Request | int] = {}
        super().__init__(quic, enable_webtransport=enable_webtransport)
        self._max_table_capacity = max_table_capacity
        self._blocked_streams = blocked_streams
        # The base made a 4096/16 decoder; nothing has reached it yet.
        self._decoder = pylsqpack.Decoder(max_table_capacity, blocked_streams)
        self.max_field_section_size = max_field_section_size
        # What a reference to a table entry (static or dynamic) can decode to at most.
        self._entry_bound = max(max_table_capacity, STATIC_ENTRY_BOUND)

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        capacity, blocked, field_section = self._limits
        settings[Setting.QPACK_MAX_TABLE_CAPACITY] = capacity
        settings[Setting.QPACK_BLOCKED_STREAMS] = blocked
        settings[Setting.MAX_FIELD_SECTION_SIZE] = field_section
        return settings

    # The request-frame handler with the fast field checks (see _rebound above).
    _handle_request_or_push_frame = _rebound(H3Connection._handle_request_or_push_frame)

    def _receive_stream_data(self, event: StreamDataReceived) -> list[H3Event]:
        """aioquic's, without its per-call context manager (a generator and its
        enter and exit, for every request), for client request streams; other
        streams take aioquic's own path."""
        stream_id = event.stream_id
        if stream_id & 3:  # unidirectional, or server-initiated
            return super()._receive_stream_data(event)
        stream = self._stream.get(stream_id)
        if stream is None:
            stream = self._stream[stream_id] = H3Stream(stream_id)
            if self._quic_logger is None:
                events = self._whole_request_head(stream, event.data, event.end_stream)
                if events is not None:
                    return events
        try:
            return self._receive_request_or_push_data(stream, event.data, event.end_stream)
        finally:
            # As aioquic's context manager: forget a stream done both ways.
            if stream.is_ended():
                self._stream.pop(stream_id)

    def _whole_request_head(
        self, stream: H3Stream, data: bytes, stream_ended: bool
    ) -> list[H3Event] | None:
        """The usual request stream's first data, exactly one whole HEADERS frame (a
        GET with its FIN, or a head whose body is still to come), handled as aioquic's
        frame loop would, leaving the stream in the state it would leave it in; None
        (nothing touched) for anything else, which takes aioquic's loop. aioquic's
        loop costs a Buffer, two varint reads, a frame-type check that builds a tuple
        of reserved types each time and a keyword call per frame."""
        if len(data) < 3 or data[0] != FrameType.HEADERS:
            return None
        length = data[1]
        if length < 0x40:
            start = 2
        elif length < 0x80:
            length = (length & 0x3F) << 8 | data[2]
            start = 3
        else:
            return None
        if len(data) != start + length:
            return None
        frame_data = data[start:]
        stream_id = stream.stream_id
        if stream_ended:
            stream.receiving_ended = True
        try:
            headers = self._decode_headers(stream_id, frame_data)
        except pylsqpack.StreamBlocked:
            # As aioquic leaves a blocked head: resumed when the encoder stream
            # brings the table entries it refers to.
            stream.blocked = True
            stream.blocked_frame_size = len(frame_data)
            stream.blocked_frame_type = FrameType.HEADERS
            return []
        # Checked and made into the request in one walk; the protocol takes it from
        # `requests` when it gets the event.
        self.requests[stream_id] = validated_request(
            headers, stream, self._webtransport, self.max_field_section_size
        )
        if stream_ended:
            self._check_content_length(stream)
        stream.headers_recv_state = HeadersState.AFTER_HEADERS
        return [HeadersReceived(headers=headers, stream_id=stream_id, stream_ended=stream_ended)]

    def _encode_headers(self, stream_id: int, headers: Any) -> bytes:
        # As aioquic's, minus the empty write to the encoder stream that most header
        # blocks would make (a full stream send in aioquic for no bytes).
        encoder, frame_data = self._encoder.encode(stream_id, headers)
        if encoder:
            assert self._local_encoder_stream_id is not None  # opened in __init__
            self._encoder_bytes_sent += len(encoder)
            self._quic.send_stream_data(self._local_encoder_stream_id, encoder)
        return frame_data

    def _final_head_short_road(self, stream: H3Stream, headers: Any) -> bool:
        """Whether a head may skip aioquic's send_headers: the stream's first head, a
        final one, and no qlog to write."""
        return (
            stream.headers_send_state == HeadersState.INITIAL
            and self._quic_logger is None
            and not is_interim_response(headers)
        )

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False) -> None:
        """aioquic's send_headers, without its context manager, for the usual case: a
        final response head on a request stream (interim heads, trailers, pushes, qlog
        and anything unusual take aioquic's own path)."""
        stream = self._stream.get(stream_id)
        if stream is None or not self._final_head_short_road(stream, headers):
            super().send_headers(stream_id, headers, end_stream)
            return
        frame = encode_frame(FrameType.HEADERS, self._encode_headers(stream_id, headers))
        stream.headers_send_state = HeadersState.AFTER_HEADERS
        if end_stream:
            self._end_sending(stream)
        self._quic.send_stream_data(stream_id, frame, end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """aioquic's send_data without its context manager and Buffer, where the head
        is sent (else aioquic's path raises as it should)."""
        stream = self._stream.get(stream_id)
        if (
            stream is None
            or stream.headers_send_state != HeadersState.AFTER_HEADERS
            or self._quic_logger is not None
        ):
            super().send_data(stream_id, data, end_stream)
            return
        if end_stream:
            self._end_sending(stream)
        self._quic.send_stream_data(stream_id, _data_frame_head(len(data)) + data, end_stream)

    def send_response(self, stream_id: int, headers: Any, data: bytes, end_stream: bool) -> None:
        """`send_headers` then `send_data`, as one write to QUIC where both take the
        short road above: the usual response's head and body cost aioquic one
        send_stream_data instead of two. Anything else takes the two calls."""
        stream = self._stream.get(stream_id)
        if stream is None or not self._final_head_short_road(stream, headers):
            self.send_headers(stream_id, headers)
            self.send_data(stream_id, data, end_stream)
            return
        head = encode_frame(FrameType.HEADERS, self._encode_headers(stream_id, headers))
        stream.headers_send_state = HeadersState.AFTER_HEADERS
        if end_stream:
            self._end_sending(stream)
        frames = b"".join((head, _data_frame_head(len(data)), data))  # one copy of the body
        self._quic.send_stream_data(stream_id, frames, end_stream)

    def _end_sending(self, stream: H3Stream) -> None:
        """The stream's last bytes are going out: forget it if it is done both ways, as
        aioquic's context manager would."""
        stream.finish_sending()
        if stream.is_ended():
            del self._stream[stream.stream_id]

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> Any:
        # frame_data is None when a blocked block resumes: it was measured on arrival.
        # Every byte of a block is at most one reference, so short blocks (the usual
        # request's few dozen bytes) need no walk.
        ceiling = BOMB_FACTOR * self.max_field_section_size
        if frame_data is not None and len(frame_data) * self._entry_bound > ceiling:
            bound = decoded_size_bound(frame_data, self._entry_bound)
            if bound > ceiling:
                logger.warning(
                    "HTTP/3 connection from %s: a %d-byte QPACK block on stream %d could"
                    " decode to %d bytes, over %d x quic_max_field_section_size = %d;"
                    " closing with H3_EXCESSIVE_LOAD",
                    self._client,
                    len(frame_data),
                    stream_id,
                    bound,
                    BOMB_FACTOR,
                    self.max_field_section_size,
                )
                raise ExcessiveLoad("header block too large")
        # As aioquic's, minus the empty write to the decoder stream that a block
        # without dynamic references would make.
        try:
            if frame_data is None:
                decoder, headers = self._decoder.resume_header(stream_id)
            else:
                decoder, headers = self._decoder.feed_header(stream_id, frame_data)
        except pylsqpack.DecompressionFailed as exc:
            raise QpackDecompressionFailed() from exc
        if decoder:
            assert self._local_decoder_stream_id is not None  # opened in __init__
            self._decoder_bytes_sent += len(decoder)
            self._quic.send_stream_data(self._local_decoder_stream_id, decoder)
        return headers


def field_section_size(headers: list[tuple[bytes, bytes]]) -> int:
    """The decoded size of a header list as RFC 9114 section 4.2.2 counts it."""
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + FIELD_OVERHEAD
    return size


def decoded_size_bound(block: bytes, entry_bound: int) -> int:
    """An upper bound on what an encoded field section (RFC 9204 section 4.5) decodes
    to, by RFC 9114's measure, without decoding it: each reference to a table entry
    counts `entry_bound`, each string literal its length (8/5 of it if Huffman-coded:
    no Huffman code is shorter than 5 bits). A malformed block fails here as it would
    in the decoder: QPACK_DECOMPRESSION_FAILED."""
    try:
        _, pos = _integer(block, 0, 8)  # Required Insert Count
        _, pos = _integer(block, pos, 7)  # sign bit and Delta Base
        total = 0
        end = len(block)
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field line
                _, pos = _integer(block, pos, 6)
                total += entry_bound
            elif first & 0xC0 == 0x40:  # literal with name reference
                _, pos = _integer(block, pos, 4)
                size, pos = _string(block, pos, 7)
                total += entry_bound + size
            elif first & 0xE0 == 0x20:  # literal with literal name
                name, pos = _string(block, pos, 3)
                value, pos = _string(block, pos, 7)
                total += name + value + FIELD_OVERHEAD
            elif first & 0xF0 == 0x10:  # indexed field line, post-base index
                _, pos = _integer(block, pos, 4)
                total += entry_bound
            else:  # literal with post-base name reference
                _, pos = _integer(block, pos, 3)
                size, pos = _string(block, pos, 7)
                total += entry_bound + size
        if pos > end:
            raise IndexError
    except IndexError:
        raise QpackDecompressionFailed() from None
    return total


def _integer(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An integer with an N-bit prefix (RFC 7541 section 5.1) at `pos`; the value and
    the position after it."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 62:
            raise IndexError  # no QPACK integer is this long


def _string(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """A string literal whose length has an N-bit prefix and whose Huffman flag is the
    bit above it: the most it decodes to, and the position after it."""
    huffman = data[pos] & (1 << prefix)
    length, pos = _integer(data, pos, prefix)
    pos += length
    if pos > len(data):
        raise IndexError
    return (length * 8 // 5 if huffman else length), pos
