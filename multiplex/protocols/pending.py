"""What the HTTP/2 and HTTP/3 send paths share: data that could not go out at once
waits here for its turn, in the priority scheduler, with a send-stall check.

The protocol class supplies `_pump()` (send waiting data in scheduler order, as far as
windows and buffers allow) and `_check_stall(stream_id, pending)` (reset a stream that
made no progress for `send_stall_timeout`); this mixin holds the waiting data and the
app's side of the wait.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multiplex.errors import ClientDisconnected
from multiplex.scheduling import DEFAULT_PRIORITY, PendingSend, Priority, Scheduler, parse_priority

if TYPE_CHECKING:
    from multiplex.config import Config
    from multiplex.streams.seam import Request


class PendingSends:
    loop: asyncio.AbstractEventLoop
    config: Config
    _sched: Scheduler
    _pending: dict[int, PendingSend]
    _blocked: set[int]  # streams waiting on something of their own (their window)
    _prioritize: bool  # config.priorities
    _early_priority: dict[int, Priority]  # PRIORITY_UPDATEs for streams not open yet

    def _pump(self) -> None:
        raise NotImplementedError

    def _check_stall(self, stream_id: int, pending: PendingSend) -> None:
        raise NotImplementedError

    async def _wait_turn(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """Queue what could not be sent at once and wait until it has all gone to the
        library: the scheduler orders this stream among the others waiting."""
        waiter = self.loop.create_future()
        pending = PendingSend(data, end, waiter, self.loop.time())
        self._pending[stream_id] = pending
        self._sched.ready(stream_id)
        self._pump()
        if waiter.done():
            waiter.result()
            return
        pending.timer = self.loop.call_later(
            self.config.send_stall_timeout, self._check_stall, stream_id, pending
        )
        try:
            await waiter
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            if self._pending.get(stream_id) is pending:
                self._drop_pending(stream_id)

    def _fail_pending(self, stream_id: int, why: str) -> None:
        pending = self._drop_pending(stream_id)
        if pending is not None and not pending.waiter.done():
            pending.waiter.set_exception(ClientDisconnected(f"stream {stream_id}: {why}"))

    def _drop_pending(self, stream_id: int) -> PendingSend | None:
        self._sched.discard(stream_id)
        self._blocked.discard(stream_id)
        return self._pending.pop(stream_id, None)

    def _set_request_priority(self, stream_id: int, request: Request) -> None:
        """The client's signal: a PRIORITY_UPDATE that came before the request (the
        newer signal, RFC 9218 section 7), else its `priority` header."""
        priority = self._early_priority.pop(stream_id, None)
        if priority is None:
            for name, value in request.headers:
                if name == b"priority":
                    priority = parse_priority(value)
        if priority is not None and self._prioritize:
            self._sched.set_priority(stream_id, priority)
        request.priority = priority or DEFAULT_PRIORITY
