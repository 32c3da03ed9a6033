"""HTTP/1.1 over one TCP connection: httptools (llhttp, in C) parses requests, this
module frames responses.

h11 was the parser here first; its pure-Python state machine alone cost about 100 µs per
request and response on this machine, more than a whole request takes in servers built
on llhttp, so the request side moved to httptools (the project's rule: a dependency
where it clearly beats writing it). llhttp is strict by default (no obs-fold, no bare
LF, no Content-Length beside Transfer-Encoding, no duplicate Content-Length); what h11
checked beyond it is checked here: the version, exactly one Host, the size and count
limits, and every response field we put on the wire.

One request at a time: llhttp parses ahead, and what it parses of pipelined requests
waits in a queue (bounded by `read_buffer_high`, beyond which the socket is not read)
until the response before them is done. Each request is an `HTTPStream` with a fresh
id. Also the door to cleartext HTTP/2 via `Upgrade: h2c` (RFC 7540 section 3.2) and to
WebSockets (RFC 6455).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from collections import deque
from http import HTTPStatus
from typing import Any

import httptools
from wsproto.utilities import generate_accept_token

from multiplex.errors import ClientDisconnected
from multiplex.protocols.base import BaseConnection
from multiplex.streams import HTTPStream, open_stream
from multiplex.streams.seam import ConnectionInfo, Headers, Request, ServerState, Stream

logger = logging.getLogger("multiplex")

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
# The status lines, made once: b"HTTP/1.1 200 OK\r\n".
_STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()}

# sendfile() goes in pieces this big, each of which must get out within
# send_stall_timeout: a reader that stops does not hold a file and a task forever.
SENDFILE_PIECE = 1024 * 1024

# RFC 9110 section 5: a field name is a token; a value is visible characters (and
# obs-text) with single spaces or tabs inside, none at either end. The same rules h11
# applied to what we send: a CR or LF from an app must never split a response.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+").fullmatch
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?").fullmatch
_DIGITS = re.compile(rb"[0-9]+").fullmatch

# What the parser queues for the connection, in wire order.
_REQUEST, _DATA, _END, _ERROR, _UPGRADE = range(5)

# How the response body is framed.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _FileRange:
    """Stands in for file bytes in an output list: framed by its length, sent by
    sendfile(2) where it sits."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class _Stop(Exception):
    """Raised from a parser callback to stop parsing (the reason is kept aside)."""


# A parsed request head (a tuple: made for every request, a class instance costs more):
# method, target, fields, version, keep-alive, upgrade, size, and what on_header noted
# on the way: the number of Host fields, Expect: 100-continue, TE: trailers.
_Head = tuple[bytes, bytes, Headers, str, bool, bool, int, int, bool, bool]


class ResponseError(Exception):
    """A response the app asked for that HTTP/1.1 cannot carry."""


def loop_can_sendfile(loop: asyncio.AbstractEventLoop) -> bool:
    """asyncio's loops do sendfile(2) on plain TCP transports; uvloop has no sendfile."""
    return isinstance(loop, asyncio.BaseEventLoop)


# Fields already checked: most responses repeat the same few (content-type, server, the
# date of this second), and a set lookup costs a third of the two regex matches. Bounded:
# emptied when full.
_CHECKED: set[tuple[bytes, bytes]] = set()
_CHECKED_MAX = 4096


# Usual response heads already made (see `_encode_head`), by (status, *fields): the head
# and its content-length. Bounded: at most _HEADS_MAX heads of at most _HEAD_CACHE_SIZE
# bytes, emptied when full (a new date each second makes new heads).
_HEADS: dict[tuple[Any, ...], tuple[bytes, int]] = {}
_HEADS_MAX = 512
_HEAD_CACHE_SIZE = 2048


def _check_new_field(field: tuple[bytes, bytes]) -> None:
    """Check a field not yet in `_CHECKED` (RFC 9110 section 5), then remember it. Only
    the cache lookup stays inline in the loops that call this: it is the common case."""
    name, value = field
    if not _TOKEN(name) or not _VALUE(value):
        raise ResponseError(f"invalid header field {field!r}")
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(field)


def encode_fields(headers: Headers) -> list[bytes]:
    """`name: value\\r\\n` pieces for fields we send, each checked (RFC 9110 section 5)."""
    out: list[bytes] = []
    checked = _CHECKED
    for field in headers:
        if field not in checked:
            _check_new_field(field)
        name, value = field
        out += (name, b": ", value, b"\r\n")
    return out


class HTTP1Protocol(BaseConnection):
    holds_heads = True  # a HeadHoldingWire: see send_head

    def __init__(self, server: ServerState, info: ConnectionInfo) -> None:
        super().__init__(server, info)
        config = self.config
        self.max_head = config.http1_max_head_size
        self.max_fields = config.http1_max_header_count
        self.read_high = config.read_buffer_high
        self.parser = httptools.HttpRequestParser(self)
        # The head being parsed.
        self._url = b""
        self._fields: Headers = []
        self._head_size = 0
        self._hosts = 0  # Host fields in it
        self._expect = False  # Expect: 100-continue in it
        self._te_trailers = False  # TE: trailers in it
        self._partial = 0  # bytes of an incomplete head so far
        self.in_head = False  # a request head has begun and is not complete
        self.in_body = False  # a request body is being parsed
        self._synthetic = False  # parsing the stand-in head of a declined upgrade's body
        self._stop: tuple[int, str] | None = None  # why a callback stopped the parser
        # What the parser produced and the connection has not handled yet.
        self.queue: deque[tuple[int, Any]] = deque()
        self.held = 0  # bytes in `queue` (and `_rest`): parsed ahead, waiting their turn
        self._parsing = True  # False after a parse error or while an upgrade is decided
        self._rest = b""  # bytes after an upgrade request, until it is decided
        # The request being answered.
        self.stream: Stream | None = None
        self.stream_id = 0
        self.active = False  # a request is being answered (or refused, or upgraded)
        self.request_done = False  # its body has been read to the end
        self.http10 = False
        self.head_request = False
        self.expect_100 = False  # the client waits for 100 Continue before its body
        self.cycle_keep_alive = True
        self.response_started = False
        self.response_done = False
        self._framing = _NO_BODY
        self._remaining = 0  # body bytes still owed under a content-length
        self._head_out = b""  # the response head, held to go out with the first body
        self.buffered = 0  # request body bytes given to the stream, not yet read by the app
        self.read_paused = False
        self._cycle_waiting = False  # next request held back until the client reads
        self.keep_alive = True
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._header_timer: asyncio.TimerHandle | None = None  # slowloris: http1_header_timeout
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
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.config.keep_alive_timeout, self._idle)

    def start_with(self, transport: asyncio.Transport, data: bytes) -> None:
        """Start on a transport another protocol already read `data` from."""
        self.connection_made(transport)
        if data:
            self.data_received(data)

    # --- parser callbacks (inside feed_data) ---------------------------------------------

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        self.in_head = True
        self._url = b""
        self._fields = []
        self._head_size = 0
        self._hosts = 0
        self._expect = self._te_trailers = False
        self._partial = 0

    def on_url(self, url: bytes) -> None:
        if self._synthetic:
            return
        self._url += url
        self._head_size += len(url)
        if self._head_size > self.max_head:
            self._stop = (431, "request header fields too large")
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._synthetic:
            return
        fields = self._fields
        name = name.lower()
        fields.append((name, value))
        self._head_size += len(name) + len(value) + 4
        # What _on_request needs to know of the fields, noted here rather than found by
        # walks over them afterwards.
        if name == b"host":
            self._hosts += 1
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self._expect = True
        elif name == b"te" and _accepts_trailers(value):
            self._te_trailers = True
        if self._head_size > self.max_head:
            self._stop = (431, "request header fields too large")
            raise _Stop
        if len(fields) > self.max_fields:
            self._stop = (431, f"more than http1_max_header_count = {self.max_fields} fields")
            raise _Stop

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        self.in_head = False
        self.in_body = True
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        parser = self.parser
        version = parser.get_http_version()
        upgrade = parser.should_upgrade()
        head = (
            parser.get_method(),
            self._url,
            self._fields,
            version,
            version == "1.1" and parser.should_keep_alive(),
            upgrade,
            self._head_size,
            self._hosts,
            self._expect,
            self._te_trailers,
        )
        if not (self.queue or self.active or upgrade or self._cycle_waiting or self.closed):
            # Nothing waits before it (the usual, unpipelined request): handled now,
            # not queued for _handle_events. An upgrade always queues: _upgrade_parsed
            # looks for its head there.
            self._on_request(head)
            if self.closed:
                raise _Stop  # refused: nothing more to parse
            return
        self.held += self._head_size
        self.queue.append((_REQUEST, head))

    def on_body(self, body: bytes) -> None:
        if not self.queue:
            # The body of the request being answered, with nothing queued before it.
            self._body_now(body)
            return
        self.held += len(body)
        self.queue.append((_DATA, body))

    def on_message_complete(self) -> None:
        self._synthetic = False
        self.in_body = False
        if not self.queue:
            self._end_now()
            return
        self.queue.append((_END, None))

    # --- input -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._feed_upgraded(data)
            return
        if self._body_timer is not None:
            self._body_seen = self.loop.time()
        if not self._parsing:
            if self._rest or (self.queue and self.queue[-1][0] == _UPGRADE):
                # An upgrade is being decided: what follows is its, or the next request's.
                self._rest += data
                self.held += len(data)
                self._check_reading()
            return
        # _feed, inline: the usual read parses without an exception and leaves the
        # reading as it was.
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError, _Stop) as exc:
            self._feed_failed(data, exc)
        else:
            high = self.read_high
            if self.read_paused or self.held > high or self.buffered > high:
                self._check_reading()
        if self.queue:
            self._handle_events()
        if self.closed:
            return
        if self.in_head:
            # Bound a head that is still incomplete (llhttp keeps no limit): what of it
            # came in this read is at most what followed the last blank line, the end of
            # the head before it.
            end = data.rfind(b"\r\n\r\n")
            self._partial += len(data) - end - 4 if end >= 0 else len(data)
            if self._partial > self.max_head:
                self._parsing = False
                self.queue.append((_ERROR, (431, "request header fields too large")))
                self._handle_events()
                return
            if self._header_timer is None:
                # Part of a request head: the rest must follow in time (slowloris).
                self._header_timer = self.loop.call_later(
                    self.config.http1_header_timeout, self._header_timeout
                )
        elif self.in_body and self._body_timer is None and self.stream is not None:
            # Part of a request body: the rest must not stall (body_timeout).
            self._body_seen = self.loop.time()
            self._body_timer = self.loop.call_later(self.config.body_timeout, self._body_check)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError, _Stop) as exc:
            self._feed_failed(data, exc)
            return
        high = self.read_high
        if self.read_paused or self.held > high or self.buffered > high:
            self._check_reading()

    def _feed_failed(self, data: bytes, exc: Exception) -> None:
        """The parser stopped: at an upgrade, at an error in the bytes, or because a
        callback refused what it saw (_Stop)."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._upgrade_parsed(data[int(exc.args[0]) :])
        else:
            self._parsing = False
            if self.closed:
                return  # refused from a callback (the answer is out)
            status, reason = self._stop or (400, str(exc) or type(exc).__name__)
            self.queue.append((_ERROR, (status, reason)))
        high = self.read_high
        if self.read_paused or self.held > high or self.buffered > high:
            self._check_reading()

    def _upgrade_parsed(self, rest: bytes) -> None:
        """llhttp stopped after a request asking to switch protocols (or a CONNECT),
        without reading a body it may have. `rest` is what followed its head."""
        head: _Head | None = None
        for kind, value in reversed(self.queue):
            if kind == _REQUEST:
                head = value
                break
        assert head is not None
        if self._may_upgrade(head[0], head[2]):
            # A WebSocket or h2c request: once it is answered, the rest is the new
            # protocol's (or, if the app refuses the WebSocket, the next request).
            self._parsing = False
            self._rest = rest
            self.held += len(rest)
            self.queue.append((_UPGRADE, None))
            return
        # Not a switch we make: an ordinary request, whose body (if it has one) llhttp
        # skipped. A fresh parser reads that body behind a stand-in head with the same
        # framing, then whatever follows.
        framing = b""
        for name, value in head[2]:
            if name == b"transfer-encoding":
                framing = b"transfer-encoding: " + value + b"\r\n"
                break
            if name == b"content-length" and value != b"0":
                framing = b"content-length: " + value + b"\r\n"
        self.parser = httptools.HttpRequestParser(self)
        if framing:
            self.queue.pop()  # the end llhttp reported was not the end of the body
            self.in_body = True
            self._synthetic = True
            self._feed(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n" + rest)
        elif rest:
            self._feed(rest)

    def _may_upgrade(self, method: bytes, headers: Headers) -> bool:
        if _is_websocket(method, headers):
            return True
        return self.config.h2c and self.info.scheme == "http" and _h2c_settings(headers) is not None

    def _check_reading(self) -> None:
        """Stop reading while too much waits (pipelined requests, or body the app has
        not read); read again once half of it is gone."""
        high = self.read_high
        if self.read_paused:
            if self.held <= high // 2 and self.buffered <= high // 2 and not self._cycle_waiting:
                self.read_paused = False
                if not self.closed:
                    self.transport.resume_reading()
        elif self.held > high or self.buffered > high:
            self.read_paused = True
            self.transport.pause_reading()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.closed or self.upgraded or not self.in_head:
            return
        if self.active:
            # A pipelined head waits behind a response: its clock starts when it is next.
            return
        logger.info(
            "HTTP/1.1 connection from %s: request head not complete within"
            " http1_header_timeout = %s s; 408 and close",
            self.info.client,
            self.config.http1_header_timeout,
        )
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.close()

    def _body_check(self) -> None:
        """Body read inactivity: the client stopped sending a body we are reading."""
        self._body_timer = None
        if self.closed or self.upgraded or not self.in_body:
            return
        timeout = self.config.body_timeout
        now = self.loop.time()
        if self.read_paused or self.expect_100:
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
        if self.buffered > self.read_high and not self.read_paused:
            # The stream stopped giving credit: its app has a full queue.
            self.read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.upgraded:
            if self.stream is not None:
                self.stream.feed_end()
            return None
        # A client that stops sending is gone: HTTP/1.1 has no half-close.
        if self.stream is not None:
            self.stream.feed_disconnect()
        self.close()
        return None

    def _handle_events(self) -> None:
        """Hand what the parser produced to the request it belongs to, in order; a
        pipelined request waits until the response before it is done."""
        if self._cycle_waiting:
            return  # resume_writing handles what waits
        queue = self.queue
        while queue and not self.closed:
            kind, value = queue[0]
            if kind == _DATA:
                queue.popleft()
                self.held -= len(value)
                self._body_now(value)
            elif kind == _END:
                queue.popleft()
                if self._end_now():
                    return
            elif self.active:
                break  # the next request, its error or its upgrade wait their turn
            elif kind == _REQUEST:
                queue.popleft()
                self.held -= value[6]
                self._on_request(value)
            elif kind == _ERROR:
                queue.popleft()
                self._reject(*value)
                return
            else:  # _UPGRADE: the WebSocket was refused; on with plain HTTP/1.1
                queue.popleft()
                rest, self._rest = self._rest, b""
                self.held -= len(rest)
                self.parser = httptools.HttpRequestParser(self)
                self._parsing = True
                if rest:
                    self._feed(rest)
        if not self.closed:
            self._check_reading()

    def _body_now(self, data: bytes) -> None:
        """Request body bytes for the request being answered."""
        self.expect_100 = False
        stream = self.stream
        if stream is not None:
            self.buffered += len(data)
            stream.feed_body(data)
            if self.buffered > self.read_high and not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()

    def _end_now(self) -> bool:
        """The end of the request being answered; True if the connection turned into
        HTTP/2 (h2c) and this object is done."""
        self.request_done = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self.stream is not None:
            self.stream.feed_end()
        elif self._h2c_pending is not None:
            self._upgrade_h2c()
            return True
        return False

    def _on_request(self, head: _Head) -> None:
        method, target, headers, version, keep_alive, upgrade, _, hosts, expect, te = head
        if version != "1.1" and version != "1.0":
            # llhttp parses HTTP/0.9 and 2.0 request lines too; `GET / HTTP/2.0` here is
            # not a request to hand to the app (RFC 9112 section 2.3).
            self._reject(505, f"HTTP/{version} is not served here")
            return
        if hosts != 1 and (hosts > 1 or version == "1.1"):
            # RFC 9112 section 3.2: exactly one Host in HTTP/1.1.
            self._reject(400, "an HTTP/1.1 request needs exactly one Host header")
            return
        expect = expect and version == "1.1"
        websocket = upgrade and _is_websocket(method, headers)
        if websocket:
            problem = self._websocket_problem(headers)
            if problem:
                self._reject(400, problem)
                return
        self.stream_id += 1
        self.active = True
        self.request_done = False
        self.response_started = False
        self.response_done = False
        self.http10 = version == "1.0"
        self.head_request = method == b"HEAD"
        self.cycle_keep_alive = keep_alive
        self.expect_100 = expect
        request = Request(method.decode("ascii"), target, headers, expect, websocket)
        # Trailers only to a client that said it takes them (RFC 9110 section 10.1.4), in
        # a chunked body (HTTP/1.1); no 1xx responses to an HTTP/1.0 client (section 15.2).
        if self.http10:
            request.trailers = request.early_hints = False
        else:
            request.trailers = te
        if upgrade and not websocket:
            settings = _h2c_settings(headers) if self.config.h2c else None
            if settings is not None and self.info.scheme == "http":
                # Answer over HTTP/2 once the (bodiless) request is complete.
                self._h2c_pending = (request, settings)
                return
        info = self.info
        if self.http10:
            # The scope's http_version is the request's, not the connection's default.
            old = info
            info = ConnectionInfo(
                "1.0", old.scheme, old.client, old.server, old.extensions, old.response_headers
            )
        stream: Stream
        if websocket:
            stream = open_stream(self, self.stream_id, request, info, self.server)
        else:
            stream = HTTPStream(self, self.stream_id, request, info, self.server)
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
        if not self.response_started and self.stream is None and not self.closed:
            body = f"{status} {_REASONS.get(status, b'').decode()}: {reason}\n".encode()
            self.transport.write(
                b"".join(
                    [
                        _STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status),
                        b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
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
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        if self.queue and self.queue[0][0] == _UPGRADE:
            self.queue.popleft()
        rest, self._rest = self._rest, b""
        self._cancel_timers()
        self.server.connections.discard(self)
        self.closed = True  # this object is done; the transport lives on under h2
        self._release_parser()  # and no connection_lost will come to do it
        old = self.info
        info = ConnectionInfo(
            "2", old.scheme, old.client, old.server, old.extensions, old.response_headers
        )
        h2proto = H2Protocol(self.server, info)
        self.transport.set_protocol(h2proto)
        if self.read_paused:
            self.transport.resume_reading()
        h2proto.start_upgraded(self.transport, settings, request, rest)

    # --- Wire verbs --------------------------------------------------------------------

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        if stream_id != self.stream_id or self.closed or self.http10 or self.response_started:
            return
        try:
            fields = encode_fields(headers)
        except ResponseError:
            return
        if status == 100:
            self.expect_100 = False
        self.transport.write(
            b"".join([_STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status), *fields, b"\r\n"])
        )

    def _encode_head(self, status: int, headers: Headers) -> bytes:
        """The response head as it goes out, with its framing fields settled the way
        h11 settled them (RFC 9112 section 6): the app's content-length if it gave one,
        else chunked for HTTP/1.1 and read-until-close for HTTP/1.0; `connection:
        close` whenever the connection ends after this response."""
        if (
            self.cycle_keep_alive
            and self.keep_alive
            and not self.head_request
            and status != 204
            and status != 304
        ):
            # The usual response: one pass checks and encodes, and is the answer when the
            # app gave a plain content-length and nothing framing- or connection-related.
            # Most responses repeat a head seen before (the same fields, the date of this
            # second): then the head is the one made then, found by the fields themselves.
            key = (status, *headers)
            made = _HEADS.get(key)
            if made is not None:
                self._framing = _LENGTH
                self._remaining = made[1]
                return made[0]
            out = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status]
            checked = _CHECKED
            length = None
            special = False
            for field in headers:
                if field not in checked:
                    _check_new_field(field)
                name, value = field
                if name == b"content-length":
                    if length is not None or not _DIGITS(value):
                        special = True
                    length = value
                elif name == b"transfer-encoding" or name == b"connection":
                    special = True
                out += (name, b": ", value, b"\r\n")
            if length is not None and not special:
                out.append(b"\r\n")
                self._framing = _LENGTH
                remaining = self._remaining = int(length)
                head = b"".join(out)
                if len(head) <= _HEAD_CACHE_SIZE:
                    if len(_HEADS) >= _HEADS_MAX:
                        _HEADS.clear()
                    _HEADS[key] = (head, remaining)
                return head
        return self._encode_head_slowly(status, headers)

    def _encode_head_slowly(self, status: int, headers: Headers) -> bytes:
        """`_encode_head` for every other response."""
        length: bytes | None = None
        chunked = close = False
        for name, value in headers:
            if name == b"content-length":
                if not _DIGITS(value) or (length is not None and value != length):
                    raise ResponseError(f"invalid content-length {value!r}")
                length = value
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked":
                    raise ResponseError("only Transfer-Encoding: chunked is supported")
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if not self.cycle_keep_alive or not self.keep_alive:
            close = True
        if status == 204 or status == 304 or self.head_request:
            framing = _NO_BODY
            self._remaining = 0
            # A HEAD response has the framing fields a GET's would have.
            if self.head_request and length is None and not chunked:
                chunked = True
                if self.http10:
                    headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
                else:
                    headers = [*headers, (b"transfer-encoding", b"chunked")]
        elif chunked or length is None:
            if self.http10:
                framing = _UNTIL_CLOSE
                close = True
                headers = [
                    (n, v)
                    for n, v in headers
                    if n != b"transfer-encoding" and n != b"content-length"
                ]
            else:
                framing = _CHUNKED
                if length is not None:  # beside transfer-encoding it means nothing
                    headers = [(n, v) for n, v in headers if n != b"content-length"]
                if not chunked:
                    headers = [*headers, (b"transfer-encoding", b"chunked")]
        else:
            framing = _LENGTH
            self._remaining = int(length)
        if close:
            self.cycle_keep_alive = False
            tokens = {b"close"}
            for name, value in headers:
                if name == b"connection":
                    tokens.update(t.strip().lower() for t in value.split(b","))
            tokens.discard(b"keep-alive")
            tokens.discard(b"")
            headers = [(n, v) for n, v in headers if n != b"connection"]
            headers.append((b"connection", b", ".join(sorted(tokens))))
        fields = encode_fields(headers)
        self._framing = framing
        return b"".join([_STATUS_LINES.get(status, b"HTTP/1.1 %d \r\n" % status), *fields, b"\r\n"])

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        if stream_id != self.stream_id or self.closed:
            return
        if self.server.shutting_down.is_set():
            self.keep_alive = False
        made = None
        if self.cycle_keep_alive and self.keep_alive and not self.head_request:
            # A usual head made before (see _encode_head), found without that call.
            made = _HEADS.get((status, *headers))
        if made is not None:
            head = made[0]
            self._framing = _LENGTH
            self._remaining = made[1]
        else:
            try:
                head = self._encode_head(status, headers)
            except ResponseError as exc:
                self.close()
                raise RuntimeError(f"invalid response head: {exc}") from None
        if end:
            try:
                head += self._end_bytes()
            except ResponseError as exc:
                self.close()
                raise RuntimeError(f"invalid response head: {exc}") from None
        self.response_started = True
        self.expect_100 = False
        if end:
            self.transport.write(head)
            self._response_complete()
            return
        # Held for the first body piece, which the stream sends at once (HeadHoldingWire):
        # one write, one packet. Where it has none yet (a streaming response that waits)
        # it calls flush_head.
        self._head_out = head

    def flush_head(self, stream_id: int) -> None:
        if stream_id == self.stream_id:
            self._flush_head()

    def _flush_head(self) -> None:
        if self._head_out and not self.closed:
            self.transport.write(self._head_out)
        self._head_out = b""

    def _end_bytes(self) -> bytes:
        framing = self._framing
        if framing == _CHUNKED:
            return b"0\r\n\r\n"
        if framing == _LENGTH and self._remaining:
            raise ResponseError(
                f"too little data for declared Content-Length ({self._remaining} missing)"
            )
        return b""

    def _frame(self, data: Any, size: int) -> list[Any]:
        """The wire pieces for `size` body bytes `data` (bytes or a _FileRange)."""
        framing = self._framing
        if framing == _CHUNKED:
            return [b"%x\r\n" % size, data, b"\r\n"]
        if framing == _LENGTH:
            if size > self._remaining:
                raise ResponseError("too much data for declared Content-Length")
            self._remaining -= size
        elif framing == _NO_BODY:
            raise ResponseError("this response has no body")
        return [data]

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
        size = len(data)
        if self._framing == _LENGTH and size < 16384:
            # The usual body: a content-length it fits (all of it, when it is the end).
            remaining = self._remaining - size
            if remaining == 0 or (remaining > 0 and not end):
                self._remaining = remaining
                head = self._head_out
                if head:
                    self._head_out = b""
                    self.transport.write(head + data)
                elif data:
                    self.transport.write(data)
                if end:
                    self._response_complete()
                elif self.write_paused:
                    await self.drain()
                return
        try:
            out = self._frame(data, size) if data else []
            if end:
                out.append(self._end_bytes())
        except ResponseError as exc:
            self.close()
            raise RuntimeError(f"invalid response body: {exc}") from None
        head = self._head_out
        if head:
            self._head_out = b""
            out.insert(0, head)
        if size < 16384:
            self.transport.write(b"".join(out))
        else:
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
            out: list[Any] = self._frame(marker, count)
        except ResponseError as exc:
            self.close()
            raise RuntimeError(f"invalid response body: {exc}") from None
        if self._head_out:
            out.insert(0, self._head_out)
            self._head_out = b""
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
            try:
                tail = self._end_bytes()
            except ResponseError as exc:
                self.close()
                raise RuntimeError(f"invalid response body: {exc}") from None
            if tail:
                self.transport.write(tail)
            self._response_complete()

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if stream_id != self.stream_id or self.closed:
            return
        # Only a chunked body has a trailer section; otherwise the fields are dropped.
        try:
            if self._framing == _CHUNKED:
                out = b"".join([b"0\r\n", *encode_fields(headers), b"\r\n"])
            else:
                out = self._end_bytes()
        except ResponseError as exc:
            self.close()
            raise RuntimeError(f"invalid response trailers: {exc}") from None
        if self._head_out:
            out = self._head_out + out
            self._head_out = b""
        self.transport.write(out)
        self._response_complete()

    def consumed(self, stream_id: int, n: int) -> None:
        if stream_id != self.stream_id:
            return
        self.buffered -= n
        if self.read_paused and self.buffered <= self.read_high // 2:
            if self.upgraded:
                self.read_paused = False
                if not self.closed:
                    self.transport.resume_reading()
            else:
                self._check_reading()

    def reset(self, stream_id: int) -> None:
        # HTTP/1.1 has no way to abort one response but to close the connection.
        if stream_id == self.stream_id:
            if self._head_out and not self.closed:
                self._flush_head()
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
        try:
            fields = encode_fields(headers)
        except ResponseError as exc:
            self.close()
            raise ClientDisconnected(f"cannot switch to WebSocket: {exc}") from None
        self.transport.write(
            b"".join(
                [
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n",
                    b"connection: Upgrade\r\nsec-websocket-accept: ",
                    generate_accept_token(self._ws_key),
                    b"\r\n",
                    *fields,
                    b"\r\n",
                ]
            )
        )
        # The parser is done with this connection: from here on every byte is the
        # WebSocket's.
        self.upgraded = True
        self.response_started = True
        self._cancel_timers()
        self.queue.clear()
        rest, self._rest = self._rest, b""
        self.held = 0
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if rest:
            self._feed_upgraded(rest)
        return 101

    # --- keep-alive --------------------------------------------------------------------

    def _response_complete(self) -> None:
        if self.response_done:
            return
        self.response_done = True
        if not self.cycle_keep_alive or not self.keep_alive or self._framing == _UNTIL_CLOSE:
            self.close()
            return
        if not self.request_done:
            # The client is still sending a body the app did not want; rather than read
            # and discard it, end the connection (the response itself is complete).
            if self.stream is not None:
                self.stream.feed_disconnect()
            self.close()
            return
        self.stream = None
        self.active = False
        self.buffered = 0
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
        # _next_cycle, inline for the usual case: nothing queued, reading on.
        self._idle_since = self.loop.time()
        if self.queue or self.read_paused or self.held > self.read_high or self.in_head:
            self._next_cycle()

    def _next_cycle(self) -> None:
        self._idle_since = self.loop.time()
        if self.queue:
            # Pipelined requests already parsed: the next one after this loop turn.
            self.loop.call_soon(self._handle_events)
        elif self.read_paused or self.held > self.read_high:
            self._check_reading()
        if self.in_head and self._header_timer is None:
            self._header_timer = self.loop.call_later(
                self.config.http1_header_timeout, self._header_timeout
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._cycle_waiting and not self.closed:
            self._cycle_waiting = False
            self._next_cycle()

    def _idle(self) -> None:
        """keep_alive_timeout: one timer per connection, moved on rather than re-armed
        for every request."""
        self._idle_timer = None
        if self.closed or self.upgraded:
            return
        timeout = self.config.keep_alive_timeout
        if self.active or self.in_head or self.in_body or self.queue:
            remaining = timeout
        else:
            remaining = self._idle_since + timeout - self.loop.time()
            if remaining <= 0:
                self.close()
                return
        self._idle_timer = self.loop.call_later(remaining, self._idle)

    def _cancel_timers(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_header_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def shutdown(self) -> None:
        self.keep_alive = False
        if self.upgraded:
            if self.stream is not None:
                self.stream.going_away()
            return
        if not self.active and self.stream_id == 0 and not self.closed:
            # Accepted just before the shutdown, no request yet: the client has likely
            # sent it already (in flight, or unread in the socket), and a client does
            # not retry a request on a new connection that closes. Serve that one.
            wait = self.config.graceful_first_request_wait
            if wait > 0:
                self.loop.call_later(wait, self._close_if_idle)
                return
        if not self.active or self.response_done:
            self.close()

    def _close_if_idle(self) -> None:
        if not self.closed and (not self.active or self.response_done):
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timers()
        self._release_parser()
        # The stream holds this protocol (its wire) and we held it: a reference cycle
        # when the connection ends under a request (or after one the connection was
        # closed for). Its task, if still running, keeps it alive; the Wire verbs it may
        # yet call go by stream ID, not by this reference.
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.feed_disconnect()

    def _release_parser(self) -> None:
        """The parser holds its callbacks, bound methods of this protocol: a reference
        cycle, which left every closed connection to the cyclic collector (rare in a
        serving process: gc_young_threshold). Once the connection is done it gets a
        parser with no callbacks. Nothing feeds a closed connection's parser: no bytes
        come after connection_lost (or, after an h2c upgrade, they go to HTTP/2), and
        _handle_events, which a late loop turn may run, stops at `closed`; were it fed
        all the same, it would parse and call nothing."""
        self.parser = httptools.HttpRequestParser(None)


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


def _accepts_trailers(te: bytes) -> bool:
    """A TE field value that names `trailers`."""
    return b"trailers" in [t.split(b";")[0].strip().lower() for t in te.split(b",")]


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
