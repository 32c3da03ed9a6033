"""The ASGI WebTransport session: one per extended CONNECT with `:protocol webtransport`
(HTTP/3 only; WebTransport over HTTP/3, draft-ietf-webtrans-http3, as Chromium speaks it).

The messages follow the convention of aioquic's example server, the closest thing to a
standard, with what it leaves out added (a proposed extension, see README.md):

- in: `webtransport.connect`; `webtransport.datagram.receive` {data};
  `webtransport.stream.receive` {stream, data, end}; `webtransport.stream.reset`
  {stream, code}; `webtransport.stream.opened` {stream, unidirectional} (the answer to
  the app's `webtransport.stream.open`, ahead of anything else); `webtransport.disconnect`
  {code, reason} once, when the session ends for any reason.
- out: `webtransport.accept` {headers}; `webtransport.close` {code, reason} (or, before
  accepting, {status} to deny with that HTTP status, 403 by default);
  `webtransport.datagram.send` {data}; `webtransport.stream.send` {stream, data, end};
  `webtransport.stream.open` {unidirectional, data, end}; `webtransport.stream.reset`
  {stream, code}.

Limits: stream data is credited back to the client only once the app has received it
(flow control bounds what waits here); datagrams are unreliable by definition, so at most
`webtransport_max_datagrams` wait for the app and the rest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from multiplex.errors import ClientDisconnected
from multiplex.streams.common import base_scope, log_access, start_app_task
from multiplex.streams.seam import (
    ConnectionInfo,
    Request,
    ServerState,
    WebTransportWire,
)

logger = logging.getLogger("multiplex")

# Life cycle.
CONNECTING, OPEN, CLOSED, DENIED = range(4)

# Capsules on the CONNECT stream (draft-ietf-webtrans-http3 section 5).
CLOSE_SESSION = 0x2843
DRAIN_SESSION = 0x78AE
MAX_CAPSULE = 8192  # a CLOSE capsule's message is at most 1024 bytes
# The message a CLOSE capsule may carry, in bytes (draft section 5).
MAX_CLOSE_REASON = 1024


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    if pos >= len(buf):
        return None
    length = 1 << (buf[pos] >> 6)
    if pos + length > len(buf):
        return None
    value = buf[pos] & 0x3F
    for i in range(1, length):
        value = (value << 8) | buf[pos + i]
    return value, pos + length


def close_capsule(code: int, reason: str) -> bytes:
    """CLOSE_WEBTRANSPORT_SESSION: a 32-bit application code and a UTF-8 message."""
    from aioquic.buffer import encode_uint_var

    payload = (code & 0xFFFFFFFF).to_bytes(4, "big") + reason.encode()[:MAX_CLOSE_REASON]
    return encode_uint_var(CLOSE_SESSION) + encode_uint_var(len(payload)) + payload


class WebTransportStream:
    """A WebTransport session and its app task. The session ID is the CONNECT stream's."""

    def __init__(
        self,
        wire: WebTransportWire,
        stream_id: int,
        request: Request,
        info: ConnectionInfo,
        server: ServerState,
    ) -> None:
        self.wire = wire
        self.stream_id = stream_id
        self.request = request
        self.info = info
        self.server = server
        self.config = server.config
        self.state = CONNECTING
        self.messages: deque[dict[str, Any]] = deque([{"type": "webtransport.connect"}])
        self.datagrams_queued = 0
        self.datagrams_dropped = 0
        self.unread: dict[int, int] = {}  # stream data queued for the app, per stream
        self.streams: set[int] = set()  # open WebTransport streams of this session
        self.disconnected = False  # webtransport.disconnect is (to be) delivered
        self.disconnect_message: dict[str, Any] | None = None
        self.capsules = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.status = 0
        self.start_time = 0.0
        scope = base_scope("webtransport", request, info, server, "https", dict(info.extensions))
        self.scope = scope

    # --- from the wire -----------------------------------------------------------------

    def start(self) -> None:
        import time

        self.start_time = time.monotonic()
        self.task = start_app_task(self.server, self._run())

    def feed_body(self, data: bytes) -> None:
        """Capsules on the CONNECT stream (HTTP/3 DATA frames' payload)."""
        self.wire.consumed(self.stream_id, len(data))
        self.capsules += data
        buf = self.capsules
        pos = 0
        while True:
            kind = _varint(buf, pos)
            length = _varint(buf, kind[1]) if kind else None
            if kind is None or length is None:
                break
            size, start = length
            if size > MAX_CAPSULE:
                self._end(0, "capsule too large")
                self.wire.wt_close(self.stream_id, 0, "")
                return
            if len(buf) - start < size:
                break
            payload = bytes(buf[start : start + size])
            pos = start + size
            if kind[0] == CLOSE_SESSION and len(payload) >= 4:
                code = int.from_bytes(payload[:4], "big")
                reason = payload[4:].decode("utf-8", "replace")
                self._end(code, reason)
            # DRAIN and unknown capsule types: nothing for us to do (RFC 9297 section 3.2).
        del buf[:pos]

    def feed_end(self) -> None:
        """The client finished the CONNECT stream: the session is over (code 0)."""
        self._end(0, "")

    def feed_disconnect(self) -> None:
        self._end(0, "connection lost" if self.state != CLOSED else "")

    def going_away(self) -> None:
        # Graceful shutdown: tell the client (DRAIN would only ask it to finish).
        if self.state == OPEN:
            self.state = CLOSED
            self.wire.wt_close(self.stream_id, 0, "server shutting down")
            self._end(0, "server shutting down")

    def feed_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.disconnected:
            self.wire.consumed(stream_id, len(data))
            return
        self.streams.add(stream_id)
        self.unread[stream_id] = self.unread.get(stream_id, 0) + len(data)
        self.messages.append(
            {"type": "webtransport.stream.receive", "stream": stream_id, "data": data, "end": end}
        )
        if end:
            self.streams.discard(stream_id)
        self._wake()

    def feed_stream_reset(self, stream_id: int, code: int) -> None:
        if self.disconnected:
            return
        self.streams.discard(stream_id)
        self.messages.append(
            {"type": "webtransport.stream.reset", "stream": stream_id, "code": code}
        )
        self._wake()

    def feed_datagram(self, data: bytes) -> None:
        if self.disconnected or self.state != OPEN:
            return
        if self.datagrams_queued >= self.config.webtransport_max_datagrams:
            self.datagrams_dropped += 1
            if self.datagrams_dropped in (1, 1000) or self.datagrams_dropped % 100_000 == 0:
                logger.info(
                    "WebTransport session %s from %s: app is not keeping up, %d datagrams"
                    " dropped so far (webtransport_max_datagrams = %d)",
                    self.stream_id,
                    self.info.client,
                    self.datagrams_dropped,
                    self.config.webtransport_max_datagrams,
                )
            return
        self.datagrams_queued += 1
        self.messages.append({"type": "webtransport.datagram.receive", "data": data})
        self._wake()

    def owns(self, stream_id: int) -> bool:
        return stream_id in self.streams

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    def _end(self, code: int, reason: str) -> None:
        """The session is over: the app gets webtransport.disconnect once, and the
        session's streams are reset."""
        if self.disconnected:
            return
        self.disconnected = True
        if self.state != DENIED:
            self.state = CLOSED
        self.disconnect_message = {
            "type": "webtransport.disconnect",
            "code": code,
            "reason": reason,
        }
        self.wire.wt_end_session(self.stream_id)
        # What the app will no longer read gives its credit back.
        for stream_id, unread in self.unread.items():
            if unread:
                self.wire.consumed(stream_id, unread)
        self.unread.clear()
        self.messages.clear()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the app's receive -------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while True:
            if self.messages:
                message = self.messages.popleft()
                kind = message["type"]
                if kind == "webtransport.stream.receive":
                    stream_id = message["stream"]
                    n = len(message["data"])
                    if n:
                        self.unread[stream_id] -= n
                        self.wire.consumed(stream_id, n)
                elif kind == "webtransport.datagram.receive":
                    self.datagrams_queued -= 1
                return message
            if self.disconnected and self.disconnect_message is not None:
                return self.disconnect_message
            waiter = asyncio.get_running_loop().create_future()
            self.waiter = waiter
            await waiter

    # --- the app's send ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "webtransport.accept":
            if self.state != CONNECTING:
                raise RuntimeError("webtransport.accept: the session is not waiting to be accepted")
            if self.disconnected:
                raise ClientDisconnected(f"WebTransport session {self.stream_id}: gone")
            headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            self.wire.accept_webtransport(self.stream_id, headers)
            self.status = 200
            self.state = OPEN
            return
        if kind == "webtransport.close":
            await self._close(message)
            return
        if kind not in (
            "webtransport.datagram.send",
            "webtransport.stream.send",
            "webtransport.stream.open",
            "webtransport.stream.reset",
        ):
            raise RuntimeError(f"unknown ASGI message type {kind!r} for a WebTransport session")
        if self.state == CONNECTING:
            raise RuntimeError(f"{kind}: accept the session first")
        if self.disconnected or self.state != OPEN:
            raise ClientDisconnected(f"WebTransport session {self.stream_id} is closed")
        if kind == "webtransport.datagram.send":
            data = _bytes(message, "data")
            self.wire.wt_send_datagram(self.stream_id, data)
        elif kind == "webtransport.stream.send":
            stream_id = self._own_stream(message)
            await self.wire.wt_send(stream_id, _bytes(message, "data"), bool(message.get("end")))
        elif kind == "webtransport.stream.open":
            unidirectional = bool(message.get("unidirectional", False))
            stream_id = self.wire.wt_open(self.stream_id, unidirectional)
            self.messages.appendleft(
                {
                    "type": "webtransport.stream.opened",
                    "stream": stream_id,
                    "unidirectional": unidirectional,
                }
            )
            data = _bytes(message, "data") if "data" in message else b""
            end = bool(message.get("end"))
            if data or end:
                await self.wire.wt_send(stream_id, data, end)
        else:  # webtransport.stream.reset
            stream_id = self._own_stream(message)
            self.wire.wt_reset(stream_id, int(message.get("code", 0)))

    def _own_stream(self, message: dict[str, Any]) -> int:
        """The message's stream, if it is one of this session's we may send on."""
        stream_id = message.get("stream")
        if type(stream_id) is not int or not self.wire.wt_stream_of(stream_id, self.stream_id):
            kind = message.get("type")
            raise ValueError(f"{kind}: no stream {stream_id!r} this session may send on")
        return stream_id

    async def _close(self, message: dict[str, Any]) -> None:
        if self.state == CONNECTING:
            status = message.get("status", 403)
            if type(status) is not int or not 400 <= status <= 599:
                raise ValueError(f"webtransport.close: deny status must be 400-599, got {status!r}")
            self.state = DENIED
            self.status = status
            if not self.disconnected:
                self.wire.send_head(self.stream_id, status, [(b"content-length", b"0")], True)
            self._end(0, "denied")
            return
        if self.state != OPEN or self.disconnected:
            return  # closed already: nothing more to say
        code = message.get("code", 0)
        reason = message.get("reason", "") or ""
        if type(code) is not int or not 0 <= code <= 0xFFFFFFFF:
            raise ValueError(f"webtransport.close: code must be a 32-bit int, got {code!r}")
        self.state = CLOSED
        self.wire.wt_close(self.stream_id, code, str(reason))
        self._end(code, str(reason))

    # --- the app task ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.server.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except asyncio.CancelledError:
            self._finish(500)
            raise
        except Exception:
            logger.exception("Exception in ASGI application (WebTransport %s)", self.scope["path"])
            self._finish(500)
        else:
            self._finish(403)
        finally:
            if self.server.access_log:
                log_access(self.request, self.scope, self.status, 0, self.start_time)
            self.wire.stream_complete(self.stream_id)

    def _finish(self, deny_status: int) -> None:
        """The app is done: deny a session it never answered, close an open one."""
        if self.state == CONNECTING and not self.disconnected:
            self.state = DENIED
            self.status = deny_status
            self.wire.send_head(self.stream_id, deny_status, [(b"content-length", b"0")], True)
            self._end(0, "denied")
        elif self.state == OPEN and not self.disconnected:
            self.state = CLOSED
            self.wire.wt_close(self.stream_id, 0, "")
            self._end(0, "")


def _bytes(message: dict[str, Any], key: str) -> bytes:
    data = message.get(key, b"")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if type(data) is not bytes:
        raise TypeError(f"{message.get('type')}: {key} must be bytes, got {type(data).__name__}")
    return data
