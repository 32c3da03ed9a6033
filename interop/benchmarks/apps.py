"""The raw ASGI app every server in the benchmark serves, so that only the server differs.

One callable, routed by path:

- `GET /`: "Hello, world!" (13 bytes, with content-length);
- `GET /download`: 1 MiB, sent as sixteen 64 KiB body messages (as a file response would);
- `POST /upload`: reads the whole request body and answers how many bytes it counted;
- any WebSocket: an echo, text back as text and bytes back as bytes.

No framework, no middleware: the app costs next to nothing, the server is what is measured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO = b"Hello, world!"
DOWNLOAD_SIZE = 1024 * 1024
CHUNK = 64 * 1024
_CHUNK_BYTES = b"x" * CHUNK
UPLOAD_SIZE = 256 * 1024


def _start(status: int, length: int) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(length).encode())],
    }


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _upload(receive: Receive, send: Send) -> None:
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(_start(200, len(body)))
    await send({"type": "http.response.body", "body": body})


async def _download(send: Send) -> None:
    await send(_start(200, DOWNLOAD_SIZE))
    chunks = DOWNLOAD_SIZE // CHUNK
    for index in range(chunks):
        await send(
            {"type": "http.response.body", "body": _CHUNK_BYTES, "more_body": index < chunks - 1}
        )


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
        return
    if kind == "websocket":
        await _websocket(receive, send)
        return
    path = scope["path"]
    if path == "/upload":
        await _upload(receive, send)
    elif path == "/download":
        await _download(send)
    elif path == "/":
        await send(_start(200, len(HELLO)))
        await send({"type": "http.response.body", "body": HELLO})
    else:
        await send(_start(404, 9))
        await send({"type": "http.response.body", "body": b"not found"})
