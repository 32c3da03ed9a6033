"""The ASGI WebSocket stream over HTTP/1.1, driven by the `websockets` client (and a raw
socket client for what a well-behaved client never sends)."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from wsproto.frame_protocol import Opcode

from multiplex.streams.websocket import WebSocketStream
from tests import apps
from tests.conftest import RunningServer
from tests.wsraw import RawWS

Start = Callable[..., RunningServer]


def ws(server: RunningServer, path: str = "/", **kwargs: Any) -> ClientConnection:
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("open_timeout", 10)
    return connect(f"ws://127.0.0.1:{server.port}{path}", **kwargs)


def close_code(frame_payload: Any) -> int:
    code, _reason = frame_payload
    return int(code)


def test_text_and_binary_echo(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    with ws(server) as client:
        client.send("hello")
        assert client.recv() == "hello"
        client.send(b"\x00\x01\xff")
        assert client.recv() == b"\x00\x01\xff"
        client.send("")
        assert client.recv() == ""


def test_scope(run_server: Start) -> None:
    server = run_server(apps.WSEcho(), root_path="/mount")
    with ws(server, "/chat%20room?x=1", subprotocols=["chat", "v2"]) as client:
        client.send("scope")
        scope = json.loads(client.recv())
    assert scope["type"] == "websocket"
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/mount/chat room"
    assert scope["raw_path"] == "/mount/chat%20room"
    assert scope["query_string"] == "x=1"
    assert scope["root_path"] == "/mount"
    assert scope["subprotocols"] == ["chat", "v2"]
    assert "websocket.http.response" in scope["extensions"]


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_one_mib_message(run_server: Start, compression: str | None) -> None:
    server = run_server(apps.WSEcho())
    data = apps.pattern(1024 * 1024)
    with ws(server, max_size=None, compression=compression) as client:
        client.send(data)
        assert client.recv() == data
        text = "é" * (512 * 1024)
        client.send(text)
        assert client.recv() == text


def test_fragmented_messages(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    with ws(server, compression=None) as client:
        client.send(["frag", "mented ", "tëxt"])
        assert client.recv() == "fragmented tëxt"
        client.send([b"\x01" * 70000, b"\x02" * 3, b""])
        assert client.recv() == b"\x01" * 70000 + b"\x02" * 3


def test_ping_answered_with_pong(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    with ws(server) as client:
        pong = client.ping(b"are you there")
        assert pong.wait(10)
        client.send("still here")
        assert client.recv() == "still here"


def test_client_close_code_and_reason_reach_the_app(run_server: Start) -> None:
    app = apps.WSEcho()
    server = run_server(app)
    with ws(server) as client:
        client.send("x")
        assert client.recv() == "x"
        client.close(4001, "bye now")
    message = app.disconnects.get(timeout=10)
    assert message == {"type": "websocket.disconnect", "code": 4001, "reason": "bye now"}


def test_server_close_code_and_reason_reach_the_client(run_server: Start) -> None:
    app = apps.WSEcho()
    server = run_server(app)
    with ws(server) as client:
        client.send("close 4002 all done")
        with pytest.raises(ConnectionClosed) as info:
            client.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 4002
    assert info.value.rcvd.reason == "all done"
    # After its close, the app's next receive() is the disconnect, with its own code.
    assert app.disconnects.get(timeout=10)["code"] == 4002


def test_subprotocol_negotiation(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    with ws(server, subprotocols=["other", "chat"]) as client:
        assert client.subprotocol == "chat"
    with ws(server) as client:
        assert client.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in client.response.headers


def test_denial_response(run_server: Start) -> None:
    server = run_server(apps.ws_deny)
    with pytest.raises(InvalidStatus) as info:
        ws(server)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["x-denied"] == "yes"
    assert response.body == b"no entry for you"


def test_close_before_accept_is_403(run_server: Start) -> None:
    server = run_server(apps.ws_close_before_accept)
    with pytest.raises(InvalidStatus) as info:
        ws(server)
    assert info.value.response.status_code == 403


def test_app_failure_before_accept_is_500(run_server: Start) -> None:
    server = run_server(apps.ws_fail_before_accept)
    with pytest.raises(InvalidStatus) as info:
        ws(server)
    assert info.value.response.status_code == 500


def test_app_failure_after_accept_closes_1011(run_server: Start) -> None:
    server = run_server(apps.ws_fail_after_accept)
    with ws(server) as client:
        client.send("boom")
        with pytest.raises(ConnectionClosed) as info:
            client.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1011


def test_message_too_big_closes_1009(run_server: Start) -> None:
    app = apps.WSEcho()
    server = run_server(app, ws_max_message_size=1000)
    with ws(server, compression=None) as client:
        client.send(b"x" * 1000)  # the limit itself is fine
        assert client.recv() == b"x" * 1000
        client.send(b"x" * 1001)
        with pytest.raises(ConnectionClosed) as info:
            client.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009
    assert app.disconnects.get(timeout=10)["code"] == 1009


def test_inflated_message_too_big_closes_1009(run_server: Start) -> None:
    # A small compressed frame that inflates past the limit (a deflate bomb in miniature).
    server = run_server(apps.WSEcho(), ws_max_message_size=100_000)
    with ws(server, compression="deflate", max_size=None) as client:
        client.send(b"\x00" * 200_000)
        with pytest.raises(ConnectionClosed) as info:
            client.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009


def test_invalid_utf8_closes_1007(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    raw = RawWS(server.port)
    try:
        assert raw.status == 101
        raw.send_frame(0x1, b"ok \xff\xfe")
        frame = raw.until(Opcode.CLOSE)
        assert close_code(frame.payload) == 1007
        assert raw.at_eof()
    finally:
        raw.close()


def test_unmasked_frame_closes_1002(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    raw = RawWS(server.port)
    try:
        raw.sock.sendall(b"\x81\x02hi")  # a client frame must be masked
        frame = raw.until(Opcode.CLOSE)
        assert close_code(frame.payload) == 1002
    finally:
        raw.close()


def test_per_message_deflate_negotiated_when_offered(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    with ws(server, compression="deflate") as client:
        assert "permessage-deflate" in client.response.headers["Sec-WebSocket-Extensions"]
        client.send("z" * 100_000)
        assert client.recv() == "z" * 100_000
    with ws(server, compression=None) as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers


def test_per_message_deflate_off_by_config(run_server: Start) -> None:
    server = run_server(apps.WSEcho(), ws_per_message_deflate=False)
    with ws(server, compression="deflate") as client:
        assert "Sec-WebSocket-Extensions" not in client.response.headers
        client.send("z" * 1000)
        assert client.recv() == "z" * 1000


def test_bad_version_is_426(run_server: Start) -> None:
    server = run_server(apps.WSEcho())
    raw = RawWS(server.port, headers={"Sec-WebSocket-Version": "8"})
    try:
        assert raw.status == 426
        assert raw.headers["sec-websocket-version"] == "13"
        assert b"Sec-WebSocket-Version" in raw.read_body()
    finally:
        raw.close()


@pytest.mark.parametrize("key", ["", "c2hvcnQ=", "not base64!!"])
def test_bad_key_is_400(run_server: Start, key: str) -> None:
    app = apps.WSEcho()
    server = run_server(app)
    raw = RawWS(server.port, headers={"Sec-WebSocket-Key": key})
    try:
        assert raw.status == 400
        assert b"Sec-WebSocket-Key" in raw.read_body()
    finally:
        raw.close()


def test_server_pings_keep_an_answering_client(run_server: Start) -> None:
    server = run_server(apps.WSEcho(), ws_ping_interval=0.02, ws_ping_timeout=5)
    raw = RawWS(server.port)
    try:
        for _ in range(3):
            ping = raw.until(Opcode.PING)
            raw.pong(bytes(ping.payload))  # type: ignore[arg-type]
        raw.send_text("alive")
        assert raw.until(Opcode.TEXT).payload == "alive"
    finally:
        raw.close()


def test_ping_timeout_closes_an_unresponsive_client(run_server: Start) -> None:
    app = apps.WSEcho()
    server = run_server(app, ws_ping_interval=0.02, ws_ping_timeout=0.05)
    raw = RawWS(server.port)
    try:
        raw.until(Opcode.PING)  # and never answer
        frame = raw.until(Opcode.CLOSE)
        assert close_code(frame.payload) == 1011
        assert raw.at_eof()
        assert app.disconnects.get(timeout=10)["code"] == 1011
    finally:
        raw.close()


def test_backpressure_stops_reading_a_full_queue(run_server: Start) -> None:
    app = apps.WSSilent()
    server = run_server(app, ws_max_queue=2)
    client = ws(server, compression=None, legacy=True)
    sender = threading.Thread(
        target=lambda: [client.send(b"m" * 65536) for _ in range(100)], daemon=True
    )
    sender.start()

    def paused() -> bool:
        assert server.server.state is not None
        return any(getattr(c, "read_paused", False) for c in server.server.state.connections)

    def queued() -> list[int]:
        assert server.server.state is not None
        return [
            len(c.stream.queue)
            for c in server.server.state.connections
            if getattr(c, "upgraded", False) and c.stream is not None
        ]

    for _ in range(1000):
        if server.call(paused):
            break
        threading.Event().wait(0.01)
    assert server.call(paused), "the server never stopped reading"
    assert all(n <= 2 for n in server.call(queued))
    app.go.set()
    assert client.recv(timeout=30) == "got 100"
    sender.join(10)
    assert app.received == [65536] * 100
    client.close()


def test_access_log_line(run_server: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="multiplex.access")
    app = apps.WSEcho()
    server = run_server(app, access_log=True)
    with ws(server, "/logged") as client:
        client.send("x")
        assert client.recv() == "x"
    app.disconnects.get(timeout=10)
    server.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.name == "multiplex.access"]
    assert any('"GET /logged HTTP/1.1" 101' in line for line in lines), lines


def test_http_requests_still_served_beside_websockets(run_server: Start) -> None:
    import httpx

    server = run_server(apps.WSEcho())
    with ws(server) as client:
        assert httpx.get(server.url + "/").text == "hello 1.1"
        client.send("y")
        assert client.recv() == "y"


def test_graceful_shutdown_closes_with_1001(run_server: Start) -> None:
    app = apps.WSEcho()
    server = run_server(app)
    client = ws(server, legacy=True)
    client.send("x")
    assert client.recv() == "x"
    done: queue.Queue[None] = queue.Queue()
    threading.Thread(target=lambda: (server.shutdown(), done.put(None)), daemon=True).start()
    with pytest.raises(ConnectionClosed) as info:
        client.recv(timeout=30)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1001
    done.get(timeout=30)


def test_ping_flood_keeps_only_the_latest_pongs(run_server: Start) -> None:
    """A client that sends 20,000 pings at once: the server answers only the latest ones
    (at most ws_max_pending_pongs wait at any time; RFC 6455 5.5.3 asks only for the
    latest), so far fewer pongs come back than pings went out, and the connection still
    echoes. With an unbounded queue every ping would get its pong."""
    server = run_server(apps.WSEcho(), ws_max_pending_pongs=16)
    raw = RawWS(server.port)
    pings = 20_000
    try:
        assert raw.status == 101
        burst = b"".join(bytes(raw.fp.ping(b"%06d" % n + b"p" * 114)) for n in range(pings))
        raw.sock.sendall(burst)
        raw.send_text("still here")
        pongs = 0
        while True:  # pongs (some of them), then the echo
            frame = raw.next_frame()
            assert frame is not None, "closed"
            if frame.opcode is Opcode.PONG:
                pongs += 1
            elif frame.opcode is Opcode.TEXT:
                assert frame.payload == "still here"
                break
    finally:
        raw.close()
    assert 0 < pongs < pings // 4, pongs


# --- answers held while more input waits (WebSocketStream._cork) ------------------------


class _AnswerOnce:
    """Answers the first message, then either waits without reading again (`then` is
    "wait") or closes with 4000 ("close")."""

    def __init__(self, then: str) -> None:
        self.then = then

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": "answer " + message["text"]})
        if self.then == "close":
            await send({"type": "websocket.close", "code": 4000})
            return
        await asyncio.Event().wait()


def _texts(client: RawWS, texts: list[str]) -> None:
    """The messages in one write, so that the server reads them together."""
    client.sock.sendall(b"".join(bytes(client.fp.send_data(text)) for text in texts))


def test_answers_held_while_input_waits_leave_in_order(
    run_server: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[int] = []
    cork = WebSocketStream._cork

    def counting(self: WebSocketStream, frame: bytes) -> None:
        held.append(len(frame))
        cork(self, frame)

    monkeypatch.setattr(WebSocketStream, "_cork", counting)
    server = run_server(apps.WSEcho(), ws_ping_interval=0)
    client = RawWS(server.port)
    texts = [f"message {i}" for i in range(50)]
    _texts(client, texts)
    for want in texts:
        frame = client.until(Opcode.TEXT)
        assert frame.payload == want
    # 50 messages in one write are read in far fewer pieces: answers were held.
    assert held, "no answer was held back"
    client.close()


@pytest.mark.parametrize("then", ["wait", "close"])
def test_a_held_answer_leaves_when_the_app_stops_reading(run_server: Start, then: str) -> None:
    """The app answers the first of three queued messages and then reads no more: its
    answer leaves at the end of the loop turn, and before its close frame."""
    server = run_server(_AnswerOnce(then), ws_ping_interval=0)
    client = RawWS(server.port)
    _texts(client, ["one", "two", "three"])
    frame = client.next_frame()
    assert frame is not None and frame.opcode is Opcode.TEXT and frame.payload == "answer one"
    if then == "close":
        frame = client.until(Opcode.CLOSE)
        assert close_code(frame.payload) == 4000
    client.close()
