"""A Starlette app: an HTTP route, streaming responses, a background task, a WebSocket
echo, and a lifespan that records startup and shutdown (and hands state to every request).

`/held` and the `/jobs` background task wait on a gate that `POST /release/{name}` opens,
so a test can see the response's first part, or the whole response, reach the client
while the app is still running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

STREAM_CHUNKS = [f"chunk {i}\n".encode() for i in range(50)]
HELD_CHUNKS = [b"first\n", b"second\n"]
GATE_TIMEOUT = 30  # a gate nobody opens fails the app, not the whole test run


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

    gates: dict[str, asyncio.Event] = {}

    def gate(name: str) -> asyncio.Event:
        return gates.setdefault(name, asyncio.Event())

    async def held(request: Request) -> StreamingResponse:
        """The first chunk, then nothing until the "stream" gate opens."""

        async def chunks() -> AsyncIterator[bytes]:
            yield HELD_CHUNKS[0]
            await asyncio.wait_for(gate("stream").wait(), GATE_TIMEOUT)
            yield HELD_CHUNKS[1]

        return StreamingResponse(chunks(), media_type="text/plain")

    async def release(request: Request) -> PlainTextResponse:
        gate(request.path_params["name"]).set()
        return PlainTextResponse("released")

    jobs: list[str] = []

    async def enqueue(request: Request) -> JSONResponse:
        """Answers at once; the job runs after the response, once the "job" gate opens."""
        name = request.path_params["name"]

        async def job() -> None:
            await asyncio.wait_for(gate("job").wait(), GATE_TIMEOUT)
            jobs.append(name)

        return JSONResponse({"queued": name}, status_code=202, background=BackgroundTask(job))

    async def done(request: Request) -> JSONResponse:
        return JSONResponse(jobs)

    app = Starlette(
        routes=[
            Route("/hello", hello),
            Route("/stream", stream),
            Route("/held", held),
            Route("/release/{name}", release, methods=["POST"]),
            Route("/jobs/{name}", enqueue, methods=["POST"]),
            Route("/jobs", done),
            WebSocketRoute("/ws/echo", echo),
            WebSocketRoute("/ws/deny", deny),
        ],
        lifespan=lifespan,
    )
    app.state.events = events
    return app
