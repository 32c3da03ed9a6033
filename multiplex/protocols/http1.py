"""HTTP/1.1 over one TCP connection, with the h11 state machine.

One request at a time (h11 holds pipelined requests until the response is done), each
as an `HTTPStream` with a fresh id. Also the door to cleartext HTTP/2 via
`Upgrade: h2c` (RFC 7540 section 3.2).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from http import HTTPStatus
from typing import Any

import h11
from wsproto.utilities import generate_accept_token

from multiplex.errors import ClientDisconnected
from multiplex.protocols.base import BaseConnection
from multiplex.streams import open_stream
from multiplex.streams.seam import ConnectionInfo, Headers, Request, ServerState, Stream

logger = logging.getLogger("multiplex")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}

# sendfile() goes in pieces this big, each of which must get out within
# send_stall_timeout: a reader that stops does not hold a file and a task forever.
SENDFILE_PIECE = 1024 * 1024


class _FileRange:
    """Stands in for file bytes in h11's output: h11 frames it (content-length count,
    chunk size line) by its length and hands it back untouched for sendfile."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


def loop_can_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """asyncio's loops do sendfile(2) on plain TCP transports; uvloop has no sendfile."""
    return isinstance(loop, asyncio.BaseEventLoop)


class H11Protocol(BaseConnection):
    def __init__(self, server: ServerState, info: ConnectionInfo) -> None:
        super().__init__(server, info)
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_event_size
        )
        self.stream: Stream | None = None
        self.stream_id = 0
        self.buffered = 0  # request body bytes given to the stream, not yet read by the app
        self.read_paused = False
        self.response_done = False
        self._cycle_waiting = False  # next request held back until the client reads
        self.keep_alive = True
        self._idle_timer: asyncio.TimerHandle | None = None
        self._header_timer: asyncio.TimerHandle | None = None  # slowloris: h11_header_timeout
        self._body_timer: asyncio.TimerHandle | None = None  # body_timeout
        self._body_seen = 0.0  # when request body bytes last arrived
        self._h2c_pending: tuple[Request, bytes] | None = None
        self._ws_key = b""  # Sec-WebSocket-Key of the WebSocket handshake in progress
        self.upgraded = False  # after 101 to a WebSocket: the bytes are the stream's
        self.zero_copy = False  # sendfile(2) possible: cleartext, on a loop that has it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.zero_copy = (
            transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None
            and loop_can_sendfile(self.loop)
        )
        self._arm_idle_timer()

    def start_with(self, transport: asyncio.Transport, data: bytes) -> None:
        """Start on a transport another protocol already read `data` from."""
        self.connection_made(transport)
        if data:
            self.data_received(data)

    # --- input -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._feed_upgraded(data)
            return
        self._cancel_idle_timer()
        if self._body_timer is not None:
            self._body_seen = self.loop.time()
        self.conn.receive_data(data)
        self._handle_events()
        if self._header_timer is None and self.conn.their_state is h11.IDLE and not self.closed:
            # Part of a request head: the rest must follow in time (slowloris).
            self._header_timer = self.loop.call_later(
                self.config.h11_header_timeout, self._header_timeout
            )
        elif self._body_timer is None and self.conn.their_state is h11.SEND_BODY:
            # Part of a request body: the rest must not stall (body_timeout).
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.config.body_timeout, self._body_check)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.closed or self.upgraded or self.conn.their_state is not h11.IDLE:
            return
        logger.info(
            "HTTP/1.1 connection from %s: request head not complete within"
            " h11_header_timeout = %s s; 408 and close",
            self.info.client,
            self.config.h11_header_timeout,
        )
        if self.stream is None and self.conn.our_state is h11.IDLE:
            # Written by hand: h11 sends no response to a request it has not seen.
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
        self.close()

    def _body_check(self) -> None:
        """Body read inactivity: the client stopped sending a body we are reading."""
        self._body_timer = None
        if self.closed or self.upgraded or self.conn.their_state is not h11.SEND_BODY:
            return
        timeout = self.config.body_timeout
        now = self.loop.time()
        if self.read_paused or self.conn.they_are_waiting_for_100_continue:
            self._body_seen = now  # the app is not reading yet: not the client's fault
        idle = now - self._body_seen
        if idle < timeout:
            self._body_timer = self.loop.call_later(timeout - idle, self._body_check)
            return
        logger.info(
            "HTTP/1.1 connection from %s: request body stalled for body_timeout = %s s; closing",
            self.info.client,
            timeout,
        )
        if self.stream is not None:
            self.stream.feed_disconnect()
        self.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _feed_upgraded(self, data: bytes) -> None:
        stream = self.stream
        if stream is None or not data:
            return
        self.buffered += len(data)
        stream.feed_body(data)
        if self.buffered > self.config.read_buffer_high and not self.read_paused:
            # The stream stopped giving credit: its app has a full queue.
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.upgraded:
            if self.stream is not None:
                self.stream.feed_end()
            return None
        self.conn.receive_data(b"")
        self._handle_events()
        return None  # let asyncio close the transport

    def _handle_events(self) -> None:
        if self._cycle_waiting:
            return  # resume_writing handles what waits
        conn = self.conn
        while not self.closed:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(exc.error_status_hint, str(exc))
                return
            kind = type(event)
            if kind is h11.Data:
                stream = self.stream
                if stream is not None:
                    data = event.data  # type: ignore[union-attr]
                    self.buffered += len(data)
                    stream.feed_body(data)
                    if self.buffered > self.config.read_buffer_high and not self.read_paused:
                        self.read_paused = True
                        self.transport.pause_reading()
            elif kind is h11.Request:
                self._on_request(event)  # type: ignore[arg-type]
            elif kind is h11.EndOfMessage:
                if self.stream is not None:
                    self.stream.feed_end()
                elif self._h2c_pending is not None:
                    self._upgrade_h2c()
                    return
            elif event is h11.NEED_DATA:
                return
            elif event is h11.PAUSED:
                # Pipelined requests wait in h11's buffer until this response is done;
                # stop reading if a client keeps piling them up.
                if (
                    not self.read_paused
                    and len(conn.trailing_data[0]) > self.config.read_buffer_high
                ):
                    self.read_paused = True
                    self.transport.pause_reading()
                return
            elif kind is h11.ConnectionClosed:
                if self.stream is not None:
                    self.stream.feed_disconnect()
                self.close()
                return

    def _on_request(self, event: h11.Request) -> None:
        self._cancel_header_timer()
        if event.http_version not in (b"1.1", b"1.0"):
            # h11 parses any HTTP/x.y request line; `PRI * HTTP/2.0` here is a broken
            # HTTP/2 preface, not a request to hand to the app (RFC 9112 section 2.3).
            self._reject(505, f"HTTP/{event.http_version.decode('latin-1')} is not served here")
            return
        # h11 bounds only a head still incomplete; one that arrived whole in a single
        # read is checked here against the same limit.
        size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > self.config.h11_max_incomplete_event_size:
            self._reject(431, "request header fields too large")
            return
        if len(event.headers) > self.config.h11_max_header_count:
            self._reject(
                431, f"more than h11_max_header_count = {self.config.h11_max_header_count} fields"
            )
            return
        headers: Headers = list(event.headers)
        websocket = _is_websocket(event.method, headers)
        if websocket:
            problem = self._websocket_problem(headers)
            if problem:
                self._reject(400, problem)
                return
        self.stream_id += 1
        self.response_done = False
        expect = self.conn.they_are_waiting_for_100_continue
        request = Request(event.method.decode("ascii"), event.target, headers, expect, websocket)
        # Trailers only to a client that said it takes them (RFC 9110 section 10.1.4), in
        # a chunked body (HTTP/1.1); no 1xx responses to an HTTP/1.0 client (section 15.2).
        request.trailers = event.http_version == b"1.1" and _accepts_trailers(headers)
        request.early_hints = event.http_version == b"1.1"
        if websocket:
            pass  # an `Upgrade: websocket` is never an h2c upgrade
        elif self.config.h2c and self.info.scheme == "http":
            settings = _h2c_settings(headers)
            if settings is not None:
                # Answer over HTTP/2 once the (bodiless) request is complete.
                self._h2c_pending = (request, settings)
                return
        stream = open_stream(self, self.stream_id, request, self.info, self.server)
        self.stream = stream
        stream.start()

    def _websocket_problem(self, headers: Headers) -> str:
        """What is wrong with a WebSocket handshake that only HTTP/1.1 has (RFC 6455
        section 4.2.1): its key, and a body it may not carry. The version is the
        stream's to check (426), on every protocol."""
        keys = [value for name, value in headers if name == b"sec-websocket-key"]
        if len(keys) != 1:
            return "WebSocket handshake without exactly one Sec-WebSocket-Key"
        try:
            nonce = base64.b64decode(keys[0], validate=True)
        except (binascii.Error, ValueError):
            nonce = b""
        if len(nonce) != 16:
            return "Sec-WebSocket-Key is not 16 bytes in base64"
        for name, value in headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                return "a WebSocket handshake has no body"
        self._ws_key = keys[0]
        return ""

    def _reject(self, status: int, reason: str) -> None:
        logger.info("Bad HTTP/1.1 request from %s: %s", self.info.client, reason)
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self.stream is None:
            body = f"{status} {_REASONS.get(status, b'').decode()}: {reason}\n".encode()
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            try:
                out = self.conn.send(
                    h11.Response(
                        status_code=status, headers=headers, reason=_REASONS.get(status, b"")
                    )
                )
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass
        if self.stream is not None:
            self.stream.feed_disconnect()
        self.close()

    # --- h2c upgrade ---------------------------------------------------------------------

    def _upgrade_h2c(self) -> None:
        from multiplex.protocols.http2 import H2Protocol

        pending, self._h2c_pending = self._h2c_pending, None
        if pending is None:
            return
        request, settings = pending
        self.transport.write(
            self.conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[(b"connection", b"Upgrade"), (b"upgrade", b"h2c")],
                    reason=b"Switching Protocols",
                )
            )
        )
        rest = self.conn.trailing_data[0]
        self._cancel_idle_timer()
        self.server.connections.discard(self)
        self.closed = True  # this object is done; the transport lives on under h2
        old = self.info
        info = ConnectionInfo(
            "2", old.scheme, old.client, old.server, old.extensions, old.response_headers
        )
        h2proto = H2Protocol(self.server, info)
        self.transport.set_protocol(h2proto)
        h2proto.start_upgraded(self.transport, settings, request, rest)

    # --- Wire verbs --------------------------------------------------------------------

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        if stream_id != self.stream_id or self.closed or self.conn.their_http_version == b"1.0":
            return
        try:
            self.transport.write(
                self.conn.send(
                    h11.InformationalResponse(
                        status_code=status, headers=headers, reason=_REASONS.get(status, b"")
                    )
                )
            )
        except h11.LocalProtocolError:
            pass

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        if stream_id != self.stream_id or self.closed:
            return
        if self.server.shutting_down.is_set():
            self.keep_alive = False
            headers.append((b"connection", b"close"))
        try:
            out = self.conn.send(
                h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))
            )
            if end:
                out += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            self.close()
            raise RuntimeError(f"invalid response head: {exc}") from None
        self.transport.write(out)
        if end:
            self._response_complete()

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if stream_id != self.stream_id or self.closed:
            raise ClientDisconnected("connection closed")
        if self.upgraded:
            # WebSocket frames, as they are; the end of the stream is the end of TCP.
            if data:
                self.transport.write(data)
            if end:
                self.close()
            elif self.write_paused:
                await self.drain()
            return
        conn = self.conn
        try:
            out = (conn.send_with_data_passthrough(h11.Data(data=data)) or []) if data else []
            if end:
                out.append(conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            self.close()
            raise RuntimeError(f"invalid response body: {exc}") from None
        self.transport.writelines(out)
        if end:
            self._response_complete()
        elif self.write_paused:
            await self.drain()

    async def send_file(self, stream_id: int, fd: int, offset: int, count: int, end: bool) -> None:
        """`count` bytes of the file from `offset` as body, by sendfile(2): the kernel
        copies them from the page cache to the socket."""
        if stream_id != self.stream_id or self.closed:
            raise ClientDisconnected("connection closed")
        marker = _FileRange(count)
        try:
            event = h11.Data(data=marker)  # type: ignore[arg-type]
            out: list[Any] = self.conn.send_with_data_passthrough(event) or []
        except h11.LocalProtocolError as exc:
            self.close()
            raise RuntimeError(f"invalid response body: {exc}") from None
        with open(fd, "rb", closefd=False) as file:
            for piece in out:
                if piece is not marker:
                    self.transport.write(piece)
                    continue
                sent = 0
                while sent < count:
                    size = min(SENDFILE_PIECE, count - sent)
                    try:
                        await asyncio.wait_for(
                            self.loop.sendfile(self.transport, file, offset + sent, size),
                            self.config.send_stall_timeout,
                        )
                    except asyncio.TimeoutError:
                        logger.warning(
                            "Connection from %s read too little of a file for"
                            " send_stall_timeout = %s s: closing",
                            self.info.client,
                            self.config.send_stall_timeout,
                        )
                        self.abort()
                        raise ClientDisconnected("send stalled") from None
                    except (ConnectionError, RuntimeError) as exc:
                        # RuntimeError: asyncio's "transport is closing".
                        self.closed = True
                        raise ClientDisconnected(str(exc)) from None
                    sent += size
        if end:
            self.transport.write(self.conn.send(h11.EndOfMessage()))
            self._response_complete()

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if stream_id != self.stream_id or self.closed:
            return
        # Only a chunked body has a trailer section; otherwise the fields are dropped.
        chunked = type(getattr(self.conn, "_writer", None)).__name__ == "ChunkedWriter"
        try:
            out = self.conn.send(h11.EndOfMessage(headers=headers if chunked else []))
        except h11.LocalProtocolError as exc:
            self.close()
            raise RuntimeError(f"invalid response trailers: {exc}") from None
        self.transport.write(out)
        self._response_complete()

    def consumed(self, stream_id: int, n: int) -> None:
        if stream_id != self.stream_id:
            return
        self.buffered -= n
        if self.read_paused and self.buffered <= self.config.read_buffer_high // 2:
            self.read_paused = False
            if not self.closed:
                self.transport.resume_reading()

    def reset(self, stream_id: int) -> None:
        # HTTP/1.1 has no way to abort one response but to close the connection.
        if stream_id == self.stream_id:
            self.close()

    def prioritize(self, stream_id: int, urgency: int, incremental: bool) -> None:
        pass  # one response at a time: nothing to order

    def push(self, stream_id: int, authority: bytes, path: bytes, headers: Headers) -> None:
        pass  # never offered on HTTP/1.1

    def stream_complete(self, stream_id: int) -> None:
        if self.upgraded and stream_id == self.stream_id:
            self.close()  # the WebSocket was the rest of this connection

    def accept_websocket(self, stream_id: int, headers: Headers) -> int:
        if stream_id != self.stream_id or self.closed or self.upgraded:
            raise ClientDisconnected("connection closed")
        response = h11.InformationalResponse(
            status_code=101,
            headers=[
                (b"upgrade", b"websocket"),
                (b"connection", b"Upgrade"),
                (b"sec-websocket-accept", generate_accept_token(self._ws_key)),
                *headers,
            ],
            reason=b"Switching Protocols",
        )
        try:
            out = self.conn.send(response)
        except h11.LocalProtocolError as exc:
            self.close()
            raise ClientDisconnected(f"cannot switch to WebSocket: {exc}") from None
        self.transport.write(out)
        # h11 is done with this connection: from here on every byte is the WebSocket's.
        self.upgraded = True
        self._cancel_idle_timer()
        rest = self.conn.trailing_data[0]
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if rest:
            self._feed_upgraded(rest)
        return 101

    # --- keep-alive --------------------------------------------------------------------

    def _response_complete(self) -> None:
        conn = self.conn
        if self.response_done:
            return
        self.response_done = True
        if conn.our_state is h11.MUST_CLOSE or not self.keep_alive:
            self.close()
            return
        if conn.their_state is not h11.DONE:
            # The client is still sending a body the app did not want; rather than read
            # and discard it, end the connection (the response itself is complete).
            if self.stream is not None:
                self.stream.feed_disconnect()
            self.close()
            return
        self.stream = None
        self.buffered = 0
        conn.start_next_cycle()
        if self.write_paused:
            # The client is not reading its responses: answer (and read) nothing more
            # until it does. A response sent in one piece never waits in send(), so
            # without this pipelined requests would pile their answers up in the
            # transport without bound. send_stall_timeout ends a client that never reads.
            self._cycle_waiting = True
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()
            return
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._arm_idle_timer()
        # Pipelined requests may already be waiting in h11's buffer.
        self.loop.call_soon(self._handle_events)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._cycle_waiting and not self.closed:
            self._cycle_waiting = False
            self._next_cycle()

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        self._idle_timer = self.loop.call_later(self.config.keep_alive_timeout, self._idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle(self) -> None:
        self._idle_timer = None
        if self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
            self.close()

    def shutdown(self) -> None:
        self.keep_alive = False
        if self.upgraded:
            if self.stream is not None:
                self.stream.going_away()
            return
        if self.stream is None and self.stream_id == 0 and not self.closed:
            # Accepted just before the shutdown, no request yet: the client has likely
            # sent it already (in flight, or unread in the socket), and a client does
            # not retry a request on a new connection that closes. Serve that one.
            wait = self.config.graceful_first_request_wait
            if wait > 0:
                self.loop.call_later(wait, self._close_if_idle)
                return
        if self.stream is None or self.response_done:
            self.close()

    def _close_if_idle(self) -> None:
        if not self.closed and (self.stream is None or self.response_done):
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_idle_timer()
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.stream is not None:
            self.stream.feed_disconnect()


def _is_websocket(method: bytes, headers: Headers) -> bool:
    """A GET asking to upgrade to a WebSocket (RFC 6455 section 4.1)."""
    if method != b"GET":
        return False
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = upgrade or b"websocket" in [t.strip().lower() for t in value.split(b",")]
        elif name == b"connection":
            connection = connection or b"upgrade" in [t.strip().lower() for t in value.split(b",")]
    return upgrade and connection


def _accepts_trailers(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"te" and b"trailers" in [
            t.split(b";")[0].strip().lower() for t in value.split(b",")
        ]:
            return True
    return False


def _h2c_settings(headers: Headers) -> bytes | None:
    """The HTTP2-Settings of a request that asks for `Upgrade: h2c` and has no body."""
    upgrade = settings = None
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"http2-settings":
            settings = value
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None  # RFC 7540 3.2 lets us ignore the upgrade; a body makes it costly
    if upgrade is None or settings is None:
        return None
    if b"h2c" not in [token.strip().lower() for token in upgrade.split(b",")]:
        return None
    return settings
