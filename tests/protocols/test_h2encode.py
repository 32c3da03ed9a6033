"""The stateless HPACK encoding of response heads: every block decodes (with any decoder
state, since it never touches the dynamic table) to exactly the fields given, and its
memo of encoded fields stays bounded."""

from __future__ import annotations

import hpack

from multiplex.protocols import h2encode

HEAD = [
    (b":status", b"200"),  # an exact static pair: one index byte
    (b":status", b"299"),  # a static name, a literal value
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
    (b"server", b"multiplex"),
    (b"date", b"Wed, 02 Dec 2026 18:40:00 GMT"),
    (b"x-not-static", b"\xff\x00 binary"),  # no static name; Huffman would be longer
    (b"x-empty", b""),
    (b"x-long", b"v" * 5000),  # longer than a 7-bit length prefix and than the memo takes
]


def test_blocks_decode_to_the_fields_and_leave_the_dynamic_table_empty() -> None:
    decoder = hpack.Decoder()
    encoder = hpack.Encoder()
    for _ in range(3):
        assert decoder.decode(h2encode.encode_block(HEAD), raw=True) == HEAD
        assert decoder.header_table._current_size == 0
    # Mixed with blocks of a real encoder on the same connection, both stay decodable.
    other = [(b":status", b"404"), (b"x-indexed", b"yes")]
    assert decoder.decode(encoder.encode(other), raw=True) == other
    assert decoder.decode(h2encode.encode_block(HEAD), raw=True) == HEAD
    assert decoder.decode(encoder.encode(other), raw=True) == other


def test_each_field_is_encoded_as_hpack_would_be_decoded() -> None:
    assert h2encode.encode_field(b":status", b"200") == b"\x88"  # static index 8
    assert hpack.Decoder().decode(h2encode.encode_field(b"etag", b'"x"'), raw=True) == [
        (b"etag", b'"x"')
    ]


def test_the_memo_is_bounded_and_skips_long_fields() -> None:
    for n in range(h2encode._CACHE_MAX + 50):
        h2encode.encode_block([(b"x-n", b"%d" % n)])
    assert len(h2encode._cache) <= h2encode._CACHE_MAX
    h2encode.encode_block([(b"x-long", b"v" * 5000)])
    assert (b"x-long", b"v" * 5000) not in h2encode._cache
