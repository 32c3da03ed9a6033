"""Small ASGI apps the tests serve. Each is plain ASGI 3, no framework."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

Scope = dict[str, Any]


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def hello(scope: Scope, receive: Any, send: Any) -> None:
    """`hello` plus the HTTP version, as plain text."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello " + scope["http_version"].encode()})


async def echo_scope(scope: Scope, receive: Any, send: Any) -> None:
    """The scope as JSON (bytes shown as latin-1 strings), and the body length."""
    body = await read_body(receive)

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("latin-1")
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    shown = {k: plain(v) for k, v in scope.items() if k not in ("state", "extensions")}
    shown["extensions"] = sorted(scope.get("extensions") or {})
    shown["body_length"] = len(body)
    payload = json.dumps(shown).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def sha256_upload(scope: Scope, receive: Any, send: Any) -> None:
    """Hashes the request body as it arrives; answers `hexdigest length`."""
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        digest.update(chunk)
        size += len(chunk)
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{digest.hexdigest()} {size}".encode()})


def pattern(size: int) -> bytes:
    """Deterministic bytes, so a response can be checked without keeping a copy."""
    block = bytes(range(256)) * 256  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


async def big(scope: Scope, receive: Any, send: Any) -> None:
    """`/big?N` sends N bytes of `pattern(N)` in 64 KiB messages."""
    size = int(scope["query_string"] or b"1048576")
    data = pattern(size)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    step = 65536
    for offset in range(0, size, step):
        await send(
            {"type": "http.response.body", "body": data[offset : offset + step], "more_body": True}
        )
    await send({"type": "http.response.body", "body": b""})


class Gate:
    """An app whose `/wait` requests block until `release()`; others answer at once.
    Records the order in which responses complete."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None
        self.completed: list[str] = []
        self.disconnects: list[str] = []

    def release(self, loop: asyncio.AbstractEventLoop) -> None:
        def set_event() -> None:
            if self.event is None:
                self.event = asyncio.Event()
            self.event.set()

        loop.call_soon_threadsafe(set_event)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self.event is None:
            self.event = asyncio.Event()
        path = scope["path"]
        if path.startswith("/wait"):
            await self.event.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": path.encode()})
        self.completed.append(path)


async def fail_before_start(scope: Scope, receive: Any, send: Any) -> None:
    raise RuntimeError("failure before the response started")


async def fail_after_start(scope: Scope, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("failure after the response started")


class Streamer:
    """Sends body chunks forever until the client goes away; records the disconnect."""

    def __init__(self) -> None:
        self.disconnected: asyncio.Event | None = None
        self.saw_disconnect = False
        self.send_raised: Exception | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
                await asyncio.sleep(0.001)
        except OSError as exc:
            self.send_raised = exc
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        self.saw_disconnect = True


# --- WebSocket apps ---------------------------------------------------------------------


class WSEcho:
    """A WebSocket echo: text back as text, bytes back as bytes.

    Accepts the subprotocol `chat` when offered. Text commands: `close CODE REASON` makes
    the server close; `scope` answers the scope as JSON. Every `websocket.disconnect`
    the app receives is put on `disconnects` (a thread-safe queue the tests read)."""

    def __init__(self) -> None:
        import queue

        self.disconnects: queue.Queue[dict[str, Any]] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await hello(scope, receive, send)
            return
        message = await receive()
        assert message["type"] == "websocket.connect"
        subprotocol = "chat" if "chat" in scope["subprotocols"] else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.put(message)
                return
            text = message.get("text")
            if text is not None and text.startswith("close "):
                _, code, reason = text.split(" ", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                self.disconnects.put(await receive())
                return
            if text == "scope":
                shown = {
                    k: (v.decode("latin-1") if isinstance(v, bytes) else v)
                    for k, v in scope.items()
                    if k
                    in (
                        "type",
                        "http_version",
                        "scheme",
                        "path",
                        "raw_path",
                        "query_string",
                        "root_path",
                        "subprotocols",
                    )
                }
                shown["extensions"] = sorted(scope["extensions"])
                await send({"type": "websocket.send", "text": json.dumps(shown)})
            elif text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


async def ws_deny(scope: Scope, receive: Any, send: Any) -> None:
    """Denies every WebSocket with its own `401` response (websocket.http.response)."""
    assert scope["type"] == "websocket"
    assert "websocket.http.response" in scope["extensions"]
    await receive()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"no entry", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b" for you"})


async def ws_close_before_accept(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.close", "code": 1000})


async def ws_fail_before_accept(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    raise RuntimeError("failure before the WebSocket was accepted")


async def ws_fail_after_accept(scope: Scope, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("failure after the WebSocket was accepted")


class WSSilent:
    """Accepts, then never reads: its queue fills and the server must stop reading.
    `received` counts messages once `release()` lets it read."""

    def __init__(self) -> None:
        import threading

        self.go = threading.Event()
        self.received: list[int] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while not self.go.is_set():
            await asyncio.sleep(0.01)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            self.received.append(len(message.get("bytes") or b""))
            if len(self.received) == 100:
                await send({"type": "websocket.send", "text": "got 100"})
