"""The ASGI HTTP stream (multiplex/streams/http.py) through a real server and httpx,
over HTTP/1.1 and HTTP/2 (h2c), since the stream layer is shared by both."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests import apps
from tests.conftest import RunningServer

RunServer = Callable[..., RunningServer]
Scope = dict[str, Any]
Message = dict[str, Any]


@pytest.fixture(params=["1.1", "2"])
def serve(request: pytest.FixtureRequest, run_server: RunServer) -> Iterator[Any]:
    """`serve(app)` -> (running server, httpx client) speaking HTTP/1.1 or h2c."""
    version: str = request.param
    clients: list[httpx.Client] = []

    def start(app: Any) -> tuple[RunningServer, httpx.Client]:
        running = run_server(app, h2c=version == "2")
        client = httpx.Client(
            base_url=running.url, http1=version == "1.1", http2=version == "2", timeout=10
        )
        clients.append(client)
        return running, client

    start.version = version  # type: ignore[attr-defined]
    yield start
    for client in clients:
        client.close()


def wait_for(running: RunningServer, check: Callable[[], bool]) -> None:
    """Poll the server loop until `check()` holds there (bounded; asserts no duration)."""
    pause = threading.Event()
    for _ in range(500):
        if running.call(check):
            return
        pause.wait(0.01)
    raise AssertionError("the server never reached the expected state")


def app_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "multiplex" and r.levelno >= logging.ERROR]


def version_of(response: httpx.Response) -> str:
    return response.http_version.removeprefix("HTTP/")


# --- invalid app messages ---------------------------------------------------------------

START = {"type": "http.response.start", "status": 200, "headers": []}

INVALID_BEFORE_START: dict[str, list[Message]] = {
    "status-not-int": [{"type": "http.response.start", "status": "200", "headers": []}],
    "status-out-of-range": [{"type": "http.response.start", "status": 99, "headers": []}],
    "status-1xx": [{"type": "http.response.start", "status": 101, "headers": []}],
    "header-name-str": [{"type": "http.response.start", "status": 200, "headers": [("x-a", b"1")]}],
    "header-value-str": [
        {"type": "http.response.start", "status": 200, "headers": [(b"x-a", "1")]}
    ],
    "header-not-pair": [{"type": "http.response.start", "status": 200, "headers": [b"x-a"]}],
    "body-not-bytes": [START, {"type": "http.response.body", "body": "text"}],
    "body-before-start": [{"type": "http.response.body", "body": b"early"}],
    "unknown-type": [{"type": "http.response.bogus"}],
    "unknown-type-after-start": [START, {"type": "http.response.bogus"}],
}

EXPECTED_ERROR = {
    "status-not-int": TypeError,
    "status-out-of-range": TypeError,
    "status-1xx": RuntimeError,
    "header-name-str": TypeError,
    "header-value-str": TypeError,
    "header-not-pair": TypeError,
    "body-not-bytes": TypeError,
    "body-before-start": RuntimeError,
    "unknown-type": RuntimeError,
    "unknown-type-after-start": RuntimeError,
}


def sender(messages: list[Message]) -> Any:
    """An app that sends `messages` in order on `/bad`, and says hello elsewhere."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["path"] != "/bad":
            await apps.hello(scope, receive, send)
            return
        for message in messages:
            await send(message)

    return app


@pytest.mark.parametrize("case", sorted(INVALID_BEFORE_START))
def test_invalid_message_before_body_gives_500(
    serve: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    _running, client = serve(sender(INVALID_BEFORE_START[case]))
    response = client.get("/bad")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    errors = app_errors(caplog)
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is EXPECTED_ERROR[case]
    after = client.get("/ok")  # the same client (and connection, where kept) goes on
    assert after.status_code == 200
    assert after.text == f"hello {serve.version}"


INVALID_AFTER_BODY: dict[str, Message] = {
    "body-not-bytes": {"type": "http.response.body", "body": 12},
    "start-again": START,
    "unknown-type": {"type": "http.response.bogus"},
}


@pytest.mark.parametrize("case", sorted(INVALID_AFTER_BODY))
def test_invalid_message_after_body_started_resets(
    serve: Any, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    messages = [
        START,
        {"type": "http.response.body", "body": b"partial", "more_body": True},
        INVALID_AFTER_BODY[case],
    ]
    _running, client = serve(sender(messages))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/bad")  # HTTP/1.1: body cut short; HTTP/2: RST_STREAM
    errors = app_errors(caplog)
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] in (TypeError, RuntimeError)
    after = client.get("/ok")
    assert after.status_code == 200
    assert after.text == f"hello {serve.version}"


def test_app_returning_without_response_gives_500(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _running, client = serve(sender([]))
    response = client.get("/bad")
    assert response.status_code == 500
    assert any("without sending a response" in r.getMessage() for r in app_errors(caplog))
    assert client.get("/ok").status_code == 200


def test_app_returning_mid_body_aborts(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    _running, client = serve(
        sender([START, {"type": "http.response.body", "body": b"partial", "more_body": True}])
    )
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/bad")
    assert any("without completing" in r.getMessage() for r in app_errors(caplog))
    assert client.get("/ok").status_code == 200


# --- receive -------------------------------------------------------------------------------


def test_receive_after_response_is_disconnect(serve: Any) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await apps.read_body(receive)
        await send(START)
        await send({"type": "http.response.body", "body": b"done"})
        seen.append(await receive())

    running, client = serve(app)
    response = client.post("/", content=b"abc")
    assert response.text == "done"
    wait_for(running, lambda: bool(seen))
    assert seen == [{"type": "http.disconnect"}]


def test_request_body_in_chunks_ends_with_more_body_false(serve: Any) -> None:
    received: list[Message] = []
    parts = [b"first ", b"second ", b"third ", b"x" * 10000]

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send(START)
        await send({"type": "http.response.body", "body": b"%d" % len(received)})

    running, client = serve(app)

    def upload() -> Iterator[bytes]:
        for index, part in enumerate(parts):
            yield part
            # Hand over the next part only once the app has read this one, so each
            # arrives as its own message.
            wait_for(running, lambda index=index: sum(len(m["body"]) for m in received)
                     >= sum(len(p) for p in parts[: index + 1]))  # fmt: skip

    response = client.post("/", content=upload())
    assert response.status_code == 200
    assert all(m["type"] == "http.request" for m in received)
    assert len(received) >= len(parts)
    assert all(m["more_body"] for m in received[:-1])
    assert received[-1]["more_body"] is False
    assert b"".join(m["body"] for m in received) == b"".join(parts)


# --- send ----------------------------------------------------------------------------------


def test_more_body_chunks_then_empty_final_body(serve: Any) -> None:
    chunks = [b"one,", b"two,", b"", b"three"]

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send(START)
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    _running, client = serve(app)
    response = client.get("/")
    assert response.status_code == 200
    assert response.content == b"one,two,three"
    assert version_of(response) == serve.version
    if serve.version == "1.1":
        assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
