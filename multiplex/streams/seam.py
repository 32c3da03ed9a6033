"""The seam between wire protocols and the ASGI stream layer.

Below it, HTTP/1.1, HTTP/2 and HTTP/3 each turn their library's events into calls on a
stream (`Request` to make one, then `feed_body`, `feed_end`, `feed_disconnect`). Above
it, the stream calls back into its connection through the `Wire` verbs only. A feature
that needs to know which HTTP version it runs on above this line is a missing verb.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from multiplex.app import ASGIApp
    from multiplex.config import Config

Headers = list[tuple[bytes, bytes]]


class Wire(Protocol):
    """What a stream may ask of the connection that carries it."""

    # The connection's event loop. Streams take it from here rather than from
    # `asyncio.get_running_loop()`, which on CPython before 3.12 makes a getpid() system
    # call each time (its check for a fork): one or two per request otherwise.
    loop: asyncio.AbstractEventLoop

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        """Send a 1xx response head (100 Continue, 103 Early Hints)."""

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        """Send the final response head; `end` means there is no body."""

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        """Send body bytes. Returns once they are on their way within the peer's
        flow-control window and the transport's buffer: this is where backpressure lives.
        Raises ClientDisconnected if the stream or connection is gone."""

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """Send trailer fields after the body and end the response (HTTP/2 and HTTP/3:
        a trailing HEADERS frame with END_STREAM; HTTP/1.1: the last chunk's trailer
        section, or just the end of the body when the response is not chunked).
        Called after `send_body(end=False)`; the fields are already validated."""

    def consumed(self, stream_id: int, n: int) -> None:
        """The app has read `n` request body bytes: give that much credit back."""

    def reset(self, stream_id: int) -> None:
        """Abort the stream after a failure (RST_STREAM; on HTTP/1.1 close the connection)."""

    def stream_complete(self, stream_id: int) -> None:
        """The stream's app task has finished; the connection may clean up or go on."""

    def push(self, stream_id: int, authority: bytes, path: bytes, headers: Headers) -> None:
        """Promise a GET of `authority` + `path` (with these request headers) for the
        stream's client and serve it through the app as a stream of its own.
        Only called where `Request.push` said pushes are possible."""

    def prioritize(self, stream_id: int, urgency: int, incremental: bool) -> None:
        """The app changed the response's priority (RFC 9218 section 8: the server's
        override of the client's signal). A no-op where nothing is multiplexed."""


class FileWire(Wire, Protocol):
    """A `Wire` that can send file bytes without copying them through Python."""

    zero_copy: bool  # send_file works on this connection (it may change per connection)

    async def send_file(self, stream_id: int, fd: int, offset: int, count: int, end: bool) -> None:
        """Send `count` bytes of the open file `fd` from `offset` as body (sendfile(2)),
        with the same backpressure and errors as `send_body`."""


class HeadHoldingWire(Wire, Protocol):
    """A `Wire` that holds the head of `send_head(end=False)` for the body piece that
    follows (HTTP/1.1: head and body in one write, so one packet, with no loop callback
    to let the head go on its own). The stream sends a body piece (`send_body`,
    `send_file`, `send_trailers`) right after such a head; where it has none to send
    at once, it calls `flush_head`. A `reset` lets a held head go first."""

    holds_heads: bool  # True where this applies

    def flush_head(self, stream_id: int) -> None:
        """Send the held head now: no body piece follows at once."""


class EagerBodyWire(Wire, Protocol):
    """A `Wire` that can take a whole body piece at once, without a coroutine, when
    nothing has to be waited for (no other stream queued before it, room in every
    window): for the usual response, one `http.response.body`, that is two coroutines
    and their awaits less a request."""

    eager_body: bool  # True where this applies

    def try_send_body(self, stream_id: int, data: bytes, end: bool) -> bool:
        """Hand all of `data` over now and return True, or nothing and return False
        (then `send_body` does it, with its waiting). Where handing over fails, raises
        what `send_body` would (ClientDisconnected)."""


class WebSocketWire(Wire, Protocol):
    """A `Wire` that can carry WebSockets: the one verb where protocols differ.

    (A protocol of its own so that a wire protocol without WebSocket support yet still
    types as a `Wire` for HTTP streams.)"""

    def accept_websocket(self, stream_id: int, headers: Headers) -> int:
        """Accept a WebSocket request with these extra response headers (subprotocol,
        extensions, the app's own) and return the status that went out.

        HTTP/1.1 answers `101 Switching Protocols` with `Sec-WebSocket-Accept` and from
        then on hands every byte of the connection to the stream; HTTP/2 and HTTP/3
        answer `200` to the extended CONNECT and that stream's DATA is the WebSocket.
        Either way `send_body` then carries WebSocket frames (`end` finishes the
        stream: END_STREAM, or on HTTP/1.1 closing the connection), `feed_body` brings
        the peer's, and `consumed` gives credit back. Denials use `send_head`.
        Raises ClientDisconnected if the stream is already gone."""
        ...


class WebTransportWire(Wire, Protocol):
    """What a WebTransport session asks of its HTTP/3 connection. `session_id` is the
    CONNECT stream's ID; WebTransport streams are QUIC streams of that session."""

    def accept_webtransport(self, session_id: int, headers: Headers) -> None:
        """Answer the extended CONNECT with 200 (and these extra headers)."""

    def wt_open(self, session_id: int, unidirectional: bool) -> int:
        """Open a server-initiated stream in the session; its stream ID."""
        ...

    async def wt_send(self, stream_id: int, data: bytes, end: bool) -> None:
        """Stream data, with the backpressure of `send_body`."""

    def wt_send_datagram(self, session_id: int, data: bytes) -> None:
        """An HTTP datagram (RFC 9297) for the session; ValueError if it cannot fit in
        a QUIC packet. Dropped (unreliable, counted) when too many wait to go out."""

    def wt_reset(self, stream_id: int, code: int) -> None:
        """Abort a stream of the session both ways."""

    def wt_close(self, session_id: int, code: int, reason: str) -> None:
        """CLOSE_WEBTRANSPORT_SESSION capsule, then FIN on the CONNECT stream."""

    def wt_end_session(self, session_id: int) -> None:
        """The session is over: reset what is left of its streams, forget them."""

    def wt_stream_of(self, stream_id: int, session_id: int) -> bool:
        """Whether `stream_id` is an open stream of this session we may send on."""
        ...


class Stream(Protocol):
    """What a wire protocol may ask of a stream (HTTP or WebSocket) it carries."""

    def start(self) -> None:
        """Run the app task."""

    def feed_body(self, data: bytes) -> None:
        """Bytes from the peer: request body, or WebSocket frames once accepted."""

    def feed_end(self) -> None:
        """The peer has finished sending (END_STREAM, end of body, EOF)."""

    def feed_disconnect(self) -> None:
        """The stream or connection is gone (reset, connection lost)."""

    def going_away(self) -> None:
        """Graceful shutdown: finish soon (a WebSocket closes with 1001)."""


class Request:
    """A request head, already validated by the wire protocol."""

    __slots__ = (
        "early_hints",
        "expect_continue",
        "headers",
        "method",
        "priority",
        "push",
        "raw_target",
        "trailers",
        "websocket",
        "webtransport",
    )

    def __init__(
        self,
        method: str,
        raw_target: bytes,
        headers: Headers,
        expect_continue: bool = False,
        websocket: bool = False,
    ) -> None:
        self.method = method
        self.raw_target = raw_target  # path and query as sent (origin-form)
        self.headers = headers  # lowercase names; h2/h3 pseudo-headers already removed
        self.expect_continue = expect_continue
        # The wire protocol recognised a WebSocket handshake (HTTP/1.1 Upgrade, or an
        # extended CONNECT with `:protocol websocket`) and checked what is its own to
        # check (h1: the key); the stream does the rest.
        self.websocket = websocket
        # An HTTP/3 extended CONNECT with `:protocol webtransport`, where enabled.
        self.webtransport = False
        # What the client can take, as the wire protocol knows it: response trailers
        # (HTTP/1.1 only with `TE: trailers`) and 1xx responses (never to HTTP/1.0).
        self.trailers = True
        self.early_hints = True
        # The client's RFC 9218 priority (urgency, incremental) where the protocol
        # schedules responses by it (HTTP/2, HTTP/3); None on HTTP/1.1.
        self.priority: tuple[int, bool] | None = None
        # The connection can push (HTTP/2 or HTTP/3, the client accepts pushes).
        self.push = False


class ConnectionInfo:
    """What every stream of one connection shares: addresses, scheme, version, TLS."""

    __slots__ = ("client", "extensions", "http_version", "response_headers", "scheme", "server")

    def __init__(
        self,
        http_version: str,
        scheme: str,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        extensions: dict[str, Any] | None = None,
        response_headers: Headers | None = None,
    ) -> None:
        self.http_version = http_version
        self.scheme = scheme
        self.client = client
        self.server = server
        self.extensions = extensions if extensions is not None else {}
        # Added to every response on this connection (e.g. alt-svc advertising HTTP/3).
        self.response_headers = response_headers or []


class ServerState:
    """Shared by every connection of one server: the app, config and lifespan state."""

    __slots__ = (
        "access_log",
        "alt_svc",
        "app",
        "config",
        "connections",
        "lifespan_state",
        "shutting_down",
        "tasks",
    )

    def __init__(self, app: ASGIApp, config: Config, lifespan_state: dict[str, Any]) -> None:
        self.app = app
        self.config = config
        self.lifespan_state = lifespan_state
        self.access_log = False
        self.alt_svc: Headers = []  # set when HTTP/3 is on: advertised on TCP responses
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # app tasks, cancelled at shutdown's end
        self.shutting_down = asyncio.Event()
