"""Real framework apps, unchanged, over every protocol: Django + Channels, Starlette and
FastAPI (tests/apps_frameworks/) served by one TLS server with HTTP/3 beside it.

Each framework's HTTP route is fetched over HTTP/1.1 and HTTP/2 (httpx) and HTTP/3
(aioquic, tests/protocols/h3client.py), with Starlette's and FastAPI's streaming
responses (delivered as produced, not buffered) and background tasks (run after the
response went out); each WebSocket echo is driven over HTTP/1.1 (the
`websockets` client), HTTP/2 (RFC 8441, tests/protocols/wsh2.py) and HTTP/3 (RFC 9220,
H3WebSocket). Channels' group chat crosses protocols through the channel layer; the
Starlette and FastAPI lifespans run at startup and shutdown.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.apps_frameworks import django_app, fastapi_app, starlette_app
from tests.conftest import RunningServer
from tests.protocols.h3client import h3_connect
from tests.protocols.test_websocket_h3 import H3WebSocket
from tests.protocols.wsh2 import WSH2Client, WSStream

Start = Callable[..., RunningServer]
PROTOCOLS = ["h1", "h2", "h3"]
HTTP_VERSION = {"h1": "1.1", "h2": "2", "h3": "3"}
FRAMEWORKS = ["django", "starlette", "fastapi"]


def make_app(framework: str) -> Any:
    if framework == "django":
        return django_app.application
    if framework == "starlette":
        return starlette_app.create_app()
    return fastapi_app.create_app()


def serve(run_server: Start, tls_config: dict[str, Any], app: Any, **config: Any) -> RunningServer:
    """TLS on TCP (h2 and http/1.1 by ALPN) and HTTP/3 on UDP."""
    config.setdefault("lifespan", "auto")
    return run_server(app, quic_bind=["127.0.0.1:0"], **tls_config, **config)


def ca_context(dev_certs: Any, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    return context


# --- HTTP over the three protocols -----------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    server: RunningServer,
    dev_certs: Any,
    protocol: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    headers = headers or {}
    if protocol in ("h1", "h2"):
        with httpx.Client(
            http1=protocol == "h1",
            http2=protocol == "h2",
            verify=ca_context(dev_certs),
            timeout=10,
        ) as client:
            response = client.request(method, f"{server.url}{path}", headers=headers, content=body)
        assert response.http_version == {"h1": "HTTP/1.1", "h2": "HTTP/2"}[protocol]
        return Reply(response.status_code, dict(response.headers), response.content)

    async def h3() -> Reply:
        async with h3_connect(server.quic_port, str(dev_certs.ca_cert)) as client:
            response = await client.request(
                path,
                method=method,
                headers=[(k.lower().encode(), v.encode()) for k, v in headers.items()],
                body=body,
            )
        assert response.ended, "the HTTP/3 response did not end"
        fields = {k.decode(): v.decode() for k, v in response.headers if not k.startswith(b":")}
        return Reply(response.status, fields, response.body)

    return asyncio.run(h3())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_django_view(run_server: Start, tls_config: Any, dev_certs: Any, protocol: str) -> None:
    server = serve(run_server, tls_config, django_app.application)
    reply = fetch(server, dev_certs, protocol, "/django/hello?q=%C3%A9t%C3%A9")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "framework": "django",
        "method": "GET",
        "path": "/django/hello",
        "query": "été",
        "http_version": HTTP_VERSION[protocol],
        "secure": True,
    }
    missing = fetch(server, dev_certs, protocol, "/django/nowhere")
    assert missing.status == 404
    body = bytes(range(256)) * 1200  # 300 KiB: beyond the initial flow-control windows
    uploaded = fetch(server, dev_certs, protocol, "/django/upload", method="POST", body=body)
    assert uploaded.status == 200
    assert uploaded.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_starlette_routes(
    run_server: Start, tls_config: Any, dev_certs: Any, protocol: str
) -> None:
    server = serve(run_server, tls_config, starlette_app.create_app(), lifespan="on")
    reply = fetch(server, dev_certs, protocol, "/hello?q=x")
    assert reply.status == 200
    assert reply.json() == {
        "framework": "starlette",
        "http_version": HTTP_VERSION[protocol],
        "query": "x",
        "started": True,  # the lifespan's startup ran before the request
        "greeting": "set at startup",  # lifespan state reached the request
    }
    streamed = fetch(server, dev_certs, protocol, "/stream")
    assert streamed.status == 200
    assert streamed.body == b"".join(starlette_app.STREAM_CHUNKS)
    assert "content-length" not in streamed.headers


def read_held_stream(server: RunningServer, dev_certs: Any, protocol: str) -> bytes:
    """GET /held: its first chunk must reach us while the app still waits for the gate
    (a server that buffered the response would leave us waiting: a read timeout), then
    POST /release/stream and read the rest."""
    if protocol in ("h1", "h2"):
        with httpx.Client(
            http1=protocol == "h1",
            http2=protocol == "h2",
            verify=ca_context(dev_certs),
            timeout=10,
        ) as client:
            with client.stream("GET", f"{server.url}/held") as response:
                assert response.status_code == 200
                assert "content-length" not in response.headers
                parts = response.iter_raw()
                first = next(parts)
                assert first == b"first\n"
                # HTTP/2: another stream on the same connection; HTTP/1.1: a second one.
                released = client.post(f"{server.url}/release/stream")
                assert released.status_code == 200
                return first + b"".join(parts)

    async def h3() -> bytes:
        async with h3_connect(server.quic_port, str(dev_certs.ca_cert)) as client:
            response = client.start("/held")
            deadline = time.monotonic() + 10
            while not response.chunks:
                assert time.monotonic() < deadline, "no first chunk while the app waits"
                await asyncio.sleep(0.01)
            assert response.body == b"first\n" and not response.ended
            assert response.header(b"content-length") is None
            released = await client.request("/release/stream", method="POST")
            assert released.status == 200
            await asyncio.wait_for(response.done, 10)
            return response.body

    return asyncio.run(h3())


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_streaming_response_is_not_buffered(
    run_server: Start, tls_config: Any, dev_certs: Any, framework: str, protocol: str
) -> None:
    server = serve(run_server, tls_config, make_app(framework), lifespan="on")
    assert read_held_stream(server, dev_certs, protocol) == b"first\nsecond\n"


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_background_task_runs_after_the_response(
    run_server: Start, tls_config: Any, dev_certs: Any, framework: str, protocol: str
) -> None:
    """Starlette's BackgroundTask and FastAPI's BackgroundTasks: the 202 reaches the
    client while the job, run by the app after its last body message, still waits on
    its gate; once the gate opens the job finishes."""
    server = serve(run_server, tls_config, make_app(framework), lifespan="on")
    reply = fetch(server, dev_certs, protocol, f"/jobs/{protocol}", method="POST")
    assert (reply.status, reply.json()) == (202, {"queued": protocol})
    assert fetch(server, dev_certs, protocol, "/jobs").json() == []  # still waiting
    assert fetch(server, dev_certs, protocol, "/release/job", method="POST").status == 200
    deadline = time.monotonic() + 10
    while (done := fetch(server, dev_certs, protocol, "/jobs").json()) != [protocol]:
        assert time.monotonic() < deadline, done
        time.sleep(0.05)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_fastapi_json_and_dependency(
    run_server: Start, tls_config: Any, dev_certs: Any, protocol: str
) -> None:
    server = serve(run_server, tls_config, fastapi_app.create_app(), lifespan="on")
    item = json.dumps({"name": "widget", "price": 2.5, "quantity": 4}).encode()
    json_headers = {"content-type": "application/json"}
    reply = fetch(
        server,
        dev_certs,
        protocol,
        "/items",
        method="POST",
        headers={**json_headers, "x-token": fastapi_app.TOKEN},
        body=item,
    )
    assert reply.status == 200
    assert reply.json() == {
        "name": "widget",
        "total": 10.0,
        "user": "alice",
        "http_version": HTTP_VERSION[protocol],
    }
    # The dependency refuses a wrong token; pydantic refuses a bad body.
    denied = fetch(
        server,
        dev_certs,
        protocol,
        "/items",
        method="POST",
        headers={**json_headers, "x-token": "wrong"},
        body=item,
    )
    assert denied.status == 401 and denied.json() == {"detail": "bad token"}
    invalid = fetch(
        server,
        dev_certs,
        protocol,
        "/items",
        method="POST",
        headers={**json_headers, "x-token": fastapi_app.TOKEN},
        body=b'{"name": "widget", "price": "free"}',
    )
    assert invalid.status == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "price"]
    started = fetch(server, dev_certs, protocol, "/started")
    assert started.json() == {"started": True}


# --- WebSocket echo over the three protocols ---------------------------------------------

ECHO_PATH = "/ws/echo"


@dataclass
class EchoRun:
    """What a client saw in the echo scenario."""

    subprotocol: str | None = None
    replies: list[str | bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None


SENT: list[str | bytes] = ["hello", b"\x00\x01\xff binary", "é" * 70_000]


def wss(server: RunningServer, dev_certs: Any, path: str, **kwargs: Any) -> websockets_connect:
    """The `websockets` client over HTTP/1.1 + TLS: its asyncio implementation. (Its
    threading one reads the SSLSocket in a background thread while the caller writes the
    request on it; right after a TLS 1.3 handshake, as the server's session tickets come
    in, OpenSSL then sometimes reports the request written without it ever reaching the
    wire, openssl/openssl#8977: about one connection in a thousand under load, with any
    asyncio TLS server, multiplex or not.)"""
    return websockets_connect(
        f"wss://127.0.0.1:{server.port}{path}",
        ssl=ca_context(dev_certs),
        proxy=None,
        open_timeout=10,
        **kwargs,
    )


def echo_over_h1(server: RunningServer, dev_certs: Any) -> EchoRun:
    run = EchoRun()

    async def main() -> None:
        client: ClientConnection
        async with wss(
            server, dev_certs, ECHO_PATH, subprotocols=["chat"], max_size=None
        ) as client:
            run.subprotocol = client.subprotocol
            for message in SENT:
                await client.send(message)
                run.replies.append(await asyncio.wait_for(client.recv(), 10))
            await client.send("close")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 10)
        assert closed.value.rcvd is not None
        run.close = (closed.value.rcvd.code, closed.value.rcvd.reason)

    asyncio.run(main())
    return run


class H2WebSockets(WSH2Client):
    def open(self, path: str, subprotocol: bytes | None = None) -> WSStream:
        """`websocket()` with a sec-websocket-protocol header."""
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = WSStream(stream_id, True)
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", self.scheme),
            (b":path", path.encode()),
            (b":authority", self.authority),
            (b"sec-websocket-version", b"13"),
        ]
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", subprotocol))
        self.conn.send_headers(stream_id, headers)
        self.flush()
        self.until(lambda: bool(stream.headers) or stream.reset_code is not None)
        return stream


def h2_client(server: RunningServer, dev_certs: Any) -> H2WebSockets:
    return H2WebSockets(server.port, tls=ca_context(dev_certs, ["h2"]))


def echo_over_h2(server: RunningServer, dev_certs: Any) -> EchoRun:
    run = EchoRun()
    client = h2_client(server, dev_certs)
    try:
        stream = client.open(ECHO_PATH, b"chat")
        assert stream.status == 200
        protocol = dict(stream.headers).get(b"sec-websocket-protocol")
        run.subprotocol = protocol.decode() if protocol is not None else None
        for message in SENT:
            client.send(stream, message)
            run.replies.append(client.recv(stream))
        client.send(stream, "close")
        client.until(lambda: stream.close is not None)
        run.close = stream.close
        client.close(stream, 4001, "bye")  # our answer, then END_STREAM both ways
        assert stream.ended
    finally:
        client.shutdown()
    return run


def echo_over_h3(server: RunningServer, dev_certs: Any) -> EchoRun:
    run = EchoRun()

    async def main() -> None:
        async with h3_connect(server.quic_port, str(dev_certs.ca_cert)) as client:
            ws = H3WebSocket(client, ECHO_PATH, subprotocol=b"chat")
            assert await ws.opened() == 200
            protocol = ws.response.header(b"sec-websocket-protocol")
            run.subprotocol = protocol.decode() if protocol is not None else None
            for message in SENT:
                ws.send(message)
                run.replies.append(await ws.receive())
            ws.send("close")
            run.close = await ws.closed()
            client.send(ws.response.stream_id, bytes(ws.fp.close(4001, "bye")), end=True)
            await asyncio.wait_for(ws.response.done, 10)
            assert ws.response.ended

    asyncio.run(main())
    return run


ECHO = {"h1": echo_over_h1, "h2": echo_over_h2, "h3": echo_over_h3}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_websocket_echo(
    run_server: Start, tls_config: Any, dev_certs: Any, framework: str, protocol: str
) -> None:
    """Accept with a subprotocol, echo text, bytes and a message larger than one frame's
    worth of flow-control credit, then the app closes with 4001 "bye"."""
    server = serve(run_server, tls_config, make_app(framework))
    run = ECHO[protocol](server, dev_certs)
    assert run.subprotocol == "chat"
    assert run.replies == SENT
    assert run.close == (4001, "bye")
    # The connection's other streams still work after the WebSocket closed.
    path = {"django": "/django/hello", "starlette": "/hello", "fastapi": "/started"}[framework]
    assert fetch(server, dev_certs, protocol, path).status == 200


# --- Handshakes the app refuses ----------------------------------------------------------


def denied(server: RunningServer, dev_certs: Any, protocol: str, path: str) -> tuple[int, bytes]:
    """Open a WebSocket the app refuses: the HTTP status and body the client got."""
    if protocol == "h1":

        async def h1() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as refused:
                await wss(server, dev_certs, path)
            return refused.value

        response = asyncio.run(h1()).response
        return response.status_code, response.body or b""
    if protocol == "h2":
        client = h2_client(server, dev_certs)
        try:
            stream = client.open(path)
            client.until(lambda: stream.ended or stream.reset_code is not None)
            return stream.status, bytes(stream.body)
        finally:
            client.shutdown()

    async def h3() -> tuple[int, bytes]:
        async with h3_connect(server.quic_port, str(dev_certs.ca_cert)) as client:
            ws = H3WebSocket(client, path)
            status = await ws.opened()
            await asyncio.wait_for(ws.response.done, 10)
            return status, ws.response.body

    return asyncio.run(h3())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_channels_consumer_denies(
    run_server: Start, tls_config: Any, dev_certs: Any, protocol: str
) -> None:
    """A consumer that closes before accepting: 403, as the ASGI spec says."""
    server = serve(run_server, tls_config, django_app.application)
    status, _body = denied(server, dev_certs, protocol, "/ws/deny")
    assert status == 403


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_starlette_denial_response(
    run_server: Start, tls_config: Any, dev_certs: Any, protocol: str
) -> None:
    """Starlette's `send_denial_response` (websocket.http.response): the app's own 401."""
    server = serve(run_server, tls_config, starlette_app.create_app())
    assert denied(server, dev_certs, protocol, "/ws/deny") == (401, b"no entry")


# --- Cleartext HTTP/2 (h2c, prior knowledge) ---------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_h2c(run_server: Start, framework: str) -> None:
    """The same apps over cleartext HTTP/2: the route, then the WebSocket echo."""
    server = run_server(make_app(framework), h2c=True, lifespan="auto")
    path = {"django": "/django/hello", "starlette": "/hello", "fastapi": "/started"}[framework]
    with httpx.Client(http1=False, http2=True, timeout=10) as http:
        response = http.get(f"{server.url}{path}")
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    if framework != "fastapi":
        assert response.json()["http_version"] == "2"
    client = H2WebSockets(server.port)
    try:
        stream = client.open(ECHO_PATH)
        assert stream.status == 200
        assert dict(stream.headers).get(b"sec-websocket-protocol") is None  # none offered
        client.send(stream, "over h2c")
        assert client.recv(stream) == "over h2c"
        client.send(stream, "close")
        client.until(lambda: stream.close is not None)
        assert stream.close == (4001, "bye")
    finally:
        client.shutdown()


# --- Channels: a group chat through the channel layer, across protocols -------------------


def test_channels_group_chat_across_h1_and_h2(
    run_server: Start, tls_config: Any, dev_certs: Any
) -> None:
    """One client over HTTP/1.1, one over HTTP/2, same server: what either sends reaches
    both through `group_send` on the in-memory channel layer."""
    server = serve(run_server, tls_config, django_app.application)
    h2 = h2_client(server, dev_certs)  # blocking: its calls go to a worker thread

    async def main() -> None:
        h1: ClientConnection
        async with wss(server, dev_certs, "/ws/chat") as h1:
            stream = await asyncio.to_thread(h2.open, "/ws/chat")
            assert stream.status == 200  # accepted: both are in the group now
            await h1.send("hi from HTTP/1.1")
            assert await asyncio.wait_for(h1.recv(), 10) == "hi from HTTP/1.1"
            assert await asyncio.to_thread(h2.recv, stream) == "hi from HTTP/1.1"
            await asyncio.to_thread(h2.send, stream, "hi from HTTP/2")
            assert await asyncio.to_thread(h2.recv, stream) == "hi from HTTP/2"
            assert await asyncio.wait_for(h1.recv(), 10) == "hi from HTTP/2"
            await asyncio.to_thread(h2.close, stream)
            assert stream.close == (1000, "")
            # The HTTP/2 member left (group_discard): the HTTP/1.1 one chats alone.
            await h1.send("anyone?")
            assert await asyncio.wait_for(h1.recv(), 10) == "anyone?"

    try:
        asyncio.run(main())
    finally:
        h2.shutdown()


# --- Lifespan ----------------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_lifespan_startup_and_shutdown(
    run_server: Start, tls_config: Any, dev_certs: Any, framework: str
) -> None:
    app = make_app(framework)
    events: list[str] = app.state.events
    server = serve(run_server, tls_config, app, lifespan="on")
    assert events == ["startup"]
    assert server.server.lifespan is not None and server.server.lifespan.supported
    path = "/hello" if framework == "starlette" else "/started"
    assert fetch(server, dev_certs, "h3", path).json()["started"] is True
    server.shutdown()
    assert events == ["startup", "shutdown"]


def test_django_without_lifespan(run_server: Start, tls_config: Any, dev_certs: Any) -> None:
    """Channels' ProtocolTypeRouter has no "lifespan" entry (it raises): with `auto` the
    server goes on without lifespan, and serves."""
    server = serve(run_server, tls_config, django_app.application, lifespan="auto")
    assert server.server.lifespan is not None and not server.server.lifespan.supported
    assert fetch(server, dev_certs, "h2", "/django/hello").status == 200
