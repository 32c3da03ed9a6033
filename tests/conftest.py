"""Fixtures that run a real multiplex server on loopback for the tests.

`run_server(app, **config)` starts a `Server` in a background thread with its own event
loop, bound to a free port on 127.0.0.1, and stops it (gracefully) when the test ends.
Clients are real: httpx, curl, nghttp, raw sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from multiplex.config import Config
from multiplex.server import Server


class RunningServer:
    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, tls: bool) -> None:
        self.server = server
        self.loop = loop
        address = server.addresses[0]
        self.host, self.port = address[0], address[1]
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    @property
    def quic_port(self) -> int:
        """The UDP port of the first QUIC endpoint (it differs from `port` when 0 was asked)."""
        endpoints = self.server.quic_endpoints
        assert endpoints and endpoints[0].address is not None, "no quic_bind on this server"
        return endpoints[0].address[1]

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop thread (to look at its state safely)."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # pragma: no cover - surfaced to the test
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def shutdown(self) -> None:
        """Graceful shutdown, as SIGTERM would do; returns when it is complete."""
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(timeout=60)


def client_socket(port: int, alpn: str | None = None) -> socket.socket:
    """A connection to a server on 127.0.0.1: cleartext, or TLS offering `alpn` (the
    server's development certificate is not checked)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if alpn is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_alpn_protocols([alpn])
        sock = context.wrap_socket(sock, server_hostname="localhost")
    return sock


def require_tool(name: str) -> str:
    """The path of the external client `name`; skips the test when it is not installed,
    or fails it when MULTIPLEX_REQUIRE_TOOLS=1 (CI installs every tool)."""
    # Servers such as nghttpd live in /usr/sbin, which a non-root PATH may leave out.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        message = f"{name} not installed"
        if os.environ.get("MULTIPLEX_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{message} (MULTIPLEX_REQUIRE_TOOLS=1)")
        pytest.skip(message)
    return path


@pytest.fixture
def run_server() -> Iterator[Callable[..., RunningServer]]:
    started: list[tuple[RunningServer, threading.Thread]] = []

    def start(app: Any, **overrides: Any) -> RunningServer:
        overrides.setdefault("bind", ["127.0.0.1:0"])
        overrides.setdefault("access_log", False)
        overrides.setdefault("lifespan", "off")
        config = Config(**overrides)
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[Server] = concurrent.futures.Future()
        stopped = asyncio.Event()

        async def main() -> None:
            server = Server(config, app)
            try:
                await server.start()
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(server)
            await stopped.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        server = ready.result(timeout=30)
        running = RunningServer(server, loop, tls=config.tls)
        running.stopped = stopped  # type: ignore[attr-defined]
        started.append((running, thread))
        return running

    yield start
    for running, thread in started:
        if running.server.state is not None:
            running.shutdown()
        running.loop.call_soon_threadsafe(running.stopped.set)  # type: ignore[attr-defined]
        thread.join(timeout=30)
        running.loop.close()


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from multiplex import devcerts

    return devcerts.ensure(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def tls_config(dev_certs: Any) -> dict[str, Any]:
    """Config overrides for a TLS server with the session's development certificate."""
    return {"certfile": str(dev_certs.cert), "keyfile": str(dev_certs.key)}
