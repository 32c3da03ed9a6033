"""A small HTTP/3 test client on aioquic (QuicConnectionProtocol + H3Connection).

`h3_connect(port, ca_cert, ...)` opens a connection to 127.0.0.1 and yields an
`H3Client`, on which a test starts requests (`start`), awaits whole responses
(`request`, `response`), resets streams, and looks at what aioquic saw underneath:
the negotiated QUIC version, Retry, resumption, GOAWAY frames from the server and the
connection's close. `slow_reader=True` gives a client whose receive credit the test
hands out by hand (`hold_credit`), to make the server face a reader that is slow.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var  # type: ignore[attr-defined]
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection, encode_frame
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived, PushPromiseReceived
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import CipherSuite, SessionTicket

Headers = list[tuple[bytes, bytes]]


class Response:
    """What came back on one request stream."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.headers: Headers = []
        self.informational: list[Headers] = []
        self.trailers: Headers = []  # a HEADERS frame after the body, if any
        self.chunks: list[bytes] = []
        self.received = 0  # body bytes so far
        self.ended = False
        self.reset_code: int | None = None  # the server reset the stream (RESET_STREAM)
        # Set to take body bytes as they come instead of keeping them (large bodies).
        self.sink: Callable[[bytes], None] | None = None
        self.done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

    @property
    def status(self) -> int:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return 0

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self)


class CreditHoldingQuicConnection(QuicConnection):
    """A client connection that sends no MAX_DATA / MAX_STREAM_DATA while `holding`:
    to the server it is a reader that has stopped reading."""

    holding = False

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        if not self.holding:
            super()._write_connection_limits(builder, space)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not self.holding:
            super()._write_stream_limits(builder, space, stream)


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.goaways: list[int] = []  # GOAWAY ids from the server, in order
        self._uni: dict[int, bytearray] = {}
        self._uni_parsed: dict[int, int] = {}
        self.responses: dict[int, Response] = {}
        self.order: list[tuple[int, int]] = []  # (stream, bytes) of each DATA, in order
        self.promises: dict[int, Headers] = {}  # push ID -> promised request
        self.pushes: dict[int, Response] = {}  # push ID -> pushed response
        self.handshake: quic_events.HandshakeCompleted | None = None
        self.terminated: quic_events.ConnectionTerminated | None = None
        self.closed = asyncio.get_running_loop().create_future()

    # --- what aioquic saw ------------------------------------------------------------

    @property
    def quic(self) -> QuicConnection:
        return self._quic

    @property
    def version(self) -> int | None:
        return self._quic._version

    @property
    def retry_count(self) -> int:
        return int(self._quic._retry_count)

    @property
    def session_resumed(self) -> bool:
        return bool(self._quic.tls.session_resumed)

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return cast(CipherSuite | None, self._quic.tls.key_schedule.cipher_suite)

    # --- events ----------------------------------------------------------------------

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, quic_events.ConnectionTerminated):
            self.terminated = event
            if not self.closed.done():
                self.closed.set_result(event)
            for response in self.responses.values():
                response._finish()
        elif isinstance(event, quic_events.StreamReset):
            response = self.responses.get(event.stream_id)
            if response is not None:
                response.reset_code = event.error_code
                response._finish()
        elif isinstance(event, quic_events.StreamDataReceived) and event.stream_id % 4 == 3:
            self._watch_control_stream(event.stream_id, event.data)
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _watch_control_stream(self, stream_id: int, data: bytes) -> None:
        """aioquic's H3Connection skips GOAWAY frames unseen: read the server's control
        stream (a unidirectional stream of type 0) alongside it to record them."""
        received = self._uni.setdefault(stream_id, bytearray())
        received += data
        buf = Buffer(data=bytes(received))
        try:
            if buf.pull_uint_var() != 0:
                return  # a QPACK or push stream
            buf.seek(max(buf.tell(), self._uni_parsed.get(stream_id, 0)))
            while not buf.eof():
                frame_type = buf.pull_uint_var()
                payload = buf.pull_bytes(buf.pull_uint_var())
                self._uni_parsed[stream_id] = buf.tell()
                if frame_type == FrameType.GOAWAY:
                    self.goaways.append(Buffer(data=payload).pull_uint_var())
        except BufferReadError:
            pass  # the rest of the frame is still to come

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, PushPromiseReceived):
            self.promises[event.push_id] = event.headers
            return
        push_id = getattr(event, "push_id", None)
        if push_id is not None:
            response = self.pushes.get(push_id)
            if response is None:
                response = self.pushes[push_id] = Response(event.stream_id)  # type: ignore[attr-defined]
        else:
            response = self.responses.get(getattr(event, "stream_id", -1))
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status", b"200")
            if status.startswith(b"1"):
                response.informational.append(event.headers)
            elif not response.headers:
                response.headers = event.headers
            else:
                response.trailers = event.headers
        elif isinstance(event, DataReceived):
            if event.data:
                self.order.append((response.stream_id, len(event.data)))
                if response.sink is not None:
                    response.sink(event.data)
                else:
                    response.chunks.append(event.data)
                response.received += len(event.data)
        if getattr(event, "stream_ended", False):
            response.ended = True
            response._finish()

    # --- requests --------------------------------------------------------------------

    def start(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        end: bool = True,
        authority: str = "localhost",
    ) -> Response:
        """Send a request; `end=False` leaves the request body open (`send`)."""
        stream_id = self._quic.get_next_available_stream_id()
        response = self.responses[stream_id] = Response(stream_id)
        head = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *headers,
        ]
        self.h3.send_headers(stream_id, head, end_stream=end and body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=end)
        self.transmit()
        return response

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.h3.send_data(stream_id, data, end_stream=end)
        self.transmit()

    def reset(self, stream_id: int, error_code: int = 0x10C) -> None:
        """Cancel a request: RESET_STREAM and STOP_SENDING (H3_REQUEST_CANCELLED)."""
        self._quic.reset_stream(stream_id, error_code)
        self._quic.stop_stream(stream_id, error_code)
        self.transmit()

    async def request(self, path: str, timeout: float = 30, **kwargs: Any) -> Response:
        return await asyncio.wait_for(self.start(path, **kwargs).done, timeout)

    def priority_update(self, stream_id: int, value: bytes) -> None:
        """RFC 9218 PRIORITY_UPDATE for a request stream, on our control stream."""
        payload = encode_uint_var(stream_id) + value
        control = self.h3._local_control_stream_id
        assert control is not None
        self._quic.send_stream_data(control, encode_frame(0xF0700, payload))
        self.transmit()

    def hold_credit(self, holding: bool) -> None:
        """Only for `slow_reader=True`: stop (or resume) giving the server receive credit."""
        cast(CreditHoldingQuicConnection, self._quic).holding = holding
        if not holding:
            self.transmit()


def client_configuration(
    ca_cert: str | None = None,
    *,
    versions: list[int] | None = None,
    cipher_suites: list[CipherSuite] | None = None,
    session_ticket: SessionTicket | None = None,
    max_stream_data: int | None = None,
    max_data: int | None = None,
) -> QuicConfiguration:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    if ca_cert is not None:
        configuration.load_verify_locations(ca_cert)
    else:
        configuration.verify_mode = ssl.CERT_NONE
    if versions is not None:
        configuration.supported_versions = versions
    if cipher_suites is not None:
        configuration.cipher_suites = cipher_suites
    if session_ticket is not None:
        configuration.session_ticket = session_ticket
    if max_stream_data is not None:
        configuration.max_stream_data = max_stream_data
    if max_data is not None:
        configuration.max_data = max_data
    return configuration


@asynccontextmanager
async def h3_connect(
    port: int,
    ca_cert: str | None = None,
    *,
    configuration: QuicConfiguration | None = None,
    session_ticket_handler: Any = None,
    slow_reader: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 10,
    protocol: type[H3Client] = H3Client,
) -> AsyncIterator[H3Client]:
    """An HTTP/3 connection to `host:port`, closed (CONNECTION_CLOSE) on exit."""
    if configuration is None:
        configuration = client_configuration(ca_cert)
    if slow_reader:
        import aioquic.asyncio.client as client_module

        # `connect` builds a plain QuicConnection; swap the class for this one call.
        original = client_module.QuicConnection
        client_module.QuicConnection = CreditHoldingQuicConnection  # type: ignore[misc]
    try:
        manager = connect(
            host,
            port,
            configuration=configuration,
            create_protocol=protocol,
            session_ticket_handler=session_ticket_handler,
        )
        client = cast(H3Client, await asyncio.wait_for(manager.__aenter__(), timeout))
    finally:
        if slow_reader:
            client_module.QuicConnection = original  # type: ignore[misc]
    try:
        yield client
    finally:
        await manager.__aexit__(None, None, None)
