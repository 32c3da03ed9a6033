"""The h2 state machine as the HTTP/2 connection runs it: one builder, so that the
server (`multiplex/protocols/http2.py`) and the in-memory ceiling it is measured
against (`interop/benchmarks/h2ceiling.py`) cannot drift apart. A check switched on or
off here changes both, and the ceiling keeps measuring the h2 we actually run.
"""

from __future__ import annotations

from typing import TypeVar

import h2.config
import h2.connection
import h2.settings
from h2.utilities import SizeLimitDict

from multiplex.config import Config

# RFC 9218 section 2.1: we ignore the RFC 7540 priority tree and say so.
SETTINGS_NO_RFC7540_PRIORITIES = 0x9

C = TypeVar("C", bound=h2.connection.H2Connection)


def h2_configuration() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # Our stream layer lowercases and the connection filters connection headers:
        # skip h2's second pass over every outgoing header.
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        # Inbound blocks are checked by h2fields in one pass (h2's own check was a
        # sixth of the CPU time); request_from_fields joins cookies.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


def new_h2_connection(config: Config, cls: type[C]) -> C:
    """An h2 server connection of class `cls` (h2's own, or a subclass) with our
    configuration and the SETTINGS we announce, before initiate_connection."""
    conn = cls(h2_configuration())
    codes = h2.settings.SettingCodes
    conn.local_settings = h2.settings.Settings(
        client=False,
        initial_values={
            codes.MAX_CONCURRENT_STREAMS: config.h2_max_concurrent_streams,
            codes.INITIAL_WINDOW_SIZE: config.h2_initial_window_size,
            codes.MAX_FRAME_SIZE: config.h2_max_frame_size,
            codes.MAX_HEADER_LIST_SIZE: config.h2_max_header_list_size,
            codes.ENABLE_PUSH: 0,
            # RFC 8441: WebSockets over extended CONNECT.
            codes.ENABLE_CONNECT_PROTOCOL: 1,
            SETTINGS_NO_RFC7540_PRIORITIES: 1,  # type: ignore[dict-item]
        },
    )
    # h2 copied these two limits from its default settings in its __init__, and the
    # client's ACK of our first SETTINGS changes nothing it tracks: apply what we
    # announce. (Before the ACK this only accepts more: our frame size is >= 16384.)
    conn.max_inbound_frame_size = config.h2_max_frame_size
    conn.decoder.max_header_list_size = config.h2_max_header_list_size
    # h2 sizes its memory of finished streams from a class constant read in __init__
    # (65,536 entries): put the same kind of dict, empty as h2 left it, in its place.
    conn._closed_streams = SizeLimitDict(size_limit=config.h2_max_closed_streams)
    return conn


def open_connection_window(conn: h2.connection.H2Connection, config: Config) -> None:
    """Raise the connection's receive window from RFC 9113's 65,535 to ours."""
    extra = config.h2_connection_window_size - 65535
    if extra > 0:
        conn.increment_flow_control_window(extra)
