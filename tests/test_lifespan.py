"""The lifespan protocol, driven through `Lifespan` with real (tiny) ASGI apps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from multiplex.config import Config
from multiplex.errors import StartupError
from multiplex.lifespan import Lifespan

Scope = dict[str, Any]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=10))


def make(app: Any, mode: str = "auto", timeout: float = 5.0) -> tuple[Lifespan, dict[str, Any]]:
    state: dict[str, Any] = {}
    return Lifespan(app, Config(lifespan=mode, lifespan_timeout=timeout), state), state


class Recorder:
    """A well-behaved lifespan app that records what it saw and sets state."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.scope: Scope = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.events.append(message["type"])
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def test_startup_then_shutdown_with_state() -> None:
    app = Recorder()
    lifespan, state = make(app)

    async def main() -> None:
        await lifespan.startup()
        assert app.events == ["lifespan.startup"]
        assert state == {"db": "connected"}  # the very dict the server shares
        await lifespan.shutdown()

    run(main())
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]
    assert app.scope["type"] == "lifespan"
    assert app.scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
    assert lifespan.supported


def test_startup_failed_raises_with_the_apps_message() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        raise RuntimeError("what frameworks do after reporting the failure")

    lifespan, _ = make(app, mode="on")
    with pytest.raises(StartupError, match=r"^lifespan startup failed: no database$"):
        run(lifespan.startup())


async def _no_lifespan(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # what many frameworks do on an unknown scope type
        raise ValueError("lifespan not supported")


def test_unsupported_app_in_auto_mode_continues(caplog: pytest.LogCaptureFixture) -> None:
    lifespan, _ = make(_no_lifespan, mode="auto")

    async def main() -> None:
        await lifespan.startup()
        await lifespan.shutdown()  # a no-op: nothing to tell the app

    with caplog.at_level(logging.INFO, logger="multiplex"):
        run(main())
    assert not lifespan.supported
    messages = [r.getMessage() for r in caplog.records if r.name == "multiplex"]
    assert any("lifespan not supported" in m and "ValueError" in m for m in messages)
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "multiplex")


def test_unsupported_app_in_on_mode_fails() -> None:
    lifespan, _ = make(_no_lifespan, mode="on")
    with pytest.raises(StartupError) as info:
        run(lifespan.startup())
    assert str(info.value) == (
        "lifespan startup failed: the app raised ValueError: lifespan not supported"
    )


def test_app_that_returns_without_answering() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        return

    lifespan, _ = make(app, mode="auto")
    run(lifespan.startup())
    assert not lifespan.supported
    lifespan, _ = make(app, mode="on")
    with pytest.raises(StartupError, match=r"returned without answering lifespan\.startup"):
        run(lifespan.startup())


def test_startup_timeout() -> None:
    cancelled = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    lifespan, _ = make(app, timeout=0.1)
    with pytest.raises(StartupError, match=r"no answer within 0.1s \(--lifespan-timeout\)"):
        run(lifespan.startup())
    assert cancelled == [True]  # the app task does not outlive the failed startup


def test_off_mode_never_calls_the_app() -> None:
    calls = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        calls.append(scope)

    lifespan, _ = make(app, mode="off")

    async def main() -> None:
        await lifespan.startup()
        await lifespan.shutdown()

    run(main())
    assert calls == []


def test_app_returning_after_startup_is_fine() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})

    lifespan, _ = make(app, mode="on", timeout=5)

    async def main() -> float:
        await lifespan.startup()
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await lifespan.shutdown()
        return loop.time() - start

    assert run(main()) < 1  # does not wait out the timeout


def test_shutdown_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.failed", "message": "could not flush"})

    lifespan, _ = make(app)

    async def main() -> None:
        await lifespan.startup()
        await lifespan.shutdown()

    with caplog.at_level(logging.INFO, logger="multiplex"):
        run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["lifespan shutdown failed: could not flush"]


def test_shutdown_exception_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise OSError("disk gone")

    lifespan, _ = make(app)

    async def main() -> None:
        await lifespan.startup()
        await lifespan.shutdown()

    with caplog.at_level(logging.INFO, logger="multiplex"):
        run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["lifespan shutdown failed: the app raised OSError: disk gone"]


def test_shutdown_timeout_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.sleep(60)

    lifespan, _ = make(app, timeout=0.1)

    async def main() -> None:
        await lifespan.startup()
        await lifespan.shutdown()

    with caplog.at_level(logging.INFO, logger="multiplex"):
        run(main())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["lifespan shutdown did not finish within 0.1s; cancelled it"]


def test_unexpected_message_raises_in_the_app() -> None:
    seen: list[BaseException] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        try:
            await send({"type": "lifespan.shutdown.complete"})  # wrong phase
        except RuntimeError as exc:
            seen.append(exc)
        await send({"type": "lifespan.startup.complete"})

    lifespan, _ = make(app, mode="on")
    run(lifespan.startup())
    assert lifespan.supported
    assert "unexpected ASGI lifespan message 'lifespan.shutdown.complete'" in str(seen[0])
