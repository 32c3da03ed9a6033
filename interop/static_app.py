"""A static-files ASGI app for the interop endpoint: serves the files under one directory.

GET and HEAD only; `content-length` from the file's size; the body is read and sent in
chunks, so a 10 MB file never sits in memory whole and `send()` backpressure paces the
reads. Paths that leave the directory (`..`, symlinks out of it) get 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHUNK = 64 * 1024

Scope = dict[str, Any]


def resolve(root: Path, path: str) -> Path | None:
    """The regular file under `root` that the URL path names, or None."""
    relative = path.lstrip("/")
    if not relative:
        return None
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


class StaticFiles:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        found = resolve(self.root, scope["path"])
        if found is None:
            await _plain(send, 404, b"not found\n")
            return
        size = found.stat().st_size
        headers = [
            (b"content-length", str(size).encode()),
            (b"content-type", b"application/octet-stream"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD" or size == 0:
            await send({"type": "http.response.body", "body": b""})
            return
        with found.open("rb") as file:
            sent = 0
            while sent < size:
                chunk = file.read(CHUNK)
                if not chunk:
                    break  # the file shrank under us: the length was a promise we break
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": sent < size})


async def _plain(send: Any, status: int, body: bytes, extra: list[Any] | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
