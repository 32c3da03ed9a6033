"""The ASGI HTTP stream: one per request, the same for HTTP/1.1, HTTP/2 and HTTP/3.

It builds the scope, runs the app in its own task, answers `receive()` from the body
the wire protocol feeds it, and validates what the app `send()`s before turning it into
`Wire` verbs. The response head is held back until the first body message so that a
single-message body gets a `content-length`, and so that an app failing between
`http.response.start` and its first body still yields a clean 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Coroutine
from email.utils import formatdate
from typing import Any, cast

from multiplex.errors import ClientDisconnected
from multiplex.scheduling import DEFAULT_URGENCY, parse_priority
from multiplex.streams.common import base_scope, flush_head, log_access, start_app_task
from multiplex.streams.seam import (
    ConnectionInfo,
    EagerBodyWire,
    FileWire,
    Headers,
    Request,
    ServerState,
    Wire,
)

logger = logging.getLogger("multiplex")

# Stream life cycle, as small ints (compared on every message). RESPONSE_TRAILERS: the
# body is complete, the app announced trailers and they have not all come yet.
REQUEST, RESPONSE_STARTED, RESPONSE_BODY, RESPONSE_DONE, RESPONSE_TRAILERS = 0, 1, 2, 3, 4

# http.response.pathsend reads the file in chunks of this size, in a worker thread.
PATHSEND_CHUNK = 64 * 1024

# Fields a trailer section may not carry (RFC 9110 section 6.5.1): framing, routing,
# connection-specific fields, and response controls a recipient needs before the body.
FORBIDDEN_TRAILERS = frozenset(
    [
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"te",
        b"trailer",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"authorization",
        b"set-cookie",
        b"cache-control",
        b"expires",
        b"age",
        b"date",
        b"location",
        b"retry-after",
        b"vary",
    ]
)
_BAD_FIELD_BYTES = (b"\r", b"\n", b"\x00")
_KNOWN = frozenset(
    [
        "http.response.start",
        "http.response.body",
        "http.response.trailers",
        "http.response.early_hint",
        "http.response.pathsend",
        "http.response.zerocopysend",
        "http.response.priority",
        "http.response.push",
    ]
)

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
        "pushes",
        "received",
        "refusal",
        "request",
        "response_headers",
        "scope",
        "seen",
        "server",
        "start_time",
        "state",
        "status",
        "stream_id",
        "task",
        "trailer_fields",
        "trailers",
        "waiter",
        "wire",
    )
    response_headers: Headers  # set before it is read: see __init__

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
        # Made when the first body chunk comes: a GET has none, and every container
        # a stream holds while it waits for its task is one more object for the
        # garbage collector's young generation (many streams wait at once).
        self.chunks: deque[bytes] | None = None
        self.ended = False  # the whole request body has arrived
        self.end_delivered = False  # the app has seen more_body=False
        self.disconnected = False
        self.expect_continue = request.expect_continue
        self.head_only = request.method == "HEAD"
        self.state = REQUEST
        self.status = 0
        # response_headers is set by http.response.start (or the 413/500 the server
        # answers itself) before anything reads it: no empty list per stream meanwhile.
        # Which of date, server and a length `response_headers` has (_SEEN_* bits), when
        # known without a walk over them; -1 when not.
        self.seen = -1
        self.trailers = False  # the app announced trailers in http.response.start
        self.trailer_fields: Headers | None = None  # made by the first trailers message
        self.body_bytes = 0
        self.pushes = 0
        self.received = 0  # request body bytes so far (max_body_size)
        self.refusal: asyncio.Task[None] | None = None  # the 413 under way, if any
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.start_time = 0.0
        # The scope (built here rather than in a method of its own: one call less for
        # every request).
        extensions = dict(info.extensions)
        extensions["http.response.pathsend"] = {}
        if getattr(self.wire, "zero_copy", False):
            extensions["http.response.zerocopysend"] = {}
        if request.trailers:
            extensions["http.response.trailers"] = {}
        if request.early_hints:
            extensions["http.response.early_hint"] = {}
        if request.priority is not None:
            urgency, incremental = request.priority
            extensions["http.response.priority"] = {
                "urgency": urgency,
                "incremental": incremental,
            }
        if request.push:
            extensions["http.response.push"] = {}
        scope = self.scope = base_scope("http", request, info, server, info.scheme, extensions)
        scope["method"] = request.method

    # --- from the wire ---------------------------------------------------------------

    def start(self) -> None:
        self.start_time = time.monotonic()
        for name, value in self.request.headers:
            # A declared body over max_body_size is refused before the app runs (a walk
            # here rather than in a method: one call less for every request).
            if name == b"content-length":
                if self._declared_too_large(value):
                    self.task = start_app_task(self.server, self._too_large(run_app=False))
                    return
                break
        # The app task, tracked by `_run` itself: start_app_task's wrapper coroutine
        # would cost a second coroutine and frame for every request.
        task = self.task = self.wire.loop.create_task(self._run())
        self.server.tasks.add(task)

    def feed_body(self, data: bytes) -> None:
        if self.state == RESPONSE_DONE or self.disconnected:
            # Nobody will read it: hand the credit straight back.
            self.wire.consumed(self.stream_id, len(data))
            return
        self.received += len(data)
        if self.received > self.server.config.max_body_size:
            self.wire.consumed(self.stream_id, len(data))
            self.disconnected = True  # the app's next receive() is http.disconnect
            self._wake()
            self.refusal = start_app_task(self.server, self._too_large(run_app=True))
            return
        if self.chunks is None:
            self.chunks = deque()
        self.chunks.append(data)
        self._wake()

    def _declared_too_large(self, length: bytes) -> bool:
        try:
            return int(length) > self.server.config.max_body_size
        except ValueError:
            return False  # the wire protocol rejects a bad length itself

    async def _too_large(self, run_app: bool) -> None:
        """413 Content Too Large, if no response went out yet; else the stream is reset.
        `run_app` False: refused before the app ran, this is the stream's whole life."""
        logger.info(
            "Request body from %s over max_body_size = %d: 413",
            self.info.client,
            self.server.config.max_body_size,
        )
        try:
            if self.state == REQUEST or self.state == RESPONSE_STARTED:
                self.state = RESPONSE_DONE
                self.status = 413
                body = b"Content Too Large\n"
                self.seen = -1
                self.response_headers = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"connection", b"close"),  # HTTP/1.1: the rest of the body is not read
                ]
                self.wire.send_head(self.stream_id, 413, self._final_headers(len(body)), False)
                self.body_bytes = len(body)
                try:
                    await self.wire.send_body(self.stream_id, body, True)
                except ClientDisconnected:
                    pass
            elif self.state != RESPONSE_DONE:
                # Not _abort(): `disconnected` is already set (for the app's receive),
                # and the stream must still be reset (HTTP/1.1: the connection closed).
                self.state = RESPONSE_DONE
                self.wire.reset(self.stream_id)
        finally:
            if not run_app:
                if self.server.access_log:
                    self._log_access()
                self.wire.stream_complete(self.stream_id)

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
            chunks = self.chunks
            if chunks:
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
            waiter = self.wire.loop.create_future()
            self.waiter = waiter
            await waiter

    # --- the app's send ----------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        state = self.state
        if kind == "http.response.body":
            if state == RESPONSE_STARTED or state == RESPONSE_BODY:
                pending = self._body(message)
                if pending is not None:
                    await pending
                return
        elif kind == "http.response.start":
            if state == REQUEST:
                self._start_response(message)
                return
        elif kind == "http.response.trailers":
            if state == RESPONSE_TRAILERS:
                await self._send_trailers(message)
                return
        elif kind == "http.response.early_hint":
            if state == REQUEST:
                self._early_hint(message)
                return
        elif kind == "http.response.pathsend":
            if state == RESPONSE_STARTED:
                await self._pathsend(message)
                return
        elif kind == "http.response.zerocopysend":
            if (state == RESPONSE_STARTED or state == RESPONSE_BODY) and self._file_wire():
                await self._zerocopysend(message)
                return
        elif kind == "http.response.priority":
            if state <= RESPONSE_BODY:
                self._prioritize(message)
                return
        elif kind == "http.response.push":
            if state <= RESPONSE_BODY:
                self._push(message)
                return
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        if state == RESPONSE_DONE:
            raise RuntimeError(f"ASGI message {kind!r} sent after the response completed")
        if kind in _KNOWN:
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
        headers, self.seen = _response_fields(message.get("headers", ()))
        self.status = status
        self.response_headers = headers
        self.trailers = bool(message.get("trailers", False))
        self.state = RESPONSE_STARTED
        if self.request.priority is not None:
            for name, value in headers:
                if name == b"priority":
                    # The app's `priority` response header is its override too.
                    urgency, incremental = parse_priority(value, self.request.priority)
                    self.wire.prioritize(self.stream_id, urgency, incremental)

    def _prioritize(self, message: dict[str, Any]) -> None:
        """Proposed `http.response.priority` extension: the app sets the RFC 9218
        urgency and incremental flag its response is scheduled with."""
        urgency = message.get("urgency", DEFAULT_URGENCY)
        incremental = message.get("incremental", False)
        if type(urgency) is not int or not 0 <= urgency <= 7:
            raise ValueError(f"http.response.priority: urgency must be an int 0-7, got {urgency!r}")
        if type(incremental) is not bool:
            raise TypeError(
                f"http.response.priority: incremental must be a bool, got {incremental!r}"
            )
        if self.request.priority is not None and not self.disconnected:
            self.wire.prioritize(self.stream_id, urgency, incremental)

    def _push(self, message: dict[str, Any]) -> None:
        """asgiref Server Push: the server promises a GET of `path` and answers it by
        running the app on a new scope, as if the client had asked."""
        path = message.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"http.response.push: path must start with /, got {path!r}")
        headers = _header_pairs("http.response.push", message.get("headers", ()))
        for name, value in headers:
            _check_field("http.response.push", name, value)
        if not self.request.push or self.disconnected:
            return  # the client takes no pushes (any more): dropped, as asgiref allows
        if self.pushes >= self.server.config.max_pushes_per_request:
            logger.debug("stream %s: push of %s over max_pushes_per_request", self.stream_id, path)
            return
        self.pushes += 1
        authority = b""
        for name, value in self.request.headers:
            if name == b"host":
                authority = value
        self.wire.push(self.stream_id, authority, path.encode("utf-8"), headers)

    def _early_hint(self, message: dict[str, Any]) -> None:
        """asgiref Early Hints: a 103 with one `link` field per entry."""
        links = message.get("links", ())
        if isinstance(links, (bytes, str)):
            raise TypeError("http.response.early_hint: links must be a list of bytes")
        headers: Headers = []
        for link in links:
            if type(link) is not bytes:
                raise TypeError(f"http.response.early_hint: each link must be bytes, got {link!r}")
            if any(bad in link for bad in _BAD_FIELD_BYTES):
                raise ValueError(f"http.response.early_hint: invalid link {link!r}")
            headers.append((b"link", link))
        if headers and self.request.early_hints and not self.disconnected:
            self.wire.send_informational(self.stream_id, 103, headers)

    async def _send_trailers(self, message: dict[str, Any]) -> None:
        fields = self.trailer_fields
        if fields is None:
            fields = self.trailer_fields = []
        for item in _header_pairs("http.response.trailers", message.get("headers", ())):
            name, value = item
            _check_field("http.response.trailers", name, value)
            if name in FORBIDDEN_TRAILERS:
                raise ValueError(
                    f"http.response.trailers: {name.decode('latin-1')} may not be a trailer"
                )
            fields.append((name, value))
        if message.get("more_trailers", False):
            return
        self.state = RESPONSE_DONE
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        if fields and self.request.trailers and not self.head_only:
            if not _no_body_status(self.status):
                self.wire.send_trailers(self.stream_id, fields)
                return
        # Nowhere to put them (HEAD, 204/304, a client that did not ask): just end.
        await self.wire.send_body(self.stream_id, b"", True)

    def _final_headers(self, length: int | None) -> Headers:
        """The app's headers plus server, date and (when the body is known) length."""
        headers = self.response_headers
        seen = self.seen
        if seen < 0:
            seen = _seen(headers)
        config = self.server.config
        if not seen & _SEEN_SERVER and config.server_header:
            headers.append((b"server", config.server_header.encode("latin-1")))
        if not seen & _SEEN_DATE and config.date_header:
            headers.append((b"date", http_date()))
        if self.info.response_headers:
            headers.extend(self.info.response_headers)
        if length is not None and not seen & _SEEN_LENGTH:
            status = self.status
            if status >= 200 and status != 204 and status != 304:
                headers.append((b"content-length", b"%d" % length))
        return headers

    def _body(self, message: dict[str, Any]) -> Coroutine[Any, Any, None] | None:
        """An `http.response.body`: what goes to the wire at once goes now; what is
        returned (the wire's send_body) is for the caller to await. Not a coroutine
        itself: one coroutine less for every response."""
        body = message.get("body", b"")
        if (
            self.state == RESPONSE_STARTED
            and type(body) is bytes
            and not message.get("more_body", False)
            and not self.trailers
            and not self.head_only
            and not self.disconnected
            and self.status != 204
            and self.status != 304
        ):
            # The usual response, one body message: the general case below, shortened.
            self.state = RESPONSE_DONE
            wire = self.wire
            wire.send_head(self.stream_id, self.status, self._final_headers(len(body)), not body)
            if body:
                self.body_bytes = len(body)
                # An EagerBodyWire takes it now when it can (no cast(): it is a call).
                eager: EagerBodyWire = wire  # type: ignore[assignment]
                if getattr(wire, "eager_body", False) and eager.try_send_body(
                    self.stream_id, body, True
                ):
                    return None
                return wire.send_body(self.stream_id, body, True)
            return None
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        if type(body) is not bytes:
            if isinstance(body, (bytearray, memoryview)):
                body = bytes(body)
            else:
                raise TypeError(
                    f"http.response.body: body must be bytes, got {type(body).__name__}"
                )
        more = bool(message.get("more_body", False))
        # With trailers to come the body does not end the stream, and no length is
        # claimed (HTTP/1.1 can carry trailers only in a chunked body).
        end = not more and not self.trailers
        # A HEAD response carries the length a GET would have had, when the app gave the
        # body; an app that gave none for HEAD does not know it, so none is claimed.
        known = len(body) if (body or not self.head_only) and not self.trailers else None
        status = self.status
        if self.head_only or status < 200 or status == 204 or status == 304:
            body = b""  # the head says what the body would be; none goes out
        wire = self.wire
        if self.state == RESPONSE_STARTED:
            self.state = RESPONSE_BODY
            if not more:
                self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
                wire.send_head(
                    self.stream_id, self.status, self._final_headers(known), end and not body
                )
                if body:
                    self.body_bytes += len(body)
                    return wire.send_body(self.stream_id, body, end)
                return None
            wire.send_head(self.stream_id, self.status, self._final_headers(None), False)
            if not body:
                flush_head(wire, self.stream_id)  # the head goes now, the body later
        if not more:
            self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
            if not end and not body:
                return None
        elif not body:
            return None
        self.body_bytes += len(body)
        return wire.send_body(self.stream_id, body, end)

    async def _pathsend(self, message: dict[str, Any]) -> None:
        """asgiref Path Send: the whole body is the file at `path`, read in bounded
        chunks in a worker thread and sent with the usual backpressure."""
        path = message.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ValueError(f"http.response.pathsend: path must be an absolute str, got {path!r}")
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        loop = asyncio.get_running_loop()
        fd, size = await loop.run_in_executor(None, _open_regular, path)
        try:
            wire = self.wire
            end = not self.trailers
            self.state = RESPONSE_BODY
            headers = self._final_headers(None if self.trailers else size)
            if self.head_only or _no_body_status(self.status) or size == 0:
                self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
                wire.send_head(self.stream_id, self.status, headers, end)
                return
            wire.send_head(self.stream_id, self.status, headers, False)
            file_wire = self._file_wire()
            if file_wire is not None:
                self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
                self.body_bytes += size
                await file_wire.send_file(self.stream_id, fd, 0, size, end)
                return
            offset = 0
            while offset < size:
                data = await loop.run_in_executor(
                    None, os.pread, fd, min(PATHSEND_CHUNK, size - offset), offset
                )
                if not data:
                    raise RuntimeError(f"http.response.pathsend: {path} shrank while sent")
                offset += len(data)
                if offset >= size:
                    self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
                self.body_bytes += len(data)
                await wire.send_body(self.stream_id, data, end and offset >= size)
        finally:
            os.close(fd)

    def _file_wire(self) -> FileWire | None:
        """The wire, if it can sendfile(2) on this connection."""
        wire = self.wire
        return cast(FileWire, wire) if getattr(wire, "zero_copy", False) else None

    async def _zerocopysend(self, message: dict[str, Any]) -> None:
        """asgiref Zero Copy Send: `count` bytes of an open file from `offset` (default:
        its current position, to its end), by sendfile(2)."""
        file = message.get("file")
        try:
            fd = file.fileno()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            raise TypeError(
                f"http.response.zerocopysend: file must be an open OS-level file, got {file!r}"
            ) from None
        offset = message.get("offset")
        count = message.get("count")
        more = bool(message.get("more_body", False))
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if type(offset) is not int or type(count) is not int or offset < 0 or count < 0:
            raise ValueError(
                "http.response.zerocopysend: offset and count must be ints >= 0,"
                f" got {offset!r}, {count!r}"
            )
        if self.disconnected:
            raise ClientDisconnected(f"stream {self.stream_id}: client disconnected")
        if self.head_only or _no_body_status(self.status) or count == 0:
            pending = self._body({"body": b"", "more_body": more})
            if pending is not None:
                await pending
            return
        end = not more and not self.trailers
        if self.state == RESPONSE_STARTED:
            self.state = RESPONSE_BODY
            known = count if end else None
            self.wire.send_head(self.stream_id, self.status, self._final_headers(known), False)
        if not more:
            self.state = RESPONSE_DONE if end else RESPONSE_TRAILERS
        self.body_bytes += count
        await cast(FileWire, self.wire).send_file(self.stream_id, fd, offset, count, end)

    # --- the app task ----------------------------------------------------------------

    async def _run(self) -> None:
        """The app task's body (see `start`); at its end it takes its own task out of
        `server.tasks`, as start_app_task's wrapper does for other tasks."""
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
            try:
                if self.refusal is not None and not self.refusal.done():
                    # The 413 goes out before the stream is given up (the app may have
                    # returned at once on its http.disconnect). At shutdown, no waiting.
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.shield(self.refusal)
                if self.server.access_log:
                    self._log_access()
                self.wire.stream_complete(self.stream_id)
            finally:
                self.server.tasks.discard(self.task)  # set in start() before this runs

    async def _fail(self) -> None:
        """Answer 500 if nothing went out yet, else abort the stream."""
        if self.disconnected or self.state == RESPONSE_DONE:
            return
        if self.state == RESPONSE_BODY or self.state == RESPONSE_TRAILERS:
            self._abort()
            return
        self.status = 500
        self.state = RESPONSE_DONE
        body = b"Internal Server Error"
        self.seen = -1
        self.response_headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers = self._final_headers(len(body))
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
        log_access(self.request, self.scope, status, self.body_bytes, self.start_time)


# What `_seen` notes of a response's fields.
_SEEN_DATE, _SEEN_SERVER, _SEEN_LENGTH = 1, 2, 4

# http.response.start headers already validated, by the app's items themselves: the
# pairs as `_header_pairs` made them and what `_seen` noted. Most apps send the same
# few lists again and again. Bounded: emptied when full.
_STARTS: dict[tuple[Any, ...], tuple[tuple[tuple[bytes, bytes], ...], int]] = {}
_STARTS_MAX = 1024
_START_CACHE_SIZE = 2048  # bytes of names and values: larger field lists are not kept


def _seen(headers: Headers) -> int:
    """Which of date, server and a length (content-length or transfer-encoding) the
    fields have, as _SEEN_* bits."""
    seen = 0
    for name, _ in headers:
        if name == b"date":
            seen |= _SEEN_DATE
        elif name == b"server":
            seen |= _SEEN_SERVER
        elif name == b"content-length" or name == b"transfer-encoding":
            seen |= _SEEN_LENGTH
    return seen


def _response_fields(items: Any) -> tuple[Headers, int]:
    """`_header_pairs` and `_seen` of http.response.start's headers, from `_STARTS` when
    the same items came before. Items equal to ones validated before validate the same
    (a list item, unhashable, takes the long way)."""
    try:
        key = tuple(items)
    except TypeError:  # not iterable: _header_pairs says so
        return _fields_and_seen(items, None)
    try:
        made = _STARTS.get(key)
    except TypeError:  # an unhashable item (a list)
        return _fields_and_seen(key, None)
    if made is not None:
        return list(made[0]), made[1]
    return _fields_and_seen(key, key)


def _fields_and_seen(items: Any, key: tuple[Any, ...] | None) -> tuple[Headers, int]:
    headers = _header_pairs("http.response.start", items)
    seen = _seen(headers)
    if key is not None and sum(len(n) + len(v) for n, v in headers) <= _START_CACHE_SIZE:
        if len(_STARTS) >= _STARTS_MAX:
            _STARTS.clear()
        _STARTS[key] = (tuple(headers), seen)
    return headers, seen


def _header_pairs(kind: str, items: Any) -> Headers:
    """An app's `[name, value]` byte pairs, names lowercased."""
    headers: Headers = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(
                f"{kind}: a header must be a [name, value] pair, got {item!r}"
            ) from None
        if type(name) is not bytes or type(value) is not bytes:
            raise TypeError(f"{kind}: header names and values must be bytes, got {item!r}")
        headers.append((name.lower(), value))
    return headers


def _check_field(kind: str, name: bytes, value: bytes) -> None:
    """A field we put on the wire ourselves (h11/h2 check response heads for us)."""
    if (
        not name
        or name.startswith(b":")
        or b" " in name
        or b":" in name
        or any(bad in name or bad in value for bad in _BAD_FIELD_BYTES)
    ):
        raise ValueError(f"{kind}: invalid field {(name, value)!r}")


def _open_regular(path: str) -> tuple[int, int]:
    """Open a regular file for reading: its descriptor and size."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(f"http.response.pathsend: {path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size
