"""The ASGI WebSocket stream: one per WebSocket, the same for HTTP/1.1, HTTP/2 and HTTP/3.

The wire protocol recognises the handshake (HTTP/1.1 `Upgrade: websocket`, or an
extended CONNECT with `:protocol websocket`) and makes this stream instead of an
`HTTPStream`. Everything after that is written once, here:

- the ASGI side (asgiref WebSocket spec 2.4): `websocket.connect`, then the app accepts
  (`Wire.accept_websocket`, the one verb that differs per protocol), closes before
  accepting (403) or denies with its own response (`websocket.http.response`);
- the framing: once accepted, the wire's bytes are WebSocket frames on every protocol, so
  the stream owns a `wsproto` `FrameProtocol` (server side, with permessage-deflate when
  negotiated) and sends frames with `Wire.send_body`; with no extension, whole simple
  text and binary frames take the short road of `wsframes` both ways, and wsproto reads
  and writes everything else;
- the limits: at most `ws_max_queue` messages wait for the app, beyond which the stream
  stops giving flow-control credit back (`Wire.consumed` only once the app reads);
  messages above `ws_max_message_size` close with 1009 (also while inflating), invalid
  UTF-8 with 1007, protocol violations with 1002; pings keep the peer honest; the close
  handshake is bounded by `ws_close_timeout`.

One writer at a time: the app's `send`, pong replies and close frames pass a baton (a
flag and a queue of waiting writers: an `asyncio.Lock` cost two coroutines and a wake-up
per message), so frames never interleave even while one waits for flow-control credit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections import deque
from typing import Any, cast

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
)

from multiplex.errors import ClientDisconnected
from multiplex.streams.common import base_scope, flush_head, log_access, start_app_task
from multiplex.streams.http import http_date
from multiplex.streams.seam import (
    ConnectionInfo,
    Headers,
    Request,
    ServerState,
    WebSocketWire,
)
from multiplex.streams.wsframes import data_frame, read_messages, wsproto_idle

logger = logging.getLogger("multiplex")

# The most bytes of app frames held back to leave in one write (see `_cork`).
CORK_MAX = 65536

# Life cycle. CONNECTING: waiting for the app to accept. OPEN: frames both ways.
# CLOSING: we sent a close frame, the peer's has not come. CLOSED: the close handshake is
# over (or the connection failed). RESPONSE / RESPONDED: denied with an HTTP response.
CONNECTING, OPEN, CLOSING, CLOSED, RESPONSE, RESPONDED = range(6)


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that refuses to inflate a message beyond `limit` bytes.

    wsproto inflates each frame whole; a few kilobytes of deflate can claim gigabytes.
    Inflating at most what the limit still allows turns a bomb into a 1009 close.
    (wsproto keeps its inflate state in private attributes; pinned by wsproto>=1.2.)
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        decompressor = self._decompressor
        assert decompressor is not None
        try:
            out: bytes = decompressor.decompress(data, self._limit - self._inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._limit:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


def _header_tokens(headers: Headers, name: bytes) -> list[str]:
    """The comma-separated values of every `name` header, stripped."""
    out: list[str] = []
    for key, value in headers:
        if key == name:
            out.extend(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
    return out


class WebSocketStream:
    # Whether frames of the common case take the short road of `wsframes` (when no
    # extension is active). Off, every frame goes through wsproto: the differential tests
    # run both and compare what the peer sees.
    short_road = True

    __slots__ = (
        "body_bytes",
        "close_code",
        "close_reason",
        "closed_event",
        "connect_delivered",
        "control_task",
        "controls",
        "corked",
        "corked_size",
        "disconnected",
        "early",
        "ended",
        "fast",
        "fp",
        "info",
        "loop",
        "max_message_size",
        "max_queue",
        "message_size",
        "parts",
        "ping_handle",
        "ping_payload",
        "pong_handle",
        "pongs",
        "queue",
        "request",
        "response_head",
        "scope",
        "server",
        "start_time",
        "state",
        "status",
        "stream_id",
        "task",
        "text",
        "uncredited",
        "waiter",
        "wire",
        "writers",
        "writing",
        "wsproto_busy",
    )

    def __init__(
        self,
        wire: WebSocketWire,
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
        self.state = CONNECTING
        self.connect_delivered = False
        self.disconnected = False
        self.ended = False  # our side of the stream is finished (END_STREAM / closed)
        self.queue: deque[dict[str, Any]] = deque()  # messages for the app
        self.early: list[bytes] = []  # bytes that came before the accept
        self.uncredited = 0  # bytes taken from the wire and not yet given credit for
        self.fp: FrameProtocol | None = None
        self.fast = False  # the short road is open (set at the accept)
        self.parts: list[Any] = []  # the message being received
        self.message_size = 0
        self.max_message_size = server.config.ws_max_message_size
        self.max_queue = server.config.ws_max_queue
        self.text = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_event = asyncio.Event()
        self.waiter: asyncio.Future[None] | None = None
        # Kept, not asked for: `asyncio.get_running_loop()` makes a getpid() system call
        # each time (CPython checks for a fork), once per message in `receive`.
        self.loop = asyncio.get_running_loop()
        self.writing = False  # a writer holds the baton (see `_write`)
        self.writers: deque[asyncio.Future[None]] = deque()  # waiting for it, in order
        # The app's frames held back while more of its input waits in `queue` (see
        # `send`); the next write, whoever makes it, sends them first.
        self.corked: list[bytes] = []
        self.corked_size = 0
        # wsproto holds part of a frame or message: the short road must wait (updated
        # after each time wsproto reads, rather than asked of it for every read).
        self.wsproto_busy = False
        self.controls: deque[tuple[bytes, bool]] = deque()  # close frames, end of stream
        # Pongs waiting to go out, in order. Bounded: a peer that pings faster than it
        # reads loses the oldest answers (RFC 6455 5.5.3 asks only for the latest).
        self.pongs: deque[bytes] = deque(maxlen=server.config.ws_max_pending_pongs)
        self.control_task: asyncio.Task[None] | None = None
        self.ping_handle: asyncio.TimerHandle | None = None
        self.pong_handle: asyncio.TimerHandle | None = None
        self.ping_payload: bytes | None = None
        self.response_head: tuple[int, Headers] | None = None
        self.status = 0
        self.body_bytes = 0
        self.task: asyncio.Task[None] | None = None
        self.start_time = 0.0
        self.scope = self._build_scope()

    def _build_scope(self) -> dict[str, Any]:
        info = self.info
        extensions = dict(info.extensions)
        extensions["websocket.http.response"] = {}
        scheme = "wss" if info.scheme == "https" else "ws"
        scope = base_scope("websocket", self.request, info, self.server, scheme, extensions)
        scope["subprotocols"] = _header_tokens(self.request.headers, b"sec-websocket-protocol")
        return scope

    # --- from the wire ---------------------------------------------------------------

    def start(self) -> None:
        self.start_time = time.monotonic()
        self.task = start_app_task(self.server, self._run())

    def feed_body(self, data: bytes) -> None:
        state = self.state
        if state == OPEN and self.fast and not self.wsproto_busy and not self.disconnected:
            # The short road, inline (`_parse` and `_credit` as one): a call or two per
            # message is a measurable share of an echo's cost.
            size = len(data)
            queue = self.queue
            queued = len(queue)
            used = read_messages(data, self.max_message_size, queue)
            if len(queue) != queued:
                self._wake()
            self.uncredited += size
            if used != size:
                self._parse(data[used:])
            if len(queue) < self.max_queue and self.uncredited:
                size, self.uncredited = self.uncredited, 0
                self.wire.consumed(self.stream_id, size)
            return
        if state == CONNECTING and not self.disconnected:
            # A client may not send frames before the accept; keep what came (bounded by
            # the credit we have not given) for the frame parser.
            self.early.append(data)
            self.uncredited += len(data)
            return
        if self.fp is None or state == CLOSED or state >= RESPONSE or self.disconnected:
            self.wire.consumed(self.stream_id, len(data))
            return
        self.uncredited += len(data)
        self._parse(data)
        self._credit()

    def feed_end(self) -> None:
        # Before the accept, this is the end of the handshake request (HTTP/1.1 sees
        # one). After it, the peer will send nothing more: expected after its close
        # frame, an abnormal end before it.
        if self.state == OPEN or self.state == CLOSING:
            self._lost()

    def feed_disconnect(self) -> None:
        self.disconnected = True
        self._lost()

    def going_away(self) -> None:
        if self.state == OPEN:
            self._start_close(CloseReason.GOING_AWAY, "server shutting down")

    def _lost(self) -> None:
        if self.close_code is None:
            self.close_code = CloseReason.ABNORMAL_CLOSURE
        if self.state == OPEN or self.state == CLOSING:
            self.state = CLOSED
        self.disconnected = True
        self._closed()

    # --- frames in ---------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        fp = self.fp
        assert fp is not None
        if self.fast and self.state == OPEN and not self.wsproto_busy:
            queue = self.queue
            queued = len(queue)
            used = read_messages(data, self.max_message_size, queue)
            if len(queue) != queued:
                self._wake()
            if used == len(data):
                return
            data = data[used:]
        fp.receive_bytes(data)
        try:
            self._wsproto_frames(fp)
        finally:
            self.wsproto_busy = not wsproto_idle(fp)

    def _wsproto_frames(self, fp: FrameProtocol) -> None:
        try:
            for frame in fp.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                    if not self._data(frame):
                        return
                elif opcode is Opcode.PING:
                    if self.state == OPEN:
                        self.pongs.append(bytes(fp.pong(cast(bytes, frame.payload))))
                        self._kick_controls()
                elif opcode is Opcode.PONG:
                    if self.ping_payload is not None and frame.payload == self.ping_payload:
                        self._pong_received()
                elif opcode is Opcode.CLOSE:
                    code, reason = cast(tuple[int, str], frame.payload)
                    self._peer_closed(int(code), str(reason))
                    return
        except ParseFailed as exc:
            logger.info("WebSocket %s: closing (%s): %s", self._who(), int(exc.code), exc)
            self._fail(int(exc.code), str(exc)[:100])

    def _data(self, frame: Frame) -> bool:
        payload = frame.payload
        if not self.parts:
            self.text = frame.opcode is Opcode.TEXT
        if isinstance(payload, str):
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        else:
            size = len(payload)
        self.message_size += size
        if self.message_size > self.max_message_size:
            self._fail(CloseReason.MESSAGE_TOO_BIG, "message too big")
            return False
        if payload:
            self.parts.append(payload)
        if frame.message_finished:
            parts, self.parts = self.parts, []
            self.message_size = 0
            if self.state == OPEN:  # after our close frame, data is dropped (RFC 6455 1.4)
                message: dict[str, Any] = {"type": "websocket.receive"}
                if self.text:
                    message["text"] = "".join(parts)
                else:
                    message["bytes"] = b"".join(parts)
                self.queue.append(message)
                self._wake()
        return True

    def _credit(self) -> None:
        """Give credit for what was parsed, unless the app has a full queue to read."""
        if self.uncredited and len(self.queue) < self.max_queue:
            n, self.uncredited = self.uncredited, 0
            self.wire.consumed(self.stream_id, n)

    def _peer_closed(self, code: int, reason: str) -> None:
        fp = self.fp
        assert fp is not None
        if self.state == OPEN:
            # The peer starts the close: echo its code, and our side is done.
            self.close_code, self.close_reason = code, reason
            self.state = CLOSED
            echo = None if code == CloseReason.NO_STATUS_RCVD else code
            self.controls.append((bytes(fp.close(echo)), True))
            self._kick_controls()
        elif self.state == CLOSING:
            # The answer to our close: the handshake is complete.
            self.state = CLOSED
            self.controls.append((b"", True))
            self._kick_controls()
        self._closed()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): a close frame, then the end."""
        if self.state in (OPEN, CLOSING):
            if self.state == OPEN:
                self.close_code, self.close_reason = code, reason
                fp = self.fp
                assert fp is not None
                self.controls.append((bytes(fp.close(code, reason)), True))
            else:
                self.controls.append((b"", True))
            self.state = CLOSED
            self._kick_controls()
        self._closed()

    def _closed(self) -> None:
        self._cancel_timers()
        if self.uncredited and (self.state == CLOSED or self.disconnected):
            # Nothing more will be read from this stream: hand all credit back.
            n, self.uncredited = self.uncredited, 0
            self.wire.consumed(self.stream_id, n)
        self._wake()
        if self.state == CLOSED or self.disconnected:
            self.closed_event.set()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- frames out --------------------------------------------------------------------

    def _cork(self, frame: bytes) -> None:
        """Hold an app frame while more of the app's input is queued: an app that echoes
        or answers reads the next message at once, and the frames of all it answers in
        one go leave in one write (one system call instead of one each) when it sends
        with the queue empty, or at the end of this loop turn, whichever comes first.
        At most CORK_MAX bytes are held; a stream that cannot send raises as usual."""
        if self.ended or self.disconnected:
            raise ClientDisconnected(f"WebSocket {self.stream_id}: closed")
        if not self.corked:
            self.loop.call_soon(self._uncork)
        self.corked.append(frame)
        self.corked_size += len(frame)

    def _uncork(self) -> None:
        """The end of the loop turn: frames still held go out with the control task."""
        if self.corked:
            self.controls.append((b"", False))
            self._kick_controls()

    async def _write(self, data: bytes, end: bool = False) -> None:
        if self.writing:
            await self._wait_turn()
        else:
            self.writing = True
        try:
            if self.corked:  # the app's held frames came first
                self.corked.append(data)
                data = b"".join(self.corked)
                self.corked = []
                self.corked_size = 0
            if self.ended or self.disconnected:
                if data:
                    raise ClientDisconnected(f"WebSocket {self.stream_id}: closed")
                return
            if end:
                self.ended = True
            elif not data:
                return
            await self.wire.send_body(self.stream_id, data, end)
        finally:
            if self.writers:
                self._pass_baton()
            else:
                self.writing = False

    async def _wait_turn(self) -> None:
        """Wait until the writer before hands over the baton (`writing` stays set)."""
        turn = self.loop.create_future()
        self.writers.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass_baton()  # handed over, then cancelled: on to the next
            else:
                self.writers.remove(turn)
            raise

    def _pass_baton(self) -> None:
        writers = self.writers
        while writers:
            turn = writers.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.writing = False

    def _kick_controls(self) -> None:
        if self.control_task is None:
            task = self.control_task = self.loop.create_task(self._send_controls())
            tasks = self.server.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _send_controls(self) -> None:
        try:
            while True:
                if self.pongs:
                    data, end = self.pongs.popleft(), False
                elif self.controls:
                    data, end = self.controls.popleft()
                else:
                    return
                await self._write(data, end)
        except ClientDisconnected:
            pass
        finally:
            self.control_task = None

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame (from any task); the peer's answer ends the stream."""
        fp = self.fp
        assert fp is not None
        self.state = CLOSING
        self.close_code, self.close_reason = code, reason
        self.controls.append((bytes(fp.close(code, reason)), False))
        self._kick_controls()
        self._wake()

    # --- keepalive ---------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        interval = self.server.config.ws_ping_interval
        if interval > 0:
            loop = self.loop
            self.ping_handle = loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self.ping_handle = None
        fp = self.fp
        if self.state != OPEN or fp is None:
            return
        payload = self.ping_payload = os.urandom(4)
        self.controls.append((bytes(fp.ping(payload)), False))
        self._kick_controls()
        loop = self.loop
        self.pong_handle = loop.call_later(self.server.config.ws_ping_timeout, self._ping_timed_out)

    def _pong_received(self) -> None:
        self.ping_payload = None
        if self.pong_handle is not None:
            self.pong_handle.cancel()
            self.pong_handle = None
        if self.state == OPEN and self.ping_handle is None:
            self._schedule_ping()

    def _ping_timed_out(self) -> None:
        self.pong_handle = None
        logger.info("WebSocket %s: no pong within the ping timeout: closing", self._who())
        self._fail(CloseReason.INTERNAL_ERROR, "keepalive ping timeout")

    def _cancel_timers(self) -> None:
        if self.ping_handle is not None:
            self.ping_handle.cancel()
            self.ping_handle = None
        if self.pong_handle is not None:
            self.pong_handle.cancel()
            self.pong_handle = None

    # --- the app's receive -------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while True:
            if self.queue:
                message = self.queue.popleft()
                if self.uncredited:  # credit held back while the queue was full
                    self._credit()
                return message
            if (self.state != OPEN and self.state != CONNECTING) or self.disconnected:
                return self._disconnect_message()
            waiter = self.loop.create_future()
            self.waiter = waiter
            await waiter

    def _disconnect_message(self) -> dict[str, Any]:
        code = self.close_code if self.close_code is not None else CloseReason.ABNORMAL_CLOSURE
        return {"type": "websocket.disconnect", "code": int(code), "reason": self.close_reason}

    # --- the app's send ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        state = self.state
        if state == OPEN:
            if kind == "websocket.send":
                if self.fast:
                    # The common case in one step: str text or bytes, no extension.
                    text = message.get("text")
                    frame = None
                    if type(text) is str:
                        if message.get("bytes") is None:
                            frame = data_frame(text.encode("utf-8"), True)
                    elif text is None:
                        data = message.get("bytes")
                        if type(data) is bytes:
                            frame = data_frame(data, False)
                    if frame is not None:
                        if self.queue and self.corked_size + len(frame) <= CORK_MAX:
                            self._cork(frame)
                            return
                        await self._write(frame)
                        return
                await self._send_message(message)
                return
            if kind == "websocket.close":
                code, reason = _close_args(message)
                self._start_close(code, reason)
                self._closing_timer()
                return
        elif state == CONNECTING and not self.disconnected:
            if kind == "websocket.accept":
                self._accept(message)
                return
            if kind == "websocket.close":
                _close_args(message)
                await self._respond(403, [], b"")
                return
            if kind == "websocket.http.response.start":
                self._response_start(message)
                return
        elif state == RESPONSE and not self.disconnected:
            if kind == "websocket.http.response.body":
                await self._response_body(message)
                return
        if kind not in _KNOWN:
            raise RuntimeError(f"unknown ASGI message type {kind!r}")
        if self.disconnected or state in (CLOSING, CLOSED):
            raise ClientDisconnected(f"WebSocket {self.stream_id}: closed")
        raise RuntimeError(f"ASGI message {kind!r} not allowed here (WebSocket state {state})")

    def _closing_timer(self) -> None:
        """Bound the wait for the peer's answer to our close frame."""
        loop = self.loop
        loop.call_later(self.server.config.ws_close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        if self.state == CLOSING and not self.disconnected:
            logger.info("WebSocket %s: no close frame in answer: dropping it", self._who())
            self.state = CLOSED
            self.disconnected = True
            self.wire.reset(self.stream_id)
            self._closed()

    async def _send_message(self, message: dict[str, Any]) -> None:
        data = message.get("bytes")
        text = message.get("text")
        fp = self.fp
        assert fp is not None
        if data is not None and text is None:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"websocket.send: bytes must be bytes, got {type(data).__name__}")
            if self.fast:
                await self._write(data_frame(bytes(data), False))
                return
            frame = fp.send_data(bytes(data))
        elif text is not None and data is None:
            if not isinstance(text, str):
                raise TypeError(f"websocket.send: text must be str, got {type(text).__name__}")
            if self.fast:
                await self._write(data_frame(text.encode("utf-8"), True))
                return
            frame = fp.send_data(text)
        else:
            raise TypeError("websocket.send: exactly one of `bytes` and `text` must be set")
        await self._write(bytes(frame))

    def _accept(self, message: dict[str, Any]) -> None:
        config = self.server.config
        headers: Headers = []
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if not isinstance(subprotocol, str):
                raise TypeError("websocket.accept: subprotocol must be a str or None")
            headers.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
        for item in message.get("headers", ()):
            try:
                name, value = item
            except (TypeError, ValueError):
                raise TypeError(
                    f"websocket.accept: a header must be a [name, value] pair, got {item!r}"
                ) from None
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError(f"websocket.accept: headers must be bytes pairs, got {item!r}")
            name = name.lower()
            if name == b"sec-websocket-protocol" and subprotocol is not None:
                continue
            headers.append((name, value))
        extensions: list[PerMessageDeflate] = []
        if config.ws_per_message_deflate:
            for offer in _header_tokens(self.request.headers, b"sec-websocket-extensions"):
                if offer.split(";", 1)[0].strip() != "permessage-deflate":
                    continue
                deflate = _BoundedDeflate(config.ws_max_message_size)
                try:
                    accepted = deflate.accept(offer)
                except ValueError:
                    accepted = None
                if isinstance(accepted, str):
                    value = "permessage-deflate" + ("; " + accepted if accepted else "")
                    headers.append((b"sec-websocket-extensions", value.encode("ascii")))
                    extensions.append(deflate)
                    break
        if config.server_header:
            headers.append((b"server", config.server_header.encode("latin-1")))
        self.fp = FrameProtocol(client=False, extensions=list(extensions))
        # With an extension (permessage-deflate), frames carry RSV1 and compressed
        # payloads: wsproto's road, whole.
        self.fast = self.short_road and not self.fp.extensions
        # The wire may hand over bytes that came with the handshake at once: they wait
        # in `early` while the state is still CONNECTING.
        self.status = self.wire.accept_websocket(self.stream_id, headers)
        self.state = OPEN
        early, self.early = self.early, []
        for data in early:
            if self.state != OPEN:
                break
            self._parse(data)
        self._credit()
        self._schedule_ping()

    # --- denial ------------------------------------------------------------------------

    def _response_start(self, message: dict[str, Any]) -> None:
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            raise TypeError(
                f"websocket.http.response.start: status must be an int 200-599, got {status!r}"
            )
        headers: Headers = []
        for item in message.get("headers", ()):
            name, value = item
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError(
                    f"websocket.http.response.start: headers must be bytes pairs, got {item!r}"
                )
            headers.append((name.lower(), value))
        self.response_head = (status, headers)
        self.state = RESPONSE

    async def _response_body(self, message: dict[str, Any]) -> None:
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("websocket.http.response.body: body must be bytes")
        body = bytes(body)
        more = bool(message.get("more_body", False))
        head = self.response_head
        if head is not None:
            self.response_head = None
            status, headers = head
            self.status = status
            if not more:
                await self._respond(status, headers, body)
                return
            self.wire.send_head(self.stream_id, status, self._final_headers(headers, None), False)
            if not body:
                flush_head(self.wire, self.stream_id)  # the head goes now, the body later
        if not more:
            self.state = RESPONDED
        elif not body:
            return
        self.body_bytes += len(body)
        await self.wire.send_body(self.stream_id, body, not more)

    def _final_headers(self, headers: Headers, body: bytes | None) -> Headers:
        config = self.server.config
        names = {name for name, _ in headers}
        if b"server" not in names and config.server_header:
            headers.append((b"server", config.server_header.encode("latin-1")))
        if b"date" not in names and config.date_header:
            headers.append((b"date", http_date()))
        if body is not None and b"content-length" not in names:
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        return headers

    async def _respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole HTTP response instead of the WebSocket."""
        self.state = RESPONDED
        self.status = status
        self.body_bytes = len(body)
        self.wire.send_head(self.stream_id, status, self._final_headers(headers, body), not body)
        if body:
            await self.wire.send_body(self.stream_id, body, True)

    # --- the app task ----------------------------------------------------------------

    def _handshake_error(self) -> tuple[int, Headers, bytes] | None:
        versions = [v for n, v in self.request.headers if n == b"sec-websocket-version"]
        if versions != [b"13"]:
            return (
                426,
                [(b"sec-websocket-version", b"13"), (b"content-type", b"text/plain")],
                b"426 Upgrade Required: Sec-WebSocket-Version must be 13\n",
            )
        return None

    async def _run(self) -> None:
        try:
            error = self._handshake_error()
            if error is not None:
                await self._respond(*error)
                return
            try:
                await self.server.app(self.scope, self.receive, self.send)
            except ClientDisconnected:
                logger.debug("WebSocket %s: app stopped: client disconnected", self._who())
            except asyncio.CancelledError:
                self._abort()
                raise
            except Exception:
                logger.exception("Exception in ASGI application (WebSocket %s)", self._who())
                await self._app_failed()
            else:
                if self.state == CONNECTING and not self.disconnected:
                    logger.error("ASGI application returned without accepting the WebSocket")
                    await self._app_failed()
                elif self.state == RESPONSE:
                    logger.error("ASGI application returned without completing its response")
                    await self._app_failed()
            await self._finish()
        except ClientDisconnected:
            pass
        finally:
            self._cancel_timers()
            if self.control_task is not None:
                self.control_task.cancel()
            if self.server.access_log:
                self._log_access()
            self.wire.stream_complete(self.stream_id)

    async def _app_failed(self) -> None:
        state = self.state
        if self.disconnected:
            return
        if state == CONNECTING or (state == RESPONSE and self.response_head is not None):
            await self._respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
            )
        elif state == RESPONSE:
            self._abort()
        elif state == OPEN:
            self._start_close(CloseReason.INTERNAL_ERROR, "")

    async def _finish(self) -> None:
        """After the app: complete the close handshake, within `ws_close_timeout`."""
        if self.state == OPEN and not self.disconnected:
            self._start_close(CloseReason.NORMAL_CLOSURE, "")
        if self.state not in (OPEN, CLOSING, CLOSED) or self.disconnected:
            return
        try:
            await asyncio.wait_for(self._closed_and_sent(), self.server.config.ws_close_timeout)
        except asyncio.TimeoutError:
            if not self.disconnected:
                logger.info("WebSocket %s: close handshake timed out", self._who())
                self.disconnected = True
                self.wire.reset(self.stream_id)

    async def _closed_and_sent(self) -> None:
        await self.closed_event.wait()
        while self.control_task is not None and not self.disconnected:
            await asyncio.shield(self.control_task)
        if not self.ended and not self.disconnected:
            await self._write(b"", True)

    def _abort(self) -> None:
        if not self.disconnected and not self.ended:
            self.disconnected = True
            self.ended = True
            self.wire.reset(self.stream_id)

    def _who(self) -> str:
        client = self.info.client
        peer = f"{client[0]}:{client[1]}" if client else "unix"
        return f"{peer} {self.request.raw_target.decode('latin-1')}"

    def _log_access(self) -> None:
        log_access(self.request, self.scope, self.status, self.body_bytes, self.start_time)


_KNOWN = frozenset(
    [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
)


def _close_args(message: dict[str, Any]) -> tuple[int, str]:
    code = message.get("code", 1000)
    reason = message.get("reason") or ""
    if type(code) is not int or not (1000 <= code <= 4999):
        raise TypeError(f"websocket.close: code must be an int 1000-4999, got {code!r}")
    if not isinstance(reason, str):
        raise TypeError("websocket.close: reason must be a str")
    return code, reason
