"""A Starlette app: an HTTP route, a streaming response, a WebSocket echo, and a lifespan
that records startup and shutdown (and hands state to every request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

STREAM_CHUNKS = [f"chunk {i}\n".encode() for i in range(50)]


async def echo(websocket: WebSocket) -> None:
    """Echoes text and bytes; accepts "chat" when offered; "close" closes with 4001."""
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="chat" if "chat" in offered else None)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "close":
            await websocket.close(code=4001, reason="bye")
            return
        if text is not None:
            await websocket.send_text(text)
        else:
            await websocket.send_bytes(message["bytes"])


async def deny(websocket: WebSocket) -> None:
    """Refuses the handshake with a real HTTP response (websocket.http.response)."""
    await websocket.send_denial_response(PlainTextResponse("no entry", status_code=401))


def create_app() -> Starlette:
    """A fresh app per test; `app.state.events` records the lifespan events."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "set at startup"}
        events.append("shutdown")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "framework": "starlette",
                "http_version": request.scope["http_version"],
                "query": request.query_params.get("q"),
                "started": "startup" in events,
                "greeting": getattr(request.state, "greeting", None),
            }
        )

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in STREAM_CHUNKS:
                yield chunk

        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(
        routes=[
            Route("/hello", hello),
            Route("/stream", stream),
            WebSocketRoute("/ws/echo", echo),
            WebSocketRoute("/ws/deny", deny),
        ],
        lifespan=lifespan,
    )
    app.state.events = events
    return app
