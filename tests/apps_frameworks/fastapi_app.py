"""A FastAPI app: a JSON endpoint with a pydantic body and a dependency, a streaming
response, a background task, a WebSocket echo, and a lifespan that records startup and
shutdown.

As in starlette_app, `/held` and the `/jobs` background task wait on a gate that
`POST /release/{name}` opens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.websockets import WebSocketDisconnect
from pydantic import BaseModel

TOKEN = "secret-token"
HELD_CHUNKS = [b"first\n", b"second\n"]
GATE_TIMEOUT = 30  # a gate nobody opens fails the app, not the whole test run


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1


class Priced(BaseModel):
    name: str
    total: float
    user: str
    http_version: str


def current_user(x_token: Annotated[str, Header()]) -> str:
    """The dependency: the caller, from the x-token header (401 when wrong)."""
    if x_token != TOKEN:
        raise HTTPException(status_code=401, detail="bad token")
    return "alice"


def create_app() -> FastAPI:
    """A fresh app per test; `app.state.events` records the lifespan events."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)
    app.state.events = events

    @app.post("/items")
    async def price(
        item: Item, request: Request, user: Annotated[str, Depends(current_user)]
    ) -> Priced:
        return Priced(
            name=item.name,
            total=item.price * item.quantity,
            user=user,
            http_version=request.scope["http_version"],
        )

    gates: dict[str, asyncio.Event] = {}

    def gate(name: str) -> asyncio.Event:
        return gates.setdefault(name, asyncio.Event())

    @app.get("/held")
    async def held() -> StreamingResponse:
        """The first chunk, then nothing until the "stream" gate opens."""

        async def chunks() -> AsyncIterator[bytes]:
            yield HELD_CHUNKS[0]
            await asyncio.wait_for(gate("stream").wait(), GATE_TIMEOUT)
            yield HELD_CHUNKS[1]

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.post("/release/{name}")
    async def release(name: str) -> str:
        gate(name).set()
        return "released"

    jobs: list[str] = []
    app.state.jobs = jobs

    @app.post("/jobs/{name}", status_code=202)
    async def enqueue(name: str, background: BackgroundTasks) -> dict[str, str]:
        """Answers at once; the job runs after the response, once the "job" gate opens."""

        async def job() -> None:
            await asyncio.wait_for(gate("job").wait(), GATE_TIMEOUT)
            jobs.append(name)

        background.add_task(job)
        return {"queued": name}

    @app.get("/jobs")
    async def done() -> list[str]:
        return jobs

    @app.get("/started")
    async def started() -> dict[str, bool]:
        return {"started": "startup" in events}

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        """Echoes text and bytes; accepts "chat" when offered; "close" closes with 4001."""
        offered = websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol="chat" if "chat" in offered else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                text = message.get("text")
                if text == "close":
                    await websocket.close(code=4001, reason="bye")
                    return
                if text is not None:
                    await websocket.send_text(text)
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            return

    return app
