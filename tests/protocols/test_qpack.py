"""The QPACK size bound against real encoders: for every block pylsqpack's encoder makes
(static and dynamic table references, Huffman-coded and raw literals, post-base
indices), the bound the walk computes is at least what the block decodes to."""

from __future__ import annotations

import os
import random

import pylsqpack
import pytest
from aioquic.h3.connection import QpackDecompressionFailed

from multiplex.protocols.qpack import decoded_size_bound, field_section_size

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
