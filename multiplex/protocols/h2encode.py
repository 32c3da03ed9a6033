"""HPACK encoding of response heads without the dynamic table (RFC 7541).

hpack's encoder searches its dynamic and static tables and updates the dynamic one for
every field, in Python, on every response: on a hello response a fifth of the server's
time. Here each field is encoded on its own, statelessly: fully indexed when the static
table has the exact pair (`:status: 200`), else a literal without indexing (section
6.2.2) naming the static table's entry when there is one, with the value Huffman-coded
when that is shorter. Such a representation changes neither side's dynamic table, so it
can be computed once per distinct field and reused on every connection; and blocks from
here mix freely with blocks h2's own encoder makes for the same connection (trailers,
informational responses, pushes), whose dynamic table stays what the peer believes.

The price is bytes: a field the dynamic table would have sent as one index byte goes
as a literal every time (about 60 bytes instead of 6 for a hello response's head).
"""

from __future__ import annotations

from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# Static table indices (1-based, section 2.3.1): of each exact pair, and of the first
# entry with each name.
_STATIC_PAIRS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, _pair in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_PAIRS.setdefault(_pair, _index)
    _STATIC_NAMES.setdefault(_pair[0], _index)

# Encoded fields seen before: the same few (status, content-type, server, date, ...)
# come on most responses. Bounded, and only short fields are kept, so that per-response
# values (cookies, ETags) cannot grow it past about 256 KiB; it starts over when full.
_cache: dict[tuple[bytes, bytes], bytes] = {}
_CACHE_MAX = 1024
_CACHE_FIELD_MAX = 200


def _string(data: bytes) -> bytes:
    """A string literal (section 5.2), Huffman-coded when that is shorter."""
    coded = _huffman.encode(data)
    if len(coded) < len(data):
        return _with_flag(encode_integer(len(coded), 7), 0x80) + coded
    return bytes(encode_integer(len(data), 7)) + data


def _with_flag(prefix: bytearray, flag: int) -> bytes:
    prefix[0] |= flag
    return bytes(prefix)


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field's representation, touching no dynamic table."""
    index = _STATIC_PAIRS.get((name, value))
    if index is not None:
        return _with_flag(encode_integer(index, 7), 0x80)  # indexed (section 6.1)
    index = _STATIC_NAMES.get(name)
    if index is not None:
        # Literal without indexing, indexed name: 0000 + 4-bit prefix (section 6.2.2).
        return bytes(encode_integer(index, 4)) + _string(value)
    return b"\x00" + _string(name) + _string(value)


def encode_block(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A whole header block; names must already be lowercase."""
    cache = _cache
    parts = []
    for field in fields:
        encoded = cache.get(field)
        if encoded is None:
            name, value = field
            encoded = encode_field(name, value)
            if len(name) + len(value) <= _CACHE_FIELD_MAX:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[(name, value)] = encoded
        parts.append(encoded)
    return b"".join(parts)
