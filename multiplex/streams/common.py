"""What the HTTP and WebSocket streams share: the scope keys every ASGI connection
scope has, the app task's bookkeeping, and the access log line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, cast
from urllib.parse import unquote

from multiplex.logs import access_line
from multiplex.proxy import apply_proxy_headers
from multiplex.streams.seam import ConnectionInfo, HeadHoldingWire, Request, ServerState, Wire

access_logger = logging.getLogger("multiplex.access")
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


def base_scope(
    kind: str,
    request: Request,
    info: ConnectionInfo,
    server: ServerState,
    scheme: str,
    extensions: dict[str, Any],
) -> dict[str, Any]:
    """The keys `http` and `websocket` scopes have in common."""
    raw_path, _, query = request.raw_target.partition(b"?")
    root_path = server.config.root_path
    path = raw_path.decode("latin-1")
    if "%" in path:  # most paths have no escapes: no call into urllib for them
        path = unquote(path, errors="surrogateescape")
    if root_path:
        # As a proxy that strips the prefix would present it (ASGI: path includes it).
        path = root_path + path
        raw_path = root_path.encode() + raw_path
    scope = {
        "type": kind,
        "asgi": ASGI_VERSION,
        "http_version": info.http_version,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": request.headers,
        "client": info.client,
        "server": info.server,
        "state": server.lifespan_state.copy(),
        "extensions": extensions,
    }
    if server.config.proxy_headers:
        apply_proxy_headers(scope, server.config)
    return scope


def flush_head(wire: Wire, stream_id: int) -> None:
    """After `send_head(end=False)` with no body piece to send at once: a wire that
    holds heads for the first body piece (`HeadHoldingWire`) sends it now."""
    if getattr(wire, "holds_heads", False):
        cast(HeadHoldingWire, wire).flush_head(stream_id)


def start_app_task(server: ServerState, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """One task per stream, known to the server so shutdown can cancel stragglers."""
    slot: list[asyncio.Task[None]] = []
    task = asyncio.get_running_loop().create_task(_tracked(server.tasks, slot, coro))
    slot.append(task)
    server.tasks.add(task)
    return task


async def _tracked(
    tasks: set[asyncio.Task[None]],
    slot: list[asyncio.Task[None]],
    coro: Coroutine[Any, Any, None],
) -> None:
    """Run `coro`, then take its task (`slot[0]`) out of `tasks`. Not a done callback:
    the loop runs those one turn later, as a callback of their own, one more for every
    request; and not asyncio.current_task(), which is Python code before 3.12. (A task
    cancelled before it ever ran stays in the set; only shutdown cancels those, and it
    empties the set.)"""
    try:
        await coro
    finally:
        tasks.discard(slot[0])


def log_access(
    request: Request, scope: dict[str, Any], status: int, nbytes: int, start_time: float
) -> None:
    """One access line. The client is the scope's: behind a trusted proxy, the one the
    proxy headers named rather than the proxy itself."""
    access_logger.info(
        access_line(
            scope["client"],
            request.method,
            request.raw_target.decode("latin-1"),
            "HTTP/" + scope["http_version"],
            status,
            nbytes,
            time.monotonic() - start_time,
        )
    )
