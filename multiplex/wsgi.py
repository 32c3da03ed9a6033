"""Serve a WSGI app (PEP 3333) as an ASGI 3 app, so it runs over HTTP/1.1, HTTP/2 and
HTTP/3 unchanged.

Each request runs the app in a thread of a bounded pool. Nothing is buffered whole in
either direction:

- `wsgi.input` pulls the request body from ASGI `receive()` only when the app reads, one
  message at a time (a blocking call into the event loop). The app's reading speed is the
  flow-control credit the client gets: the body waits in the protocol's own bounded
  windows, not here.
- Each chunk of the response iterable (and each `write()`) goes through ASGI `send()`
  from the app's thread and blocks until the server has taken it, so a slow client
  slows the app's generator down instead of piling chunks up in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any

from multiplex.app import Message, Receive, Scope, Send
from multiplex.errors import ClientDisconnected

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WSGIAdapter:
    """An ASGI 3 app that runs `app` in at most `threads` threads at a time."""

    def __init__(self, app: WSGIApp, threads: int) -> None:
        self.app = app
        self.threads = threads
        # Made on first use: the semaphore belongs to the serving loop, and a pool is
        # only worth starting once there is a request.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return  # WSGI has no lifespan; the server carries on without it
        if kind == "websocket":
            # Closing before accepting: the client gets 403 (WSGI cannot hold a WebSocket).
            await send({"type": "websocket.close", "code": 1000})
            return
        if self._executor is None or self._slots is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="multiplex-wsgi"
            )
            self._slots = asyncio.Semaphore(self.threads)
        loop = asyncio.get_running_loop()
        call = _Call(self.app, scope, receive, send, loop)
        # Waiting here rather than in the pool's queue: a waiting request costs no thread,
        # and a client that leaves while waiting just cancels this task.
        await self._slots.acquire()
        try:
            future = loop.run_in_executor(self._executor, call.run)
        except BaseException:
            self._slots.release()
            raise
        slots = self._slots
        # The slot is free when the thread is, not when this task is cancelled: the
        # thread then only stops at its next receive() or send().
        future.add_done_callback(lambda _: slots.release())
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            call.cancel()
            raise


class _Call:
    """One request: the bridge between the app's thread and the event loop."""

    def __init__(
        self,
        app: WSGIApp,
        scope: Scope,
        receive: Receive,
        send: Send,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app = app
        self.scope = scope
        self.receive = receive
        self.send = send
        self.loop = loop
        self.lock = threading.Lock()
        self.cancelled = False  # the ASGI side gave up: the thread must stop
        self.pending: concurrent.futures.Future[Any] | None = None
        # The response, as start_response and the first chunk leave it.
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.remaining: int | None = None  # bytes still due by Content-Length
        self.finished = False

    # --- the loop side ---------------------------------------------------------------------

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            if self.pending is not None:
                self.pending.cancel()

    # --- the thread side -------------------------------------------------------------------

    def wait_for(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run `coro` on the loop and block this thread until it is done."""
        with self.lock:
            if self.cancelled:
                coro.close()
                raise ClientDisconnected("request cancelled")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self.pending = future
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise ClientDisconnected("request cancelled") from None
        finally:
            self.pending = None

    def run(self) -> None:
        environ = build_environ(self.scope, InputStream(self))
        iterable = self.app(environ, self.start_response)
        try:
            if isinstance(iterable, (list, tuple)) and self.remaining is None:
                # Every chunk is known: the last one ends the body in the same message.
                for index, chunk in enumerate(iterable):
                    self.send_chunk(chunk, last=index == len(iterable) - 1)
            else:
                for chunk in iterable:
                    if chunk:
                        self.send_chunk(chunk)
            if not self.finished:
                self.send_chunk(b"", last=True)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the response; re-raise to abort it.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise RuntimeError("start_response called a second time without exc_info")
        code, _, _ = status.partition(" ")
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"start_response: status must look like '200 OK', got {status!r}")
        encoded: list[tuple[bytes, bytes]] = []
        remaining: int | None = None
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"start_response: headers must be str pairs, got {(name, value)!r}")
            encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
            if name.lower() == "content-length" and value.strip().isdigit():
                remaining = int(value)
        self.status = int(code)
        self.headers = encoded
        self.remaining = remaining
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write() callable, for apps that push their body imperatively."""
        if data:
            self.send_chunk(data)

    def send_chunk(self, data: bytes, last: bool = False) -> None:
        if self.status is None:
            raise RuntimeError("the WSGI app returned a body before calling start_response")
        if self.finished:
            if data:
                raise RuntimeError("the WSGI app sent more body than its Content-Length")
            return
        if self.remaining is not None:
            self.remaining -= len(data)
            # The chunk that completes Content-Length ends the body: no extra message.
            last = last or self.remaining <= 0
        messages: list[Message] = []
        if not self.headers_sent:
            messages.append(
                {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )
            self.headers_sent = True
        messages.append({"type": "http.response.body", "body": data, "more_body": not last})
        self.finished = last
        # One hop into the loop per chunk, however many messages it carries.
        self.wait_for(_send_all(self.send, messages))


async def _awaited(receive: Receive) -> Message:
    # receive() is only called on the loop: it may touch loop state when called.
    return await receive()


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)


class InputStream:
    """`wsgi.input`: a blocking reader of the request body, filled from ASGI receive()
    only as the app reads. It holds at most what one read asked for plus one message."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """Receive one more body message; False at the end of the body."""
        if self._eof:
            return False
        message = self._call.wait_for(_awaited(self._call.receive))
        if message["type"] == "http.disconnect":
            self._eof = True
            raise ClientDisconnected("client disconnected while the app read the body")
        self._buffer += message.get("body", b"")
        if not message.get("more_body", False):
            self._eof = True
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def read1(self, size: int = -1) -> bytes:
        """At most `size` bytes, blocking only if none are buffered (io's read1)."""
        while not self._buffer and self._fill():
            pass
        return self._take(len(self._buffer) if size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = None if size is None or size < 0 else size
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                return self._take(end + 1 if limit is None else min(end + 1, limit))
            if limit is not None and len(self._buffer) >= limit:
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buffer))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def build_environ(scope: Scope, body: InputStream) -> dict[str, Any]:
    """The PEP 3333 environ of an ASGI `http` scope. Strings are "native strings": bytes
    from the wire decoded as latin-1, as PEP 3333 asks."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    server = scope.get("server") or ("localhost", 80)
    scheme = scope.get("scheme", "http")
    server_port = server[1] if server[1] is not None else (443 if scheme == "https" else 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": _native(root_path),
        "PATH_INFO": _native(path),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server_port),
        "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        # The body ends where the client ends it (chunked, HTTP/2, HTTP/3 need no
        # Content-Length): Werkzeug and others then read to EOF.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,  # with --workers or many machines: assume so
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        elif "_" in name:
            # `X_Forwarded_For` would land on the same key as `X-Forwarded-For`: a way to
            # smuggle a header past a proxy that only filters the dashed name. Drop it.
            continue
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            # HTTP/2 and HTTP/3 send each cookie as its own field (RFC 9113 8.2.3).
            separator = "; " if key == "HTTP_COOKIE" else ","
            environ[key] += separator + value
        else:
            environ[key] = value
    return environ


def _native(text: str) -> str:
    """A decoded path as WSGI wants it: its UTF-8 bytes as latin-1 characters."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")
