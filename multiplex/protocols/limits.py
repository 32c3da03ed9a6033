"""Limits shared by the wire protocols: rates counted in fixed windows (a counter and
the window's start time), and the cap on open connections.

Cheap enough to call on every event of its kind; a fixed window admits at most twice
the limit across a window boundary, which is still a bound.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiplex.streams.seam import ServerState

logger = logging.getLogger("multiplex")


class RateWindow:
    __slots__ = ("count", "limit", "start", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.count = 0
        self.start = 0.0

    def hit(self, now: float, n: int = 1) -> bool:
        """Count `n` events at time `now`; True once the window holds more than `limit`."""
        if now - self.start > self.window:
            self.start = now
            self.count = 0
        self.count += n
        return self.count > self.limit


_refusals = {"count": 0, "logged": 0.0}


def over_connection_limit(server: ServerState, kind: str) -> bool:
    """Whether a new connection would pass `max_connections`; logs (at most once a
    second, with a count) when one is refused."""
    limit = server.config.max_connections
    if len(server.connections) < limit:
        return False
    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["logged"] >= 1.0:
        logger.warning(
            "Refusing %s connections: max_connections = %d reached (%d refused so far)",
            kind,
            limit,
            _refusals["count"],
        )
        _refusals["logged"] = now
    return True
