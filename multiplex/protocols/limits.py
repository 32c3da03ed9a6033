"""Rate limits counted in fixed windows: a counter and the window's start time.

Cheap enough to call on every event of its kind; a fixed window admits at most twice
the limit across a window boundary, which is still a bound.
"""

from __future__ import annotations


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
