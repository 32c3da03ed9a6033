"""The QPACK size bound against real encoders: for every block pylsqpack's encoder makes
(static and dynamic table references, Huffman-coded and raw literals, post-base
indices), the bound the walk computes is at least what the block decodes to."""

from __future__ import annotations

import os
import random
from typing import Any

import pylsqpack
import pytest
from aioquic.h3 import connection as h3_connection
from aioquic.h3.connection import (
    H3_ALPN,
    FrameType,
    H3Connection,
    MessageError,
    QpackDecompressionFailed,
    encode_frame,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.packet import QuicFrameType

from multiplex.protocols import qpack
from multiplex.protocols.fields import request_from_fields
from multiplex.protocols.qpack import (
    BoundedH3Connection,
    decoded_size_bound,
    fast_validate_header_name,
    fast_validate_header_value,
    field_section_size,
)

CAPACITY = 4096


def header_lists(seed: int) -> list[list[tuple[bytes, bytes]]]:
    rng = random.Random(seed)
    names = [b"user-agent", b"cookie", b"x-custom", b"accept", b"content-type", b"x-rand"]
    lists = []
    for _ in range(200):
        fields = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a")]
        for _ in range(rng.randrange(0, 30)):
            name = rng.choice(names) if rng.random() < 0.7 else os.urandom(5).hex().encode()
            if rng.random() < 0.5:
                value = b"v" * rng.randrange(0, 3000)  # Huffman-friendly, may be inserted
            else:
                value = os.urandom(rng.randrange(0, 200)).hex().encode()
            fields.append((name, value))
        lists.append(fields)
    return lists


@pytest.mark.parametrize("seed", range(3))
def test_bound_covers_what_blocks_decode_to(seed: int) -> None:
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(CAPACITY, 16)
    encoder.apply_settings(CAPACITY, 16)  # lets the encoder use the dynamic table
    for stream, fields in enumerate(header_lists(seed)):
        stream_id = stream * 4
        instructions, block = encoder.encode(stream_id, fields)
        decoder.feed_encoder(instructions)
        ack, decoded = decoder.feed_header(stream_id, block)
        encoder.feed_decoder(ack)
        assert decoded == fields
        assert decoded_size_bound(block, CAPACITY) >= field_section_size(decoded)


def test_truncated_block_is_a_decompression_failure() -> None:
    _, block = pylsqpack.Encoder().encode(0, [(b"x-long", b"z" * 500)])
    with pytest.raises(QpackDecompressionFailed):
        decoded_size_bound(block[:-10], CAPACITY)


def _outcome(check: object, *args: bytes) -> str | None:
    try:
        check(*args)  # type: ignore[operator]
    except MessageError as exc:
        return str(exc)
    return None


def _field_samples(seed: int) -> list[bytes]:
    """Every single byte, every pair around the edges of the rules, and random fields
    biased towards the bytes the rules are about."""
    rng = random.Random(seed)
    edges = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x21, 0x3A, 0x40, 0x41, 0x5A, 0x5B, 0x61, 0x7E, 0x7F]
    edges += [0x80, 0xFF]
    samples = [b"", *(bytes([b]) for b in range(256))]
    samples += [bytes([a, b]) for a in edges for b in edges]
    pool = [*edges, *range(0x61, 0x7B)]
    for _ in range(3000):
        samples.append(bytes(rng.choice(pool) for _ in range(rng.randint(1, 12))))
    return samples


@pytest.mark.parametrize("seed", range(3))
def test_fast_field_checks_agree_with_aioquic(seed: int) -> None:
    """The regular-expression checks the request path uses accept and refuse exactly
    what aioquic's byte-by-byte ones do, with aioquic's own error; the names taken as
    known good without the regular expression are good by aioquic's check too."""
    for name in qpack._KNOWN_GOOD_NAMES:
        assert _outcome(h3_connection.validate_header_name, name) is None, name
    known = sorted(qpack._KNOWN_GOOD_NAMES)
    near_known = [name.upper() for name in known] + [name + b" " for name in known]
    for sample in [*_field_samples(seed), *known, *near_known]:
        assert _outcome(fast_validate_header_name, sample) == _outcome(
            h3_connection.validate_header_name, sample
        ), sample
        assert _outcome(fast_validate_header_value, b"x", sample) == _outcome(
            h3_connection.validate_header_value, b"x", sample
        ), sample


# --- the request-stream receive path: ours against aioquic's ------------------------------


def _handshaken_server(dev_certs: Any) -> QuicConnection:
    """A server QuicConnection after a real handshake with aioquic's client, in memory."""
    server_config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    server_config.load_cert_chain(str(dev_certs.cert), str(dev_certs.key))
    client_config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    client_config.load_verify_locations(str(dev_certs.ca_cert))
    client_config.server_name = "localhost"
    client = QuicConnection(configuration=client_config)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )
    client.connect(("127.0.0.1", 4433), now=0.0)
    for _ in range(10):
        for sender, receiver, source in ((client, server, 1234), (server, client, 4433)):
            for data, _ in sender.datagrams_to_send(now=0.0):
                receiver.receive_datagram(data, ("127.0.0.1", source), now=0.0)
    assert server._handshake_complete
    while server.next_event() is not None:
        pass
    return server


class AioquicPath(BoundedH3Connection):
    """Ours in every way but the receive path of request streams: aioquic's."""

    _receive_stream_data = H3Connection._receive_stream_data


def _h3(cls: type[BoundedH3Connection], quic: QuicConnection) -> BoundedH3Connection:
    return cls(
        quic,
        enable_webtransport=False,
        max_table_capacity=CAPACITY,
        blocked_streams=16,
        max_field_section_size=65536,
    )


def _request_streams(seed: int) -> list[list[tuple[int, bytes, bool]]]:
    """Sequences of (stream, bytes, fin) for request streams: well-formed requests
    whole and cut at random points, and the malformed kinds aioquic refuses."""
    rng = random.Random(seed)
    encoder = pylsqpack.Encoder()
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
    post = [(b":method", b"POST"), *get[1:], (b"content-length", b"5")]

    def headers(fields: list[tuple[bytes, bytes]], stream_id: int = 0) -> bytes:
        return encode_frame(FrameType.HEADERS, encoder.encode(stream_id, fields)[1])

    data = encode_frame(FrameType.DATA, b"hello")
    cases: list[bytes] = [
        headers(get),
        headers(post) + data,
        headers(post) + data + headers([(b"x-trailer", b"1")]),
        headers(post) + encode_frame(FrameType.DATA, b"hello!"),  # over content-length
        headers(post) + encode_frame(FrameType.DATA, b"hi"),  # under it
        data,  # DATA before HEADERS
        headers([(b":method", b"GET"), (b"Upper", b"x")]),
        headers([(b":method", b"GET"), (b":path", b"/")]),  # no :authority
        headers([*get, (b"connection", b"close")]),
        headers([(b"x", b"1"), *get]),  # pseudo-header after a field
        encode_frame(FrameType.SETTINGS, b""),  # not on a request stream
        encode_frame(0x21, b"reserved") + headers(get),
        headers(get)[:-1],  # cut short
        headers(get) + headers(get) + headers(get),
    ]
    # What the short road for a stream's first data takes, and its near misses: one
    # whole HEADERS frame with or without FIN, a two-byte frame length, a frame cut
    # short or followed by more, a block that refers to table entries not yet there
    # (resumed by the encoder stream), an empty frame, a mismatched content-length.
    big = [*get, (b"user-agent", b"u" * 80)]
    assert len(headers(big)) > 66  # a two-byte frame length
    dynamic = pylsqpack.Encoder()
    instructions = dynamic.apply_settings(CAPACITY, 16)
    entry = [*get, (b"x-entry", b"v" * 20)]
    dynamic.encode(0, entry)  # lsqpack inserts a field it has seen before
    inserts, block = dynamic.encode(0, entry)
    instructions += inserts
    assert inserts and block[0] != 0  # refers to the dynamic table
    blocked = encode_frame(FrameType.HEADERS, block)
    encoder_stream = b"\x02" + instructions
    sequences = [
        [(0, headers(big), True)],
        [(0, headers(big), False), (0, data, True)],
        [(0, headers(big)[:-1], True)],
        [(0, headers(get) + b"\x00", True)],
        [(0, headers(get)[:-1], False), (0, headers(get)[-1:], True)],
        [(0, blocked, True), (2, encoder_stream, False)],
        [(0, blocked, False), (2, encoder_stream, False), (0, b"", True)],
        [(0, blocked, False), (0, data, False), (2, encoder_stream, False), (0, b"", True)],
        [(0, encode_frame(FrameType.HEADERS, b""), True)],
        [(0, headers([*get, (b"content-length", b"5")]), True)],
        [(0, headers([*get, (b"content-length", b"0")]), True)],
        [(0, b"\x01\x80\x00\x00\x03" + headers(get)[2:], True)],  # 4-byte length
    ]
    for case in cases:
        sequences.append([(0, case, True)])
        cut = sorted(rng.sample(range(len(case) + 1), min(3, len(case) + 1)))
        pieces = [case[a:b] for a, b in zip([0, *cut], [*cut, len(case)], strict=True)]
        sequences.append([(0, piece, i == len(pieces) - 1) for i, piece in enumerate(pieces)])
        sequences.append([(0, case, False), (4, headers(get, 4), True), (0, b"", True)])
    return sequences


def _outcomes(h3: BoundedH3Connection, sequence: list[tuple[int, bytes, bool]]) -> Any:
    events = []
    for stream_id, data, fin in sequence:
        event = StreamDataReceived(data=data, end_stream=fin, stream_id=stream_id)
        events.append(h3.handle_event(event))
    close = h3._quic._close_event
    closed = (close.error_code, close.reason_phrase) if close is not None else None
    return events, closed, sorted(h3._stream)


@pytest.mark.parametrize("seed", range(3))
def test_request_stream_receive_path_agrees_with_aioquic(seed: int, dev_certs: Any) -> None:
    """Our receive path for request streams gives the same events, the same connection
    errors and keeps the same streams as aioquic's, for well-formed requests whole and
    in pieces and for malformed ones."""
    for sequence in _request_streams(seed):
        ours = _outcomes(_h3(BoundedH3Connection, _handshaken_server(dev_certs)), sequence)
        theirs = _outcomes(_h3(AioquicPath, _handshaken_server(dev_certs)), sequence)
        assert ours == theirs, sequence


def _request_field_lists(seed: int) -> list[list[tuple[bytes, bytes]]]:
    """Request field lists around every rule of aioquic's validate_headers: pseudo-headers
    missing, repeated, unknown, late or empty, content-length, te, connection-specific
    fields, and names and values with the bytes the field rules are about."""
    rng = random.Random(seed)
    pseudo = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/"),
    ]
    extra_pseudo = [(b":protocol", b"websocket"), (b":status", b"200"), (b":scheme", b"ftp")]
    extra_pseudo += [(b":path", b""), (b":authority", b""), (b":method", b"POST")]
    regular = [(b"user-agent", b"x"), (b"accept", b"*/*"), (b"content-length", b"5")]
    regular += [(b"content-length", b"-1"), (b"content-length", b"x"), (b"te", b"trailers")]
    regular += [(b"te", b"gzip"), (b"connection", b"close"), (b"keep-alive", b"1")]
    regular += [(b"Upper", b"x"), (b"x", b" lead"), (b"x", b"trail\t"), (b"x", b"a\rb")]
    regular += [(b"", b""), (b"x:y", b"1"), (b"x", b"")]
    lists = [list(pseudo)]
    for _ in range(3000):
        fields = [field for field in pseudo if rng.random() < 0.9]
        if rng.random() < 0.1:
            rng.shuffle(fields)
        for _ in range(rng.randrange(0, 3)):
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(extra_pseudo))
        for _ in range(rng.randrange(0, 4)):
            fields.append(rng.choice(regular) if rng.random() < 0.5 else (b"x-a", b"b"))
        if rng.random() < 0.1:
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(pseudo))
        lists.append(fields)
    return lists


def _validated(fields: list[tuple[bytes, bytes]], validate: Any) -> tuple[str | None, Any]:
    stream = h3_connection.H3Stream(0)
    try:
        validate(fields, stream)
    except MessageError as exc:
        return str(exc), stream.expected_content_length
    return None, stream.expected_content_length


@pytest.mark.parametrize("seed", range(3))
def test_request_field_validation_agrees_with_aioquic(seed: int) -> None:
    """The one-pass check of the usual request accepts and refuses what aioquic's
    validate_request_headers does, with its error, and records the same content-length."""
    for fields in _request_field_lists(seed):
        assert _validated(fields, qpack._validate_request_headers) == _validated(
            fields, h3_connection.validate_request_headers
        ), fields


def _request_outcome(
    fields: list[tuple[bytes, bytes]], webtransport: bool, max_size: int, combined: bool
) -> tuple[Any, ...]:
    """What a request's fields come to: aioquic's error or the request (or refusal
    status) request_from_fields makes, and the content-length recorded on the stream."""
    stream = h3_connection.H3Stream(0)
    try:
        if combined:
            request = qpack.validated_request(fields, stream, webtransport, max_size)
        else:
            h3_connection.validate_request_headers(fields, stream)
            request = request_from_fields(fields, webtransport, max_size)
    except MessageError as exc:
        return str(exc), stream.expected_content_length
    if isinstance(request, int):
        return request, stream.expected_content_length
    made = (request.method, request.raw_target, request.headers, request.expect_continue)
    kinds = (request.websocket, request.webtransport)
    return made, kinds, stream.expected_content_length


def test_a_usual_request_is_built_by_the_one_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above would hold even if validated_request always fell back to
    the two functions: a usual request (cookies, host, expect included) must not."""

    def fallback(*args: Any) -> Any:
        raise AssertionError("validated_request took the two-function road")

    monkeypatch.setattr(qpack, "request_from_fields", fallback)
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"localhost"),
        (b":path", b"/upload?x=1"),
        (b"user-agent", b"x"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"expect", b"100-continue"),
    ]
    request = qpack.validated_request(fields, h3_connection.H3Stream(0), False, 65536)
    assert not isinstance(request, int)
    assert (request.method, request.raw_target, request.expect_continue) == (
        "POST",
        b"/upload?x=1",
        True,
    )
    assert request.headers == [
        (b"host", b"localhost"),
        (b"user-agent", b"x"),
        (b"expect", b"100-continue"),
        (b"cookie", b"a=1; b=2"),
    ]


@pytest.mark.parametrize("seed", range(3))
def test_request_built_with_the_field_check_agrees(seed: int) -> None:
    """validated_request, one walk that checks the fields and notes the request, gives
    what aioquic's validate_request_headers and then request_from_fields give: the same
    error, request, refusal status (431, 405, 501) and recorded content-length."""
    rng = random.Random(seed)
    extra = [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"host", b"example.org")]
    extra += [(b"expect", b"100-continue"), (b"expect", b"100-Continue"), (b"expect", b"x")]
    extra += [(b"x-long", b"v" * 300), (b":protocol", b"webtransport")]
    extra += [(b":protocol", b"chat"), (b":method", b"CONNECT"), (b"priority", b"u=1")]
    for fields in _request_field_lists(seed):
        for _ in range(rng.randrange(0, 4)):
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(extra))
        webtransport = rng.random() < 0.5
        max_size = rng.choice([0, 200, 400, 65536])
        assert _request_outcome(fields, webtransport, max_size, True) == _request_outcome(
            fields, webtransport, max_size, False
        ), (fields, webtransport, max_size)


# --- the response send path: head and body in one write against aioquic's two -----------


def _sent(h3: BoundedH3Connection, combined: bool, case: tuple[Any, ...]) -> Any:
    request, headers, body, end = case
    # The client's request stream, as its first STREAM frame would open it.
    h3._quic._get_or_create_stream(QuicFrameType.STREAM_BASE, 0)
    h3.handle_event(StreamDataReceived(data=request[0], end_stream=request[1], stream_id=0))
    if combined:
        h3.send_response(0, headers, body, end)
    else:
        H3Connection.send_headers(h3, 0, headers)
        H3Connection.send_data(h3, 0, body, end)
    if not end:
        H3Connection.send_data(h3, 0, b"more", True)  # the stream goes on as before
    quic = h3._quic
    encoder = quic._streams[h3._local_encoder_stream_id].sender  # type: ignore[index]
    sender = quic._streams[0].sender
    state = h3._stream[0].headers_send_state if 0 in h3._stream else None
    stream_bytes = bytes(sender._buffer), sender._buffer_fin, bytes(encoder._buffer)
    return stream_bytes, sorted(h3._stream), state


def test_head_and_body_in_one_write_agree_with_aioquic(dev_certs: Any) -> None:
    """send_response puts on the request stream (and the QPACK encoder stream) the same
    bytes and end of stream as aioquic's send_headers and send_data, and leaves the same
    HTTP/3 stream state: for bodies empty, short, at the one-byte length boundary and
    large, ending the stream or not, for a request whole or still coming, and for heads
    that go into the dynamic table."""
    encoder = pylsqpack.Encoder()
    get = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]
    whole = (encode_frame(FrameType.HEADERS, encoder.encode(0, get)[1]), True)
    coming = (encode_frame(FrameType.HEADERS, encoder.encode(0, get)[1]), False)
    heads = [
        [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")],
        [(b":status", b"404"), (b"x-custom", b"v" * 200), (b"set-cookie", b"id=" + b"c" * 90)],
    ]
    bodies = [b"", b"Hello, world!", b"x" * 63, b"x" * 64, b"x" * 16_383, b"x" * 70_000]
    cases = 0

    def fresh() -> BoundedH3Connection:
        return _h3(BoundedH3Connection, _handshaken_server(dev_certs))

    for request in (whole, coming):
        for headers in heads:
            for body in bodies:
                for end in (True, False):
                    case = (request, headers, body, end)
                    ours = _sent(fresh(), True, case)
                    theirs = _sent(fresh(), False, case)
                    assert ours == theirs, (request[1], headers, len(body), end)
                    cases += 1
    assert cases == 48
