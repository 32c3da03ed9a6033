"""The ASGI streams: `HTTPStream` and `WebSocketStream`, shared by every wire protocol."""

from __future__ import annotations

from multiplex.streams.http import HTTPStream
from multiplex.streams.seam import ConnectionInfo, Request, ServerState, Stream, WebSocketWire
from multiplex.streams.websocket import WebSocketStream


def open_stream(
    wire: WebSocketWire, stream_id: int, request: Request, info: ConnectionInfo, server: ServerState
) -> HTTPStream | WebSocketStream:
    """The stream for a request the wire protocol has parsed (not started yet)."""
    if request.websocket:
        return WebSocketStream(wire, stream_id, request, info, server)
    return HTTPStream(wire, stream_id, request, info, server)


__all__ = ["HTTPStream", "Stream", "WebSocketStream", "open_stream"]
