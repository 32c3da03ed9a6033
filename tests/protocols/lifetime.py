"""Helpers for tests of what a closed connection leaves behind, over real sockets.

The server runs in a thread of the test's process (tests/conftest.py), so
`gc.disable()` holds for it too: an object of a finished connection that is still alive
after the server's loop has settled is one that only a cyclic collection would free.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from tests.conftest import RunningServer


def connection_refs(
    running: RunningServer, kind: type[Any], parts: Callable[[Any], Iterable[object]]
) -> list[weakref.ref[object]]:
    """Weak references to `parts(protocol)` of the server's one open connection of
    class `kind`, taken on the server's loop."""

    def grab() -> list[weakref.ref[object]]:
        state = running.server.state
        assert state is not None
        (protocol,) = [c for c in state.connections if isinstance(c, kind) and not c.closed]
        return [weakref.ref(part) for part in parts(protocol)]

    refs: list[weakref.ref[object]] = running.call(grab)
    return refs


def settle_until_freed(
    running: RunningServer, refs: list[weakref.ref[object]], turns: int = 500
) -> list[str]:
    """Let the server's loop run until the objects are gone (bounded, not timed); the
    types of those still alive."""
    pause = threading.Event()
    for _ in range(turns):
        running.call(lambda: None)  # a turn of the server's loop, at least
        if all(ref() is None for ref in refs):
            break
        pause.wait(0.01)
    return [type(obj).__name__ for obj in (ref() for ref in refs) if obj is not None]


def server_garbage(
    modules: tuple[str, ...] = ("multiplex.", "h2.", "hpack.", "asyncio."),
) -> list[str]:
    """The types, from `modules`, of the objects only a collection would free. (The
    test's own client runs in this process too: its libraries are left out.)"""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        garbage = [f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return sorted(name for name in garbage if name.startswith(modules))
