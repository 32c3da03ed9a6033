"""A small blocking HTTP/2 client over a raw socket, driven by the h2 library.

For what httpx cannot do: pick the window sizes, reset a stream, look at frames.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings


class Response:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.ended = False
        self.reset_code: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """One HTTP/2 connection. `pump()` reads once from the socket and records events."""

    def __init__(
        self,
        port: int,
        *,
        window: int | None = None,
        sock: socket.socket | None = None,
        upgrade_settings: bool = False,
    ) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.responses: dict[int, Response] = {}
        self.events: list[Any] = []
        self.closed = False
        self.port = port
        if upgrade_settings:
            return  # the caller uses initiate_upgrade_connection itself
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str,
        method: str = "GET",
        headers: Iterable[tuple[bytes, bytes]] = (),
        end: bool = True,
        scheme: str = "http",
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", scheme.encode()),
            (b":authority", f"127.0.0.1:{self.port}".encode()),
            *headers,
        ]
        self.conn.send_headers(stream_id, head, end_stream=end)
        self.responses[stream_id] = Response()
        self.flush()
        return stream_id

    def pump(self) -> list[Any]:
        """Read once, handle what arrived (acknowledging data as it is read)."""
        data = self.sock.recv(1 << 20)
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        return self.feed(data)

    def feed(self, data: bytes) -> list[Any]:
        events = self.conn.receive_data(data)
        for event in events:
            self.events.append(event)
            response = self.responses.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and response is not None:
                response.headers = list(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                if response is not None:
                    response.body += event.data
                if event.flow_controlled_length:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                response.ended = True
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                response.reset_code = event.error_code
        self.flush()
        return events

    def until(self, condition: Callable[[], bool], max_reads: int = 100_000) -> None:
        for _ in range(max_reads):
            if condition():
                return
            self.pump()
        raise AssertionError("condition not reached")

    def get(self, path: str, **kwargs: Any) -> Response:
        stream_id = self.request(path, **kwargs)
        response = self.responses[stream_id]
        self.until(lambda: response.done)
        return response
