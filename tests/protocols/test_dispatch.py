"""The cleartext dispatcher: a connection that has not yet sent the bytes that tell h2c
prior knowledge from HTTP/1.1, caught by a graceful shutdown."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import h2.config
import h2.connection
import hpack
import pytest
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from tests import apps
from tests.conftest import RunningServer
from tests.sockets import read_to_eof


def _wait_for_connections(running: RunningServer, count: int) -> None:
    deadline = time.monotonic() + 10
    while running.call(lambda: len(running.server.state.connections)) < count:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the server did not take the connection"
        time.sleep(0.01)


def _wait_for_shutdown(running: RunningServer) -> None:
    def started() -> bool:
        state = running.server.state
        return state is None or state.shutting_down.is_set()

    deadline = time.monotonic() + 10
    while not running.call(started):
        assert time.monotonic() < deadline, "the shutdown did not start"
        time.sleep(0.01)


def _h2c_request() -> bytes:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(
        1,
        [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/")],
        end_stream=True,
    )
    return client.data_to_send()


def _frames(data: bytes) -> list[Frame]:
    """The server's frames, parsed one by one: an h2 client would refuse the response
    that follows a GOAWAY, though RFC 9113 lets the server finish streams it covers."""
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    assert data == b"", "a truncated frame"
    return frames


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "h2c"])
def test_shutdown_serves_a_fresh_connection_whose_first_bytes_are_on_their_way(
    run_server: Any, protocol: str
) -> None:
    """With h2c on, a fresh cleartext connection waits in the dispatcher for its first
    bytes. A graceful shutdown (a workers' reload does one) used to close it at once,
    dropping the request its client had sent; now it gets graceful_first_request_wait,
    and the protocol it turns into finishes that request and closes: HTTP/1.1 with
    `connection: close`, HTTP/2 with a GOAWAY that covers the stream."""
    running = run_server(apps.hello, h2c=True)
    with socket.create_connection(("127.0.0.1", running.port)) as fresh:
        _wait_for_connections(running, 1)
        stopper = threading.Thread(target=running.shutdown)
        stopper.start()
        _wait_for_shutdown(running)  # the shutdown reaches the connection before its bytes
        if protocol == "HTTP/1.1":
            fresh.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            response = read_to_eof(fresh)
            stopper.join(30)
            assert response.startswith(b"HTTP/1.1 200"), response
            assert b"connection: close" in response.lower()
            assert response.endswith(b"hello 1.1")
            return
        fresh.sendall(_h2c_request())
        answer = read_to_eof(fresh)
        stopper.join(30)
    frames = _frames(answer)
    heads = [hpack.Decoder().decode(f.data) for f in frames if isinstance(f, HeadersFrame)]
    assert [dict(h)[":status"] for h in heads] == ["200"]
    body = b"".join(f.data for f in frames if isinstance(f, DataFrame) and f.stream_id == 1)
    assert body == b"hello 2"
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert [(g.error_code, g.last_stream_id) for g in goaways] == [(0, 1)]
