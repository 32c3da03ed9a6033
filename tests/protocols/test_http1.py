"""HTTP/1.1 behaviour over real sockets: raw bytes out, an h11 client parsing what comes
back, and httpx where a normal client is enough."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import h2.connection
import h11
import httpx
import pytest

from tests import apps
from tests.conftest import RunningServer
from tests.protocols.rawh2 import H2Client, Response
from tests.sockets import read_to_eof

RunServer = Callable[..., RunningServer]
Scope = dict[str, Any]


class Reply:
    def __init__(self, response: h11.Response, body: bytes, informational: list[int]) -> None:
        self.status = response.status_code
        self.reason = response.reason
        self.header_list = list(response.headers)
        self.headers = {k.decode(): v.decode() for k, v in response.headers}
        self.body = body
        self.informational = informational


class RawClient:
    """A socket plus an h11 client that only *parses* responses, so that each test
    decides exactly which bytes go out (pipelining, chunked bodies, odd framing)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.parser = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, method: bytes = b"GET") -> None:
        """Tell the parser that one more request went out (its bytes are sent apart)."""
        if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
            self.parser.start_next_cycle()
        self.parser.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
        self.parser.send(h11.EndOfMessage())

    def next_event(self) -> Any:
        while True:
            event = self.parser.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.parser.receive_data(self.sock.recv(65536))

    def response(self, method: bytes = b"GET") -> Reply:
        self.expect(method)
        informational: list[int] = []
        event = self.next_event()
        while isinstance(event, h11.InformationalResponse):
            informational.append(event.status_code)
            event = self.next_event()
        assert isinstance(event, h11.Response), event
        head, body = event, b""
        while True:
            event = self.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(head, body, informational)
            else:
                raise AssertionError(f"unexpected {event!r}")

    def read_to_eof(self) -> bytes:
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    clients: list[RawClient] = []

    def connect(port: int) -> RawClient:
        client = RawClient(port)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


Raw = Callable[[int], RawClient]


def request(method: str = "GET", path: str = "/", *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def router(routes: dict[str, Any], default: Any = apps.hello) -> Any:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        prefix = "/" + scope["path"].split("/")[1]
        await routes.get(prefix, default)(scope, receive, send)

    return app


# --- connection management ----------------------------------------------------------------


def test_keep_alive_reuses_the_connection(run_server: RunServer) -> None:
    running = run_server(apps.echo_scope)
    with httpx.Client() as client:
        first = client.get(running.url + "/one")
        second = client.get(running.url + "/two")
    assert first.http_version == second.http_version == "HTTP/1.1"
    assert first.json()["path"] == "/one"
    assert second.json()["path"] == "/two"
    assert first.json()["client"] == second.json()["client"]  # same socket, same port


def test_pipelined_requests_answered_in_order(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.Gate())
    client = raw(running.port)
    client.send(request("GET", "/first") + request("GET", "/second"))
    first = client.response()
    second = client.response()
    assert (first.status, first.body) == (200, b"/first")
    assert (second.status, second.body) == (200, b"/second")


def test_idle_keep_alive_connection_is_closed(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello, keep_alive_timeout=0.3)
    client = raw(running.port)
    client.send(request())
    assert client.response().body == b"hello 1.1"
    assert client.sock.recv(65536) == b""  # EOF: the server hung up on the idle connection


# --- bodies --------------------------------------------------------------------------------


def test_chunked_request_body(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.sha256_upload)
    parts = [b"hello ", b"chunked ", b"x" * 70000, b"world"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    client = raw(running.port)
    client.send(request("POST", "/", "Transfer-Encoding: chunked", body=body))
    reply = client.response()
    whole = b"".join(parts)
    assert reply.status == 200
    assert reply.body == f"{hashlib.sha256(whole).hexdigest()} {len(whole)}".encode()


def test_streaming_response_is_chunked(run_server: RunServer, raw: Raw) -> None:
    size = 300_000
    running = run_server(apps.big)
    client = raw(running.port)
    client.send(request("GET", f"/big?{size}"))
    reply = client.response()
    assert reply.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in reply.headers
    assert reply.body == apps.pattern(size)


def test_content_length_when_body_known(run_server: RunServer) -> None:
    running = run_server(apps.hello)
    with httpx.Client() as client:
        response = client.get(running.url)
    assert response.headers["content-length"] == "9"
    assert "transfer-encoding" not in response.headers
    assert response.text == "hello 1.1"


def test_date_and_server_headers(run_server: RunServer) -> None:
    running = run_server(apps.hello)
    with httpx.Client() as client:
        response = client.get(running.url)
    assert response.headers["server"] == "multiplex"
    assert parsedate_to_datetime(response.headers["date"]).tzinfo is not None
    assert len(response.headers.get_list("date")) == 1


def test_head_has_length_but_no_body(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    client = raw(running.port)
    client.send(request("HEAD", "/", "Connection: close"))
    data = client.read_to_eof()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\ncontent-length: 9" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert rest == b""


# --- Expect: 100-continue ------------------------------------------------------------------


def test_expect_continue_sent_when_app_reads(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.sha256_upload)
    client = raw(running.port)
    client.send(request("POST", "/", "Content-Length: 5", "Expect: 100-continue"))
    client.expect(b"POST")
    event = client.next_event()
    assert isinstance(event, h11.InformationalResponse)
    assert event.status_code == 100
    client.send(b"abcde")  # only now does the body go out
    event = client.next_event()
    assert isinstance(event, h11.Response)
    assert event.status_code == 200
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        body += event.data
    assert body == f"{hashlib.sha256(b'abcde').hexdigest()} 5".encode()


def test_expect_continue_not_sent_when_app_does_not_read(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    client = raw(running.port)
    client.send(request("POST", "/", "Content-Length: 5", "Expect: 100-continue"))
    reply = client.response(b"POST")
    assert reply.informational == []
    assert reply.status == 200
    assert reply.body == b"hello 1.1"


# --- errors --------------------------------------------------------------------------------


def test_bad_request_gets_400_and_close(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: test\r\nbad header line\r\n\r\n")
    data = client.read_to_eof()  # EOF: the connection is closed after the answer
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in head.lower()
    assert body.startswith(b"400 Bad Request: ")
    assert len(body) > len(b"400 Bad Request: \n")  # a reason is given


@pytest.mark.parametrize("whole", [True, False], ids=["whole-head", "unfinished-head"])
def test_oversized_headers_get_431(run_server: RunServer, raw: Raw, whole: bool) -> None:
    running = run_server(apps.hello, http1_max_head_size=16 * 1024)
    client = raw(running.port)
    head = request("GET", "/", "X-Big: " + "a" * 20000)
    client.send(head if whole else head[:-4])  # unfinished: the blank line never comes
    data = client.read_to_eof()
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


def test_app_failure_before_start_500_then_keep_alive(run_server: RunServer, raw: Raw) -> None:
    running = run_server(router({"/fail": apps.fail_before_start}))
    client = raw(running.port)
    client.send(request("GET", "/fail"))
    failed = client.response()
    assert failed.status == 500
    assert failed.body == b"Internal Server Error"
    client.send(request("GET", "/ok"))
    ok = client.response()
    assert (ok.status, ok.body) == (200, b"hello 1.1")


def test_app_failure_after_start_truncates_and_closes(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.fail_after_start)
    client = raw(running.port)
    client.send(request())
    client.expect()
    event = client.next_event()
    assert isinstance(event, h11.Response)
    assert (b"transfer-encoding", b"chunked") in list(event.headers)
    body = b""
    with pytest.raises(h11.RemoteProtocolError, match="without sending complete message body"):
        while True:
            event = client.next_event()
            assert not isinstance(event, h11.EndOfMessage)
            body += event.data
    assert body == b"partial"


# --- h2c upgrade ---------------------------------------------------------------------------


def upgrade_request(conn: h2.connection.H2Connection) -> bytes:
    settings = conn.initiate_upgrade_connection().decode()
    return request(
        "GET", "/", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
        f"HTTP2-Settings: {settings}",
    )  # fmt: skip


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """A response head from the socket, and whatever came after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def test_h2c_upgrade(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=10)
    with H2Client(running.port, sock=sock, upgrade_settings=True) as client:
        sock.sendall(upgrade_request(client.conn))
        head, rest = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: h2c" in head.lower()
        client.flush()  # our connection preface and SETTINGS
        response = client.responses[1] = Response()
        if rest:
            client.feed(rest)
        client.until(lambda: response.done)
        assert response.ended
        assert response.status == 200
        assert response.body == b"hello 2"
        assert client.get("/second").body == b"hello 2"  # stream 3 on the same connection


def test_h2c_upgrade_ignored_when_h2c_off(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    client = raw(running.port)
    client.send(upgrade_request(h2.connection.H2Connection()))
    reply = client.response()
    assert reply.informational == []
    assert reply.status == 200
    assert reply.body == b"hello 1.1"


def test_shutdown_serves_the_first_request_of_a_fresh_connection(run_server: RunServer) -> None:
    """A connection accepted just before a graceful shutdown (a workers' reload does
    one) whose request is still on its way gets that request served, with `connection:
    close`: closing it would drop a request the client sent, on a new connection, which
    clients do not retry. A connection that already had its request is closed at once."""
    import threading
    import time

    running = run_server(apps.hello)
    address = ("127.0.0.1", running.port)
    with socket.create_connection(address) as fresh, socket.create_connection(address) as used:
        used.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        while (event := client.next_event()) is not h11.PAUSED and not isinstance(
            event, h11.EndOfMessage
        ):
            if event is h11.NEED_DATA:
                client.receive_data(used.recv(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
        deadline = time.monotonic() + 10
        while running.call(lambda: len(running.server.state.connections)) < 2:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stopper = threading.Thread(target=running.shutdown)
        stopper.start()
        assert read_to_eof(used) == b""  # idle after its request: closed at once
        fresh.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        response = read_to_eof(fresh)
        stopper.join(30)
    assert response.startswith(b"HTTP/1.1 200"), response
    assert b"connection: close" in response.lower()


# --- what the parser leaves to us ------------------------------------------------------------


def test_request_without_host_gets_400(run_server: RunServer, raw: Raw) -> None:
    """RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host."""
    running = run_server(apps.hello)
    for head in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        client = raw(running.port)
        client.send(head)
        assert client.read_to_eof().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_http10_without_host_is_served_and_closed(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    client = raw(running.port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    head, _, body = client.read_to_eof().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close" in head.lower()
    assert body == b"hello 1.0"


def test_other_versions_get_505(run_server: RunServer, raw: Raw) -> None:
    running = run_server(apps.hello)
    for version in (b"2.0", b"0.9"):
        client = raw(running.port)
        client.send(b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n")
        assert client.read_to_eof().startswith(b"HTTP/1.1 505 ")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_declined_upgrade_is_an_ordinary_request_with_its_body(
    run_server: RunServer, raw: Raw, framing: str
) -> None:
    """An `Upgrade` we do not switch to is ignored (RFC 9110 section 7.8): the request,
    its body and the pipelined request after it are all served over HTTP/1.1."""
    running = run_server(apps.sha256_upload)
    if framing == "chunked":
        body, field = b"5\r\nabcde\r\n0\r\n\r\n", "Transfer-Encoding: chunked"
    else:
        body, field = b"abcde", "Content-Length: 5"
    client = raw(running.port)
    upgrading = request("POST", "/", "Connection: Upgrade", "Upgrade: foo/1", field, body=body)
    client.send(upgrading + request("POST", "/", "Content-Length: 2", body=b"xy"))
    first = client.response(b"POST")
    second = client.response(b"POST")
    assert first.body == f"{hashlib.sha256(b'abcde').hexdigest()} 5".encode()
    assert second.body == f"{hashlib.sha256(b'xy').hexdigest()} 2".encode()


def test_refused_websocket_keeps_the_connection(run_server: RunServer, raw: Raw) -> None:
    """An app that closes before accepting gets the handshake a 403; the connection
    then goes on as HTTP/1.1 with the request that came right behind the handshake."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close"})
        else:
            await apps.hello(scope, receive, send)

    running = run_server(app)
    client = raw(running.port)
    handshake = request(
        "GET",
        "/",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    client.send(handshake + request("GET", "/after"))
    assert client.response().status == 403
    after = client.response()
    assert (after.status, after.body) == (200, b"hello 1.1")


def test_response_field_with_a_line_break_never_reaches_the_wire(
    run_server: RunServer, raw: Raw
) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"x-a", b"ok\r\nx-injected: 1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"body"})

    running = run_server(app)
    client = raw(running.port)
    client.send(request())
    assert b"x-injected" not in client.read_to_eof()


def test_content_length_the_body_does_not_match_closes(run_server: RunServer, raw: Raw) -> None:
    """A body longer than the app's content-length is never sent: the connection ends
    after the head rather than desynchronise the client."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"3")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"def"})

    running = run_server(app)
    client = raw(running.port)
    client.send(request())
    head, _, body = client.read_to_eof().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b"abc"
