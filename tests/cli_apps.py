"""ASGI apps the CLI tests start by name (`tests.cli_apps:hello`, ...)."""

from __future__ import annotations

from typing import Any


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Lifespan-aware; answers every HTTP request with `hello`."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


async def refuses_to_start(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Fails lifespan startup the way the spec says to."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


not_callable = "I am a string"


async def pathsend(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The file whose absolute path is the query string, by `http.response.pathsend`."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.pathsend", "path": scope["query_string"].decode()})


async def pid(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the serving process's pid; `/slow` first waits 2 seconds (a request
    in flight across a reload), `/block` blocks the event loop for 30 s (a worker that
    cannot stop). Lifespan-aware, like a real app; says on stderr when its lifespan
    starts and stops, and when a slow or blocking request arrives."""
    import asyncio
    import os
    import sys
    import time

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                print(f"lifespan startup in {os.getpid()}", file=sys.stderr, flush=True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print(f"lifespan shutdown in {os.getpid()}", file=sys.stderr, flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        # Tells a test the request has reached the app, before the app sleeps.
        print(f"slow request in {os.getpid()}", file=sys.stderr, flush=True)
        await asyncio.sleep(2)
    if scope["path"] == "/block":
        # Blocks the worker's event loop, so it cannot even act on SIGTERM.
        print(f"blocking request in {os.getpid()}", file=sys.stderr, flush=True)
        time.sleep(30)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


async def gc_frozen(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with how many objects the garbage collector has frozen in this process."""
    import gc

    if scope["type"] != "http":
        return
    body = str(gc.get_freeze_count()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
