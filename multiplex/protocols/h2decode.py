"""HPACK decoding of request header blocks made only of one-byte indexed fields.

A client that sends the same request fields again (h2load; a browser's method, scheme,
authority, user agent and accept fields) sends most blocks as indexed representations
alone (RFC 7541 section 6.1), one byte each while the index is below 127. hpack's
Decoder handles each with a memoryview slice, an integer decode, two log calls, two
HeaderTuples and two bytes() copies: about a tenth of the server's time on hello
requests. `Decoder.decode` looks each one up in the table directly; any other block (a
literal, a table size update, a longer integer, index 0, an index past the table, a
list over the size limit) goes to hpack's own decode from its start, so every error and
every change to the dynamic table is hpack's. Indexed fields change no table, so the
short road leaves the decoder as hpack's would.
"""

from __future__ import annotations

from collections.abc import Iterable

import hpack
from hpack.struct import HeaderTuple
from hpack.table import HeaderTable

# The static table as the HeaderTuples hpack returns for it (immutable, so shared).
_STATIC = [HeaderTuple(name, value) for name, value in HeaderTable.STATIC_TABLE]
_STATIC_LENGTH = len(_STATIC)
_new_field = tuple.__new__  # HeaderTuple(name, value) without its Python-level __new__
_ENTRY_OVERHEAD = 32  # RFC 7541 section 4.1, as hpack's table_entry_size counts it


class Decoder(hpack.Decoder):
    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if raw:  # h2 always asks for bytes
            fields = self._indexed_only(data)
            if fields is not None:
                return fields
        return super().decode(data, raw)

    def _indexed_only(self, data: bytes) -> list[HeaderTuple] | None:
        """The block's fields if it holds only one-byte indexed fields and passes
        hpack's checks; None for anything hpack's decode must see."""
        dynamic = self.header_table.dynamic_entries
        limit = self.max_header_list_size
        size = 0
        fields = []
        for byte in data:
            # 0x81 to 0xFE: indexed, index 1 to 126 (0x80 is index 0, an error; 0xFF
            # starts a multi-byte index).
            index = byte - 0x81
            if index < 0 or byte == 0xFF:
                return None
            if index < _STATIC_LENGTH:
                field = _STATIC[index]
            else:
                index -= _STATIC_LENGTH
                if index >= len(dynamic):
                    return None
                field = _new_field(HeaderTuple, dynamic[index])
            size += _ENTRY_OVERHEAD + len(field[0]) + len(field[1])
            if size > limit:
                return None
            fields.append(field)
        if self.header_table_size > self.max_allowed_table_size:
            return None  # hpack raises for a table the peer has not shrunk
        return fields
