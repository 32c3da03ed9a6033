"""Which stream's response data goes next: RFC 9218 extensible priorities.

A sans-I/O piece shared by the HTTP/2 and HTTP/3 connections. The connection asks
`next()` for a stream whenever it can put data on the wire (flow-control credit and
room in the transport) and more than one stream is waiting; it puts the stream back
with `ready()` while it has more to send.

Order (RFC 9218 section 10 leaves the details to the server):
- lower urgency first (0 is the most urgent, 7 the least);
- within one urgency, non-incremental responses before incremental ones, one after
  another in stream order (a browser's render-blocking CSS arrives whole, not in
  slices);
- incremental responses of one urgency take turns, a chunk each (round-robin).

A binary heap keyed on those rules makes each step O(log n). Changing a stream's
priority while it waits pushes a fresh heap entry and leaves the old one to be skipped
(an entry is stale when its generation is not the stream's current one).
"""

from __future__ import annotations

import heapq
from typing import Any

DEFAULT_URGENCY = 3
DEFAULT_INCREMENTAL = False
# A PRIORITY_UPDATE's field value longer than this is not a priority signal anyone sends.
MAX_PRIORITY_FIELD = 1024

Priority = tuple[int, bool]  # (urgency 0-7, incremental)
DEFAULT_PRIORITY: Priority = (DEFAULT_URGENCY, DEFAULT_INCREMENTAL)


def parse_priority(value: bytes, base: Priority = DEFAULT_PRIORITY) -> Priority:
    """The priority a `priority` field value (an RFC 8941 dictionary) asks for.

    RFC 9218 section 4: unknown keys and parameters are ignored, and so is a member
    whose value has the wrong type or range (the default, or `base`, stays). A value
    that is not a dictionary at all changes nothing either: a bad signal must not
    fail the request."""
    urgency, incremental = base
    for member in value.split(b","):
        key, eq, item = member.strip().partition(b"=")
        key = key.strip()
        item = item.split(b";", 1)[0].strip()  # parameters carry nothing for us
        if key == b"u":
            if eq and item.isdigit() and len(item) == 1 and int(item) <= 7:
                urgency = int(item)
        elif key.split(b";", 1)[0] == b"i":
            if not eq:
                incremental = True  # a bare key is boolean true
            elif item == b"?1":
                incremental = True
            elif item == b"?0":
                incremental = False
    return urgency, incremental


def format_priority(priority: Priority) -> bytes:
    urgency, incremental = priority
    return b"u=%d, i" % urgency if incremental else b"u=%d" % urgency


class Scheduler:
    """The streams that have data ready, in the order they should send it."""

    __slots__ = ("_count", "_generation", "_heap", "_priority", "_turn")

    def __init__(self) -> None:
        # (urgency, incremental, order, stream_id, generation)
        self._heap: list[tuple[int, bool, int, int, int]] = []
        self._generation: dict[int, int] = {}  # waiting streams -> their live entry
        self._priority: dict[int, Priority] = {}
        self._turn = 0  # round-robin counter for incremental streams
        self._count = 0  # generations, unique across streams and waits

    def __len__(self) -> int:
        return len(self._generation)

    def __contains__(self, stream_id: int) -> bool:
        return stream_id in self._generation

    def priority(self, stream_id: int) -> Priority:
        return self._priority.get(stream_id, DEFAULT_PRIORITY)

    def set_priority(self, stream_id: int, priority: Priority) -> None:
        """Record a stream's priority; a waiting stream moves to its new place."""
        if self._priority.get(stream_id, DEFAULT_PRIORITY) == priority:
            self._priority[stream_id] = priority
            return
        self._priority[stream_id] = priority
        if stream_id in self._generation:
            self._push(stream_id)

    def ready(self, stream_id: int) -> None:
        """The stream has data to send (again). An incremental stream goes to the back
        of its urgency's round; a non-incremental one keeps its place in stream order."""
        self._push(stream_id)

    def next(self) -> int | None:
        """The stream to send for next, taken out of the waiting set (None: nobody)."""
        heap = self._heap
        generations = self._generation
        while heap:
            _, _, _, stream_id, generation = heapq.heappop(heap)
            if generations.get(stream_id) == generation:
                del generations[stream_id]
                return stream_id
        return None

    def peek(self) -> int | None:
        """The stream `next()` would return, left in place."""
        heap = self._heap
        generations = self._generation
        while heap:
            entry = heap[0]
            if generations.get(entry[3]) == entry[4]:
                return entry[3]
            heapq.heappop(heap)  # stale
        return None

    def discard(self, stream_id: int) -> None:
        """The stream has nothing more to send (or is gone): forget its wait."""
        self._generation.pop(stream_id, None)
        if not self._generation:
            self._heap.clear()  # only stale entries are left

    def forget(self, stream_id: int) -> None:
        """The stream is closed: drop its priority too."""
        self.discard(stream_id)
        self._priority.pop(stream_id, None)

    def _push(self, stream_id: int) -> None:
        urgency, incremental = self._priority.get(stream_id, DEFAULT_PRIORITY)
        if incremental:
            self._turn += 1
            order = self._turn
        else:
            order = stream_id
        self._count += 1
        generation = self._generation[stream_id] = self._count
        heapq.heappush(self._heap, (urgency, incremental, order, stream_id, generation))


class PendingSend:
    """Response data a stream could not send at once: it waits for its turn, for
    flow-control credit, or for room in the transport. `waiter` is the future the
    app's `send()` awaits; `progress` is when a chunk of it last went out."""

    __slots__ = ("data", "end", "progress", "timer", "waiter")

    def __init__(self, data: bytes | memoryview, end: bool, waiter: Any, now: float) -> None:
        self.data = data
        self.end = end
        self.waiter = waiter
        self.progress = now
        self.timer: Any = None
