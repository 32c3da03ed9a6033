"""`Server` in this process: what its graceful shutdown does with connections at the
very edge of it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from multiplex.config import Config
from multiplex.server import Server
from tests.cli_apps import hello

REQUEST = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())


def read_response(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_accepted_as_the_shutdown_begins_is_answered(loop: str) -> None:
    """The shutdown starts in the very loop turn that accepts a connection (a reader on
    a socket pair, readable together with the listening socket, starts it), before the
    connection's protocol exists: asyncio makes the transport a turn later, and its
    Server refuses to take one in once closed. The request on it is still answered,
    with `connection: close`, before the shutdown ends."""
    clients: list[socket.socket] = []

    async def main() -> None:
        server = Server(Config(bind=["127.0.0.1:0"], access_log=False, lifespan="off"), hello)
        await server.start()
        running = asyncio.get_running_loop()
        trigger, pull = socket.socketpair()
        shutdowns: list[asyncio.Task[None]] = []

        def begin() -> None:
            running.remove_reader(pull)
            shutdowns.append(asyncio.ensure_future(server.shutdown()))

        running.add_reader(pull, begin)
        # Both in the kernel before the loop looks again: the connection in the
        # listening socket's accept queue (its request sent), the trigger readable.
        client = socket.create_connection(server.addresses[0], timeout=10)
        clients.append(client)
        client.sendall(REQUEST)
        trigger.send(b"!")
        while not shutdowns:
            await asyncio.sleep(0)
        await shutdowns[0]
        trigger.close()
        pull.close()

    run_on(loop, main)
    with clients[0]:
        answer = read_response(clients[0])
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200 "), answer
    assert b"connection: close" in head.lower()
    assert answer.endswith(b"hello")
