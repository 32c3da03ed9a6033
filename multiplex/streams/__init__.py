"""The ASGI streams: `HTTPStream` and `WebSocketStream`, shared by every wire protocol."""

from __future__ import annotations

from typing import cast

from multiplex.streams.http import HTTPStream
from multiplex.streams.seam import (
    ConnectionInfo,
    Request,
    ServerState,
    Stream,
    WebSocketWire,
    WebTransportWire,
)
from multiplex.streams.websocket import WebSocketStream
from multiplex.streams.webtransport import WebTransportStream


def open_stream(
    wire: WebSocketWire, stream_id: int, request: Request, info: ConnectionInfo, server: ServerState
) -> HTTPStream | WebSocketStream | WebTransportStream:
    """The stream for a request the wire protocol has parsed (not started yet)."""
    if request.websocket:
        return WebSocketStream(wire, stream_id, request, info, server)
    if request.webtransport:
        # Only HTTP/3 recognises WebTransport requests, and its wire has the verbs.
        return WebTransportStream(cast(WebTransportWire, wire), stream_id, request, info, server)
    return HTTPStream(wire, stream_id, request, info, server)


__all__ = ["HTTPStream", "Stream", "WebSocketStream", "WebTransportStream", "open_stream"]
