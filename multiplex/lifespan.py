"""The ASGI lifespan protocol: one long-lived app call that hears "startup" before we
accept connections and "shutdown" after the last one is done.

The app call runs as its own task for the whole life of the server; `startup()` and
`shutdown()` only wait for the app's answer to each event (or its failure), never for
the task to end, since an app may legitimately keep running or return early.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from multiplex.app import ASGIApp, Message
from multiplex.config import Config
from multiplex.errors import StartupError

logger = logging.getLogger("multiplex")

STARTUP = "startup"
SHUTDOWN = "shutdown"


class Lifespan:
    def __init__(self, app: ASGIApp, config: Config, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = config.lifespan
        self.timeout = config.lifespan_timeout
        self.state = state
        # False until startup completes; stays False if the app does not speak lifespan.
        self.supported = False
        self._task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        # The phase whose answer we are waiting for, and the future it resolves:
        # None on "complete", the app's message on "failed".
        self._phase: str | None = None
        self._answer: asyncio.Future[str | None] | None = None
        self._error: BaseException | None = None  # what the app task raised, if anything

    # --- the two calls the server makes -----------------------------------------------

    async def startup(self) -> None:
        """Raise StartupError if the app refuses to start (or, in mode `on`, cannot
        do lifespan at all)."""
        if self.mode == "off":
            return
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        try:
            done, failure = await self._exchange(STARTUP)
        except TimeoutError:
            await self._cancel()
            raise StartupError(
                f"lifespan startup failed: no answer within {self.timeout:g}s (--lifespan-timeout)"
            ) from None
        if done:
            if failure is not None:
                raise StartupError(f"lifespan startup failed: {failure or 'no message given'}")
            self.supported = True
            return
        # The app ended (raised or returned) without answering: it does not do lifespan.
        reason = _why_ended(self._error, STARTUP)
        if self.mode == "on":
            raise StartupError(f"lifespan startup failed: {reason}")
        logger.info("ASGI lifespan not supported by the app (%s); continuing without it", reason)
        if self._error is not None:
            logger.debug("lifespan error", exc_info=self._error)

    async def shutdown(self) -> None:
        """Tell the app to shut down and wait (bounded) for it; failures are logged,
        since there is nothing left to abort."""
        if not self.supported or self._task is None:
            return
        if self._task.done():
            # Returned after startup without waiting for shutdown: fine, nothing to say.
            return
        try:
            done, failure = await self._exchange(SHUTDOWN)
        except TimeoutError:
            logger.error("lifespan shutdown did not finish within %gs; cancelled it", self.timeout)
            await self._cancel()
            return
        if done and failure is not None:
            logger.error("lifespan shutdown failed: %s", failure or "no message given")
        elif not done:
            logger.error("lifespan shutdown failed: %s", _why_ended(self._error, SHUTDOWN))

    # --- machinery ---------------------------------------------------------------------

    async def _exchange(self, phase: str) -> tuple[bool, str | None]:
        """Send `lifespan.<phase>` and wait for the answer or for the app task to end.
        Returns (answered, failure message or None); raises TimeoutError."""
        assert self._task is not None
        loop = asyncio.get_running_loop()
        self._phase = phase
        answer: asyncio.Future[str | None] = loop.create_future()
        self._answer = answer
        await self._events.put({"type": f"lifespan.{phase}"})
        waiting: set[asyncio.Future[Any]] = {answer, self._task}
        finished, _ = await asyncio.wait(
            waiting, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not finished:
            raise TimeoutError
        # An app may answer and return in the same step: the answer wins.
        if answer.done():
            return True, answer.result()
        return False, None

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            if self.supported and self._phase == STARTUP:
                # It had started fine and then crashed while the server ran.
                logger.error("lifespan task failed after startup", exc_info=exc)

    async def _receive(self) -> Message:
        return await self._events.get()

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        expected = (f"lifespan.{self._phase}.complete", f"lifespan.{self._phase}.failed")
        if kind not in expected or self._answer is None or self._answer.done():
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
        if kind.endswith(".failed"):
            self._answer.set_result(str(message.get("message", "")))
        else:
            self._answer.set_result(None)

    async def _cancel(self) -> None:
        """Cancel the app task and give it a moment to unwind; an app that ignores
        cancellation must not hang the server, so the wait is bounded."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)


def _why_ended(error: BaseException | None, phase: str) -> str:
    if error is None:
        return f"the app returned without answering lifespan.{phase}"
    text = " ".join(str(error).split())
    return f"the app raised {type(error).__name__}" + (f": {text}" if text else "")
