"""WebSockets over HTTP/3 (RFC 9220): extended CONNECT on a request stream, the
WebSocket frames in that stream's DATA, beside ordinary requests on the same QUIC
connection. Client: aioquic (tests/protocols/h3client.py) plus wsproto's frame layer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from wsproto.frame_protocol import FrameProtocol, Opcode

from tests import apps
from tests.protocols.h3client import H3Client, Response, h3_connect

ENABLE_CONNECT_PROTOCOL = 0x8


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for an event the test expects (not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "the expected event did not happen"
        await asyncio.sleep(0.005)


class H3WebSocket:
    def __init__(self, client: H3Client, path: str = "/ws", subprotocol: bytes = b"") -> None:
        self.client = client
        headers = [(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")]
        if subprotocol:
            headers.append((b"sec-websocket-protocol", subprotocol))
        self.response: Response = client.start(path, method="CONNECT", headers=headers, end=False)
        self.fp = FrameProtocol(client=True, extensions=[])
        self.read = 0
        self.messages: list[str | bytes] = []
        self.partial: list[Any] = []
        self.close: tuple[int, str] | None = None

    async def opened(self) -> int:
        await until(lambda: bool(self.response.headers) or self.response.ended)
        return self.response.status

    def send(self, message: str | bytes) -> None:
        self.client.send(self.response.stream_id, bytes(self.fp.send_data(message, fin=True)))

    def _pump(self) -> None:
        body = self.response.body
        if len(body) > self.read:
            self.fp.receive_bytes(body[self.read :])
            self.read = len(body)
        for frame in self.fp.received_frames():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION):
                # wsproto hands over payload as it arrives: a message may come in parts.
                self.partial.append(frame.payload)
                if frame.message_finished:
                    parts, self.partial = self.partial, []
                    joined: Any = "".join(parts) if isinstance(parts[0], str) else b"".join(parts)
                    self.messages.append(joined)
            elif frame.opcode is Opcode.CLOSE:
                self.close = (int(frame.payload[0]), frame.payload[1])

    async def receive(self) -> str | bytes:
        def has_message() -> bool:
            self._pump()
            return bool(self.messages)

        await until(has_message)
        return self.messages.pop(0)

    async def closed(self) -> tuple[int, str]:
        def has_close() -> bool:
            self._pump()
            return self.close is not None

        await until(has_close)
        assert self.close is not None
        return self.close


def test_websocket_over_http3(run_server: Any, tls_config: Any, dev_certs: Any) -> None:
    app = apps.WSEcho()
    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)

    async def main() -> None:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            await until(lambda: client.h3.received_settings is not None)
            settings = client.h3.received_settings
            assert settings is not None and settings.get(ENABLE_CONNECT_PROTOCOL) == 1
            first = H3WebSocket(client, subprotocol=b"chat")
            second = H3WebSocket(client)
            assert await first.opened() == 200
            assert await second.opened() == 200
            assert first.response.header(b"sec-websocket-protocol") == b"chat"
            first.send("hello")
            second.send(b"\x00\x01binary")
            big = "x" * 300_000  # beyond the stream's initial credit: flow control applies
            first.send(big)
            # An ordinary request on the same connection meanwhile.
            response = await client.request("/plain")
            assert response.status == 200 and response.body == b"hello 3"
            assert await first.receive() == "hello"
            assert await second.receive() == b"\x00\x01binary"
            assert await first.receive() == big
            second.send("scope")
            scope = json.loads(await second.receive())
            assert scope["type"] == "websocket"
            assert scope["http_version"] == "3"
            assert scope["scheme"] == "wss"
            # The server closes one WebSocket; the other and the connection go on.
            first.send("close 4001 bye")
            assert await first.closed() == (4001, "bye")
            client.send(
                first.response.stream_id,
                bytes(first.fp.close(4001, "bye")),
                end=True,
            )
            await until(lambda: first.response.ended)
            second.send("still here")
            assert await second.receive() == "still here"

    asyncio.run(main())
    disconnect = app.disconnects.get(timeout=10)
    assert disconnect["code"] == 4001


def test_websocket_over_http3_client_reset(
    run_server: Any, tls_config: Any, dev_certs: Any
) -> None:
    """Resetting the CONNECT stream gives the app websocket.disconnect (1006)."""
    app = apps.WSEcho()
    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)

    async def main() -> None:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            ws = H3WebSocket(client)
            assert await ws.opened() == 200
            ws.send("ping?")
            assert await ws.receive() == "ping?"
            client.reset(ws.response.stream_id)
            response = await client.request("/after")
            assert response.body == b"hello 3"

    asyncio.run(main())
    assert app.disconnects.get(timeout=10)["code"] == 1006


def test_plain_and_foreign_connect_refused_over_http3(
    run_server: Any, tls_config: Any, dev_certs: Any
) -> None:
    """A CONNECT to another protocol gets 501, and never reaches the app."""
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        await apps.hello(scope, receive, send)

    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)

    async def main() -> None:
        async with h3_connect(running.quic_port, str(dev_certs.ca_cert)) as client:
            other = client.start(
                "/x", method="CONNECT", headers=[(b":protocol", b"webtransport-x")], end=False
            )
            await until(lambda: bool(other.headers))
            assert other.status == 501

    asyncio.run(main())
    assert calls == []
