"""The ASGI HTTP stream: one per request, the same for HTTP/1.1, HTTP/2 and HTTP/3.

It builds the scope, runs the app in its own task, answers `receive()` from the body
the wire protocol feeds it, and validates what the app `send()`s before turning it into
`Wire` verbs. The response head is held back until the first body message so that a
single-message body gets a `content-length`, and so that an app failing between
`http.response.start` and its first body still yields a clean 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from email.utils import formatdate
from typing import Any

from multiplex.errors import ClientDisconnected
from multiplex.streams.common import base_scope, log_access, start_app_task
from multiplex.streams.seam import ConnectionInfo, Headers, Request, ServerState, Wire

logger = logging.getLogger("multiplex")

# Stream life cycle, as small ints (compared on every message).
REQUEST, RESPONSE_STARTED, RESPONSE_BODY, RESPONSE_DONE = 0, 1, 2, 3

_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """The `date` header value, formatted at most once a second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_value = formatdate(now, usegmt=True).encode("ascii")
    return _date_value


def _no_body_status(status: int) -> bool:
    return status < 200 or status == 204 or status == 304


class HTTPStream:
    __slots__ = (
        "body_bytes",
        "chunks",
        "disconnected",
        "end_delivered",
        "ended",
        "expect_continue",
        "head_only",
        "info",
        "request",
        "response_headers",
        "scope",
        "server",
        "start_time",
        "state",
        "status",
        "stream_id",
        "task",
        "waiter",
        "wire",
    )

    def __init__(
        self,
        wire: Wire,
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
        self.chunks: deque[bytes] = deque()
        self.ended = False  # the whole request body has arrived
        self.end_delivered = False  # the app has seen more_body=False
        self.disconnected = False
        self.expect_continue = request.expect_continue
        self.head_only = request.method == "HEAD"
        self.state = REQUEST
        self.status = 0
        self.response_headers: Headers = []
        self.body_bytes = 0
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.start_time = 0.0
        self.scope = self._build_scope()

    def _build_scope(self) -> dict[str, Any]:
        info = self.info
        scope = base_scope("http", self.request, info, self.server, info.scheme, info.extensions)
        scope["method"] = self.request.method
        return scope

    # --- from the wire ---------------------------------------------------------------

    def start(self) -> None:
        self.start_time = time.monotonic()
        self.task = start_app_task(self.server, self._run())

    def feed_body(self, data: bytes) -> None:
        if self.state == RESPONSE_DONE or self.disconnected:
            # Nobody will read it: hand the credit straight back.
            self.wire.consumed(self.stream_id, len(data))
            return
        self.chunks.append(data)
        self._wake()

    def feed_end(self) -> None:
        self.ended = True
        self._wake()

    def feed_disconnect(self) -> None:
        self.disconnected = True
        self._wake()

    def going_away(self) -> None:
        pass  # an HTTP response just finishes; the connection stops taking new ones

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the app's receive -------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while True:
            if self.disconnected or self.state == RESPONSE_DONE:
                return {"type": "http.disconnect"}
            if self.chunks:
                chunks = self.chunks
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.wire.consumed(self.stream_id, len(data))
                more = not self.ended
                self.end_delivered = not more
                return {"type": "http.request", "body": data, "more_body": more}
            if self.ended:
                if not self.end_delivered:
                    self.end_delivered = True
                    return {"type": "http.request", "body": b"", "more_body": False}
                # The request is whole: the next event is the client going away.
            elif self.expect_continue:
                self.expect_continue = False
                if self.state == REQUEST:
                    self.wire.send_informational(self.stream_id, 100, [])
            waiter = asyncio.get_running_loop().create_future()
            self.waiter = waiter
            await waiter

    # --- the app's send ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        state = self.state
        if kind == "http.response.body":
            if state == RESPONSE_STARTED or state == RESPONSE_BODY:
                await self._send_body(message)
                return
        elif kind == "http.response.start":
            if state == REQUEST:
                self._start_response(message)
                return
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        if state == RESPONSE_DONE:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response completed")
        if kind in ("http.response.start", "http.response.body"):
            raise RuntimeError(f"ASGI message {kind!r} out of order")
        raise RuntimeError(f"unknown ASGI message type {kind!r}")

    def _start_response(self, message: dict[str, Any]) -> None:
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            if isinstance(status, int) and 100 <= status < 200:
                raise RuntimeError(
                    "http.response.start: 1xx statuses are not final responses"
                    " (use the early hints extension for 103)"
                )
            raise TypeError(f"http.response.start: status must be an int 200-599, got {status!r}")
        headers: Headers = []
        for item in message.get("headers", ()):
            try:
                name, value = item
            except (TypeError, ValueError):
                raise TypeError(
                    f"http.response.start: a header must be a [name, value] pair, got {item!r}"
                ) from None
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError(
                    f"http.response.start: header names and values must be bytes, got {item!r}"
                )
            headers.append((name.lower(), value))
        self.status = status
        self.response_headers = headers
        self.state = RESPONSE_STARTED

    def _final_headers(self, body: bytes | None) -> Headers:
        """The app's headers plus server, date and (when the body is known) length."""
        headers = self.response_headers
        have_date = have_server = have_length = False
        for name, _ in headers:
            if name == b"date":
                have_date = True
            elif name == b"server":
                have_server = True
            elif name == b"content-length" or name == b"transfer-encoding":
                have_length = True
        config = self.server.config
        if not have_server and config.server_header:
            headers.append((b"server", config.server_header.encode("latin-1")))
        if not have_date and config.date_header:
            headers.append((b"date", http_date()))
        if self.info.response_headers:
            headers.extend(self.info.response_headers)
        if body is not None and not have_length and not _no_body_status(self.status):
            headers.append((b"content-length", str(len(body)).encode("ascii")))
        return headers

    async def _send_body(self, message: dict[str, Any]) -> None:
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        body = message.get("body", b"")
        if type(body) is not bytes:
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            else:
                raise TypeError(
                    f"http.response.body: body must be bytes, got {type(body).__name__}"
                )
        more = bool(message.get("more_body", False))
        # A HEAD response carries the length a GET would have had, when the app gave the
        # body; an app that gave none for HEAD does not know it, so none is claimed.
        known: bytes | None = body if body or not self.head_only else None
        if self.head_only or _no_body_status(self.status):
            body = b""  # the head says what the body would be; none goes out
        wire = self.wire
        if self.state == RESPONSE_STARTED:
            self.state = RESPONSE_BODY
            if not more:
                self.state = RESPONSE_DONE
                wire.send_head(self.stream_id, self.status, self._final_headers(known), not body)
                if body:
                    self.body_bytes += len(body)
                    await wire.send_body(self.stream_id, body, True)
                return
            wire.send_head(self.stream_id, self.status, self._final_headers(None), False)
        if not more:
            self.state = RESPONSE_DONE
        elif not body:
            return
        self.body_bytes += len(body)
        await wire.send_body(self.stream_id, body, not more)

    # --- the app task ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self.server.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            logger.debug("stream %s: app stopped: client disconnected", self.stream_id)
        except asyncio.CancelledError:
            self._abort()
            raise
        except Exception:
            logger.exception(
                "Exception in ASGI application (%s %s)", self.request.method, self.scope["path"]
            )
            await self._fail()
        else:
            if self.state != RESPONSE_DONE and not self.disconnected:
                if self.state == REQUEST:
                    logger.error("ASGI application returned without sending a response")
                else:
                    logger.error("ASGI application returned without completing its response")
                await self._fail()
        finally:
            if self.server.access_log:
                self._log_access()
            self.wire.stream_complete(self.stream_id)

    async def _fail(self) -> None:
        """Answer 500 if nothing went out yet, else abort the stream."""
        if self.disconnected or self.state == RESPONSE_DONE:
            return
        if self.state == RESPONSE_BODY:
            self._abort()
            return
        self.status = 500
        self.state = RESPONSE_DONE
        body = b"Internal Server Error"
        self.response_headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers = self._final_headers(body)
        self.wire.send_head(self.stream_id, 500, headers, self.head_only)
        if not self.head_only:
            self.body_bytes = len(body)
            try:
                await self.wire.send_body(self.stream_id, body, True)
            except ClientDisconnected:
                pass

    def _abort(self) -> None:
        if self.state != RESPONSE_DONE and not self.disconnected:
            self.state = RESPONSE_DONE
            self.wire.reset(self.stream_id)

    def _log_access(self) -> None:
        status = self.status if self.state == RESPONSE_DONE else 0
        log_access(self.request, self.info, status, self.body_bytes, self.start_time)
