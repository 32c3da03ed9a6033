"""HTTP/3 over one QUIC connection, with aioquic's QuicConnection and H3Connection.

Like the HTTP/2 module, it turns library events into stream calls and `Wire` verbs
into library calls. QUIC output is batched per event-loop turn: every verb marks the
connection for transmission and one `datagrams_to_send()` runs at the end of the turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3Connection, ProtocolError, encode_frame
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.h3.exceptions import H3Error
from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress

from multiplex.errors import ClientDisconnected
from multiplex.protocols.fields import STATUS, request_from_fields, response_fields
from multiplex.streams import open_stream
from multiplex.streams.seam import ConnectionInfo, Headers, Stream

if TYPE_CHECKING:
    from multiplex.protocols.quic import CreditedQuicConnection, QuicEndpoint

logger = logging.getLogger("multiplex")

# RFC 9114 section 8.1 error codes.
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C
H3_GOAWAY_FRAME = 0x7

# What aioquic raises when a stream can no longer take a frame (reset, finished).
SEND_ERRORS = (H3Error, ProtocolError, AssertionError, ValueError)


class H3Protocol:
    def __init__(
        self, endpoint: QuicEndpoint, quic: CreditedQuicConnection, addr: NetworkAddress
    ) -> None:
        self.endpoint = endpoint
        self.server = endpoint.server
        self.config = self.server.config
        self.quic = quic
        self.h3 = H3Connection(quic)
        self.loop = endpoint.loop
        self.info = ConnectionInfo(
            "3",
            "https",
            (str(addr[0]), int(addr[1])),
            endpoint.address,
            {"tls": _tls_extension(endpoint)},
        )
        self.streams: dict[int, Stream] = {}
        self.unread: dict[int, int] = {}  # request body bytes fed to a stream, not yet read
        self.closed = False
        self._send_waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        self._goaway_id: int | None = None
        self._close_when_drained = False
        self._highest_request_id = -4
        self.server.connections.add(self)

    # --- input -------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process_events()
        # Datagrams read in the same loop turn share one round of output (ACKs coalesce).
        self._transmit_soon()

    def _handle_timer(self) -> None:
        now = max(self._timer_at or 0.0, self.loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is quic_events.StreamDataReceived or kind is quic_events.StreamReset:
                # H3Connection closes the connection itself on an HTTP/3 protocol error.
                for h3_event in self.h3.handle_event(event):
                    if type(h3_event) is DataReceived:
                        self._on_data(h3_event)
                    elif type(h3_event) is HeadersReceived:
                        self._on_headers(h3_event)
                if kind is quic_events.StreamReset:
                    self._disconnect_stream(event.stream_id)  # type: ignore[attr-defined]
            elif kind is quic_events.StopSendingReceived:
                # The client no longer wants this response: stop it and tell the app.
                stream_id = event.stream_id  # type: ignore[attr-defined]
                if stream_id in self.streams:
                    quic.reset_stream(stream_id, H3_REQUEST_CANCELLED)
                self._disconnect_stream(stream_id)
            elif kind is quic_events.ConnectionIdIssued:
                self.endpoint.connection_id_issued(event.connection_id, self)  # type: ignore[attr-defined]
            elif kind is quic_events.ConnectionIdRetired:
                self.endpoint.connection_id_retired(event.connection_id, self)  # type: ignore[attr-defined]
            elif kind is quic_events.ConnectionTerminated:
                self._terminated()
            elif kind is quic_events.HandshakeCompleted:
                self.endpoint.handshake_done(self)
                self.h3.handle_event(event)
            else:
                self.h3.handle_event(event)
            event = quic.next_event()
        self._wake_senders()

    def _on_headers(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        if stream is not None:
            # Trailers: ASGI has none for requests; only their end of stream matters.
            if event.stream_ended:
                stream.feed_end()
            return
        if self._goaway_id is not None and stream_id >= self._goaway_id:
            self.quic.reset_stream(stream_id, H3_REQUEST_REJECTED)
            self.quic.stop_stream(stream_id, H3_REQUEST_REJECTED)
            return
        if stream_id > self._highest_request_id:
            self._highest_request_id = stream_id
        early = not self.quic.handshake_complete
        request = request_from_fields(event.headers)
        if isinstance(request, int):
            self._refuse(stream_id, request)
            return
        if early:
            # RFC 8470: this request may be a replay of 0-RTT data.
            if request.method not in self.config.quic_0rtt_methods:
                self._too_early(stream_id)
                return
            request.headers.append((b"early-data", b"1"))
        tls_info = self.info.extensions["tls"]
        if tls_info["cipher_suite"] is None:
            # Known once the server has chosen it (in time for 0-RTT requests too).
            key_schedule = getattr(self.quic.tls, "key_schedule", None)
            if key_schedule is not None and key_schedule.cipher_suite is not None:
                tls_info["cipher_suite"] = int(key_schedule.cipher_suite)
        stream = open_stream(self, stream_id, request, self.info, self.server)
        self.streams[stream_id] = stream
        self.unread[stream_id] = 0
        stream.start()
        if event.stream_ended:
            stream.feed_end()

    def _too_early(self, stream_id: int) -> None:
        """425 Too Early (RFC 8470 section 5.2): the client retries after the handshake,
        when a replay is no longer possible."""
        self._refuse(stream_id, 425, b"Too Early: retry this request after the handshake\n")

    def _refuse(self, stream_id: int, status: int, body: bytes = b"") -> None:
        """A complete response that never reaches the app."""
        logger.info("HTTP/3 stream %s from %s refused: %s", stream_id, self.info.client, status)
        headers = [(b":status", STATUS[status]), (b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        try:
            self.h3.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.h3.send_data(stream_id, body, end_stream=True)
            self.quic.stop_stream(stream_id, H3_NO_ERROR)
        except SEND_ERRORS:
            pass
        self._transmit_soon()

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        stream = self.streams.get(stream_id)
        data = event.data
        if stream is None:
            return
        if data:
            self.unread[stream_id] += len(data)
            self.quic.unread += len(data)
            stream.feed_body(data)
        if event.stream_ended:
            stream.feed_end()

    def _disconnect_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.feed_disconnect()
        waiter = self._send_waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _terminated(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.connection_terminated(self)
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.feed_disconnect()
        self._wake_senders(everyone=True)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- output ------------------------------------------------------------------------

    def transmit(self) -> None:
        self._transmit_scheduled = False
        if self._close_when_drained and self._drained():
            self._close_when_drained = False
            self.quic.close(error_code=H3_NO_ERROR)
        endpoint = self.endpoint
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            endpoint.sendto(data, addr)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self.loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _transmit_soon(self) -> None:
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self.loop.call_soon(self.transmit)

    def _drained(self) -> bool:
        """Every response has been delivered: all data and FINs (or resets) acknowledged.
        aioquic's `close()` drops whatever stream data is still unsent or unacknowledged,
        so a graceful close waits for this."""
        for stream_id, stream in self.quic._streams.items():
            if stream_id % 4 == 0 and not stream.sender.is_finished:
                return False
        return True

    def _buffered(self, stream_id: int) -> int | None:
        """Response bytes of the stream not yet acknowledged (None: stream gone)."""
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return None
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def _wake_senders(self, everyone: bool = False) -> None:
        if not self._send_waiters:
            return
        limit = self.config.quic_send_buffer
        for stream_id, waiter in list(self._send_waiters.items()):
            buffered = self._buffered(stream_id)
            if everyone or buffered is None or buffered < limit:
                del self._send_waiters[stream_id]
                if not waiter.done():
                    waiter.set_result(None)

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        if self.closed or stream_id not in self.streams:
            return
        self.h3.send_headers(stream_id, [(b":status", STATUS[status]), *headers])
        self._transmit_soon()

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        if self.closed or stream_id not in self.streams:
            return
        out = response_fields(status, headers)
        try:
            self.h3.send_headers(stream_id, out, end_stream=end)
        except SEND_ERRORS as exc:
            logger.debug("HTTP/3 stream %s: cannot send head: %s", stream_id, exc)
            return
        self._transmit_soon()

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        limit = self.config.quic_send_buffer
        view = memoryview(data)
        while True:
            if self.closed or stream_id not in self.streams:
                raise ClientDisconnected(f"stream {stream_id} closed")
            buffered = self._buffered(stream_id)
            if buffered is None:
                raise ClientDisconnected(f"stream {stream_id} closed")
            room = limit - buffered
            if room <= 0 and view:
                waiter = self.loop.create_future()
                self._send_waiters[stream_id] = waiter
                await waiter
                continue
            chunk = view[:room] if view else view
            view = view[len(chunk) :]
            last = end and not view
            try:
                self.h3.send_data(stream_id, bytes(chunk), end_stream=last)
            except SEND_ERRORS as exc:
                raise ClientDisconnected(f"stream {stream_id}: {exc}") from None
            self._transmit_soon()
            if not view:
                return

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self.closed or stream_id not in self.streams:
            return
        try:
            self.h3.send_headers(stream_id, headers, end_stream=True)
        except SEND_ERRORS as exc:
            logger.debug("HTTP/3 stream %s: cannot send trailers: %s", stream_id, exc)
            return
        self._transmit_soon()

    def consumed(self, stream_id: int, n: int) -> None:
        if n and stream_id in self.unread:
            self.unread[stream_id] -= n
            self.quic.consume(stream_id, n)
            if not self.closed:
                self._transmit_soon()

    def accept_websocket(self, stream_id: int, headers: Headers) -> int:
        """RFC 9220: the extended CONNECT is answered 200; the stream's DATA frames then
        carry the WebSocket both ways."""
        if self.closed or stream_id not in self.streams:
            raise ClientDisconnected(f"stream {stream_id} closed")
        out = response_fields(200, headers)
        try:
            self.h3.send_headers(stream_id, out)
        except SEND_ERRORS as exc:
            raise ClientDisconnected(f"stream {stream_id}: {exc}") from None
        self._transmit_soon()
        return 200

    def reset(self, stream_id: int) -> None:
        if self.closed:
            return
        try:
            self.quic.reset_stream(stream_id, H3_INTERNAL_ERROR)
        except (AssertionError, ValueError):
            return
        self._transmit_soon()

    def stream_complete(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.quic.forget(stream_id, self.unread.pop(stream_id, 0))
        self._send_waiters.pop(stream_id, None)
        if self.closed:
            return
        quic_stream = self.quic._streams.get(stream_id)
        if quic_stream is not None and not quic_stream.receiver.is_finished:
            # Complete response, request still coming: ask the client to stop sending
            # (RFC 9114 section 4.1.1).
            try:
                self.quic.stop_stream(stream_id, H3_NO_ERROR)
            except (AssertionError, ValueError):
                pass
        if not self.streams and self._goaway_id is not None:
            self._close_when_drained = True  # once the last responses are delivered
        self._transmit_soon()

    # --- life cycle ----------------------------------------------------------------

    def shutdown(self) -> None:
        """GOAWAY (RFC 9114 section 5.2): requests up to the last one received go on."""
        if self.closed or self._goaway_id is not None:
            return
        self._goaway_id = self._highest_request_id + 4
        control = self.h3._local_control_stream_id
        if control is not None:
            # aioquic's H3Connection has no GOAWAY of its own.
            self.quic.send_stream_data(
                control, encode_frame(H3_GOAWAY_FRAME, encode_uint_var(self._goaway_id))
            )
        for stream in list(self.streams.values()):
            stream.going_away()  # WebSockets close (1001); responses just finish
        if not self.streams:
            self._close_when_drained = True
        self.transmit()

    def abort(self) -> None:
        if not self.closed:
            self.quic.close(error_code=H3_NO_ERROR, reason_phrase="server shutting down")
            self.transmit()
            self._terminated()


def _tls_extension(endpoint: QuicEndpoint) -> dict[str, Any]:
    """The asgiref `tls` extension for a QUIC connection: always TLS 1.3; the cipher
    suite is filled in once chosen. aioquic asks for no client certificate."""
    pem = getattr(endpoint, "_server_cert_pem", None)
    if pem is None:
        from cryptography.hazmat.primitives import serialization

        certificate = endpoint.configuration.certificate
        pem = (
            certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
            if certificate is not None
            else ""
        )
        endpoint._server_cert_pem = pem  # type: ignore[attr-defined]
    return {
        "server_cert": pem or None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": None,
    }
