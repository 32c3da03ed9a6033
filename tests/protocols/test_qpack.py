"""The QPACK size bound against real encoders: for every block pylsqpack's encoder makes
(static and dynamic table references, Huffman-coded and raw literals, post-base
indices), the bound the walk computes is at least what the block decodes to."""

from __future__ import annotations

import os
import random

import pylsqpack
import pytest
from aioquic.h3 import connection as h3_connection
from aioquic.h3.connection import MessageError, QpackDecompressionFailed

from multiplex.protocols.qpack import (
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
    what aioquic's byte-by-byte ones do, with aioquic's own error."""
    for sample in _field_samples(seed):
        assert _outcome(fast_validate_header_name, sample) == _outcome(
            h3_connection.validate_header_name, sample
        ), sample
        assert _outcome(fast_validate_header_value, b"x", sample) == _outcome(
            h3_connection.validate_header_value, b"x", sample
        ), sample
