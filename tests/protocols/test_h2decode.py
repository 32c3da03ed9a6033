"""The short road for blocks of one-byte indexed fields, against hpack's own Decoder: the
same fields (of the same types), the same errors and the same dynamic table after every
block, over blocks a real encoder makes and blocks made to sit on each edge of the road
(index 0, 126, 127 and past the table, a literal or a size update among indexed fields,
the header-list size limit, a table the peer did not shrink)."""

from __future__ import annotations

import random
import re
from typing import Any

import hpack
import pytest

from multiplex.protocols import h2decode

STATIC = len(hpack.table.HeaderTable.STATIC_TABLE)


def _outcome(decoder: hpack.Decoder, block: bytes) -> Any:
    try:
        fields = decoder.decode(block, raw=True)
    except Exception as exc:  # the error itself is what is compared
        # The message, but for the address of a memoryview some of them print.
        result: Any = (type(exc), re.sub(r"0x[0-9a-f]+", "0x", str(exc)))
    else:
        result = [(type(field), tuple(field)) for field in fields]
    table = decoder.header_table
    return result, list(table.dynamic_entries), table._current_size, table.maxsize


def _pair(
    max_header_list_size: int = 65536, max_allowed_table_size: int = 4096
) -> tuple[hpack.Decoder, h2decode.Decoder]:
    theirs, ours = hpack.Decoder(), h2decode.Decoder()
    for decoder in (theirs, ours):
        decoder.max_header_list_size = max_header_list_size
        decoder.max_allowed_table_size = max_allowed_table_size
    return theirs, ours


def _same(blocks: list[bytes], **limits: int) -> int:
    """Both decoders give the same outcome for every block; how many blocks our short
    road answered itself (it only reads the table, so asking first changes nothing)."""
    theirs, ours = _pair(**limits)
    short = 0
    for block in blocks:
        short += ours._indexed_only(block) is not None
        assert _outcome(ours, block) == _outcome(theirs, block), block.hex()
    return short


def _requests(n: int, seed: int) -> list[list[tuple[bytes, bytes]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        fields = [
            (b":method", rng.choice([b"GET", b"POST", b"HEAD"])),
            (b":scheme", b"https"),
            (b":authority", b"example.test"),
            (b":path", rng.choice([b"/", b"/index.html", b"/a/%d" % (i % 7)])),
            (b"user-agent", b"h2load nghttp2/1.64.0"),
        ]
        if rng.random() < 0.3:
            fields.append((b"x-long-%d" % rng.randrange(40), b"v" * rng.randrange(0, 600)))
        if rng.random() < 0.2:
            fields.append((b"cookie", b"id=%d" % rng.randrange(5)))
        out.append(fields)
    return out


def test_fields_a_real_encoder_sends() -> None:
    # Repeated requests: the dynamic table fills, entries are evicted, and most blocks
    # after the first few are indexed fields alone (the short road).
    for seed in range(5):
        encoder = hpack.Encoder()
        blocks = [encoder.encode(fields) for fields in _requests(300, seed)]
        assert sum(all(b >= 0x80 for b in block) for block in blocks) > 100
        # The short road, not hpack's decode, answered most of them.
        assert _same(blocks) > 100


@pytest.mark.parametrize("max_header_list_size", [0, 60, 100, 200, 300])
def test_the_header_list_size_limit(max_header_list_size: int) -> None:
    encoder = hpack.Encoder()
    blocks = [encoder.encode(fields) for fields in _requests(50, 1)]
    _same(blocks, max_header_list_size=max_header_list_size)


def test_edge_blocks() -> None:
    encoder = hpack.Encoder()
    # Fill the dynamic table with a few entries first (indices 62 onwards).
    filler = encoder.encode([(b"x-%d" % n, b"v" * n) for n in range(8)])
    edges = [
        b"",
        b"\x80",  # index 0
        b"\x82\x80",
        b"\x81",  # the first static entry
        bytes([0x80 + STATIC]),  # the last static entry
        bytes([0x80 + STATIC + 1]),  # the newest dynamic entry
        bytes([0x80 + STATIC + 8]),  # the oldest one
        bytes([0x80 + STATIC + 9]),  # just past the table
        b"\xfe",  # index 126: past this table
        b"\xff\x00",  # index 127, a two-byte integer
        b"\xff",  # a two-byte integer cut short
        b"\x82\x84\x40\x03x-a\x01b\x82",  # a literal with indexing among indexed fields
        b"\x82\x04\x01/",  # a literal without indexing (indexed name)
        b"\x3f\xe1\x1f\x82",  # a size update (4096) first
        b"\x82\x3f\xe1\x1f",  # a size update after a field
        b"\x20\x82",  # the table shrunk to 0, then an index
    ]
    for edge in edges:
        _same([filler, edge, filler, edge, bytes([0x80 + STATIC + 1]) * 3])


def test_a_table_the_peer_did_not_shrink() -> None:
    # Our SETTINGS_HEADER_TABLE_SIZE went down but the peer's blocks did not say so:
    # hpack refuses every block until it does, indexed-only ones included.
    theirs, ours = _pair()
    for decoder in (theirs, ours):
        decoder.header_table_size = 4096
        decoder.max_allowed_table_size = 1024
    for block in (b"\x82", b"", b"\x3f\xe1\x07\x82", b"\x82"):
        assert _outcome(ours, block) == _outcome(theirs, block)


def test_random_blocks() -> None:
    rng = random.Random(7)
    encoder = hpack.Encoder()
    fill = encoder.encode([(b"x-%d" % n, b"v" * n) for n in range(20)])
    blocks = [fill]
    for _ in range(3000):
        if rng.random() < 0.7:
            # Mostly indexed bytes, now and then anything.
            block = bytes(
                rng.randrange(0x80, 0x100) if rng.random() < 0.95 else rng.randrange(256)
                for _ in range(rng.randrange(0, 8))
            )
        else:
            block = encoder.encode(rng.choice(_requests(3, rng.randrange(100))))
        blocks.append(block)
    _same(blocks)


def test_the_server_connection_decodes_with_it() -> None:
    from multiplex.config import Config
    from multiplex.protocols.h2setup import new_h2_connection
    from multiplex.protocols.http2 import _Connection

    config = Config()
    conn = new_h2_connection(config, _Connection)
    assert type(conn.decoder) is h2decode.Decoder
    assert conn.decoder.max_header_list_size == config.h2_max_header_list_size
