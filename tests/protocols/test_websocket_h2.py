"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT), over h2c and TLS, with a client
built from h2 and wsproto's frame layer (tests/protocols/wsh2.py)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import apps
from tests.conftest import RunningServer
from tests.protocols.wsh2 import WSH2Client

Start = Callable[..., RunningServer]
Connect = Callable[..., tuple[RunningServer, WSH2Client]]

ENABLE_CONNECT_PROTOCOL = 8


@pytest.fixture(params=["h2c", "tls"])
def h2ws(request: pytest.FixtureRequest, run_server: Start, dev_certs: Any) -> Iterator[Connect]:
    clients: list[WSH2Client] = []

    def connect(app: Any, **config: Any) -> tuple[RunningServer, WSH2Client]:
        if request.param == "tls":
            config.update(certfile=str(dev_certs.cert), keyfile=str(dev_certs.key))
            context = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
            context.set_alpn_protocols(["h2"])
            server = run_server(app, **config)
            client = WSH2Client(server.port, tls=context)
        else:
            server = run_server(app, h2c=True, **config)
            client = WSH2Client(server.port)
        clients.append(client)
        return server, client

    yield connect
    for client in clients:
        client.shutdown()


def test_settings_enable_connect_protocol(h2ws: Connect) -> None:
    _, client = h2ws(apps.WSEcho())
    assert client.remote_settings[ENABLE_CONNECT_PROTOCOL] == 1


def test_echo_and_scope(h2ws: Connect) -> None:
    _, client = h2ws(apps.WSEcho())
    ws = client.websocket("/room?a=b")
    assert ws.status == 200
    client.send(ws, "hello")
    assert client.recv(ws) == "hello"
    client.send(ws, b"\x00\xff")
    assert client.recv(ws) == b"\x00\xff"
    client.send(ws, "scope")
    scope = json.loads(client.recv(ws))
    assert scope["type"] == "websocket"
    assert scope["http_version"] == "2"
    assert scope["scheme"] == ("wss" if client.scheme == b"https" else "ws")
    assert scope["path"] == "/room"
    assert scope["query_string"] == "a=b"
    assert "websocket.http.response" in scope["extensions"]


def test_websockets_and_requests_multiplexed(h2ws: Connect) -> None:
    _, client = h2ws(apps.WSEcho())
    sockets = [client.websocket(f"/ws{i}") for i in range(3)]
    get = client.get("/plain")
    for i, ws in enumerate(sockets):
        client.send(ws, f"message {i}")
    client.until(lambda: get.ended)
    assert get.status == 200
    assert bytes(get.body) == b"hello 2"
    for i, ws in reversed(list(enumerate(sockets))):
        assert client.recv(ws) == f"message {i}"
    assert len({ws.stream_id for ws in sockets}) == 3


def test_closing_one_websocket_leaves_the_others(h2ws: Connect) -> None:
    app = apps.WSEcho()
    _, client = h2ws(app)
    first, second = client.websocket(), client.websocket()
    client.close(first, 4000, "only this one")
    assert first.close == (4000, "")  # the server echoes the code
    assert first.ended  # END_STREAM after the close frame: only this stream ends
    assert app.disconnects.get(timeout=10)["code"] == 4000
    client.send(second, "still open")
    assert client.recv(second) == "still open"
    get = client.get("/")
    client.until(lambda: get.ended)
    assert bytes(get.body) == b"hello 2"
    third = client.websocket()
    client.send(third, "new one")
    assert client.recv(third) == "new one"


def test_server_close_ends_the_stream(h2ws: Connect) -> None:
    _, client = h2ws(apps.WSEcho())
    ws = client.websocket()
    client.send(ws, "close 4003 bye")
    client.until(lambda: ws.close is not None)
    assert ws.close == (4003, "bye")
    assert ws.fp is not None
    client._send(ws.stream_id, bytes(ws.fp.close(4003)), end=True)  # our answer
    client.until(lambda: ws.ended or ws.reset_code is not None)
    assert ws.ended


def test_reset_stream_disconnects_the_app(h2ws: Connect) -> None:
    app = apps.WSEcho()
    _, client = h2ws(app)
    ws = client.websocket()
    client.send(ws, "x")
    assert client.recv(ws) == "x"
    client.reset(ws)
    assert app.disconnects.get(timeout=10)["code"] == 1006
    other = client.websocket()
    client.send(other, "after reset")
    assert client.recv(other) == "after reset"


@pytest.mark.parametrize("size", [300 * 1024, 1024 * 1024])
def test_large_message_under_flow_control(h2ws: Connect, size: int) -> None:
    # Larger than the client's 64 KiB initial window and the server's 256 KiB one:
    # both directions must wait for WINDOW_UPDATEs, and the message arrives whole.
    _, client = h2ws(apps.WSEcho())
    ws = client.websocket()
    data = apps.pattern(size)
    client.send(ws, data)
    assert client.recv(ws) == data


def test_denial_response(h2ws: Connect) -> None:
    _, client = h2ws(apps.ws_deny)
    ws = client.websocket()
    client.until(lambda: ws.ended)
    assert ws.status == 401
    assert dict(ws.headers)[b"x-denied"] == b"yes"
    assert bytes(ws.body) == b"no entry for you"


def test_close_before_accept_is_403(h2ws: Connect) -> None:
    _, client = h2ws(apps.ws_close_before_accept)
    ws = client.websocket()
    assert ws.status == 403


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append(scope["type"])
        await apps.WSEcho()(scope, receive, send)


def test_other_connect_requests_never_reach_the_app(h2ws: Connect) -> None:
    app = Recorder()
    _, client = h2ws(app)
    other = client.websocket(protocol=b"webtransport")
    assert other.status == 501
    plain = client.connect_plain()
    assert plain.status == 405
    ws = client.websocket()
    client.send(ws, "fine")
    assert client.recv(ws) == "fine"
    assert app.calls == ["websocket"]


def test_bad_version_is_426(h2ws: Connect) -> None:
    app = Recorder()
    _, client = h2ws(app)
    ws = client.websocket(version=b"8")
    client.until(lambda: ws.ended)
    assert ws.status == 426
    assert dict(ws.headers)[b"sec-websocket-version"] == b"13"
    assert app.calls == []
