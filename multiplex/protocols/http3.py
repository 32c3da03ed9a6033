"""HTTP/3 over one QUIC connection, with aioquic's QuicConnection and H3Connection.

Like the HTTP/2 module, it turns library events into stream calls and `Wire` verbs
into library calls. QUIC output is batched per event-loop turn: every verb marks the
connection for transmission and one `datagrams_to_send()` runs at the end of the turn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ProtocolError, encode_frame
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.h3.exceptions import H3Error, NoAvailablePushIDError
from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress

from multiplex.errors import ClientDisconnected
from multiplex.protocols.fields import STATUS, request_from_fields, response_fields
from multiplex.protocols.h3control import PrioritySniffer, PriorityUpdate
from multiplex.protocols.limits import RateWindow
from multiplex.protocols.pending import PendingSends
from multiplex.protocols.qpack import BoundedH3Connection
from multiplex.scheduling import DEFAULT_PRIORITY, PendingSend, Priority, Scheduler, parse_priority
from multiplex.streams import WebTransportStream, open_stream
from multiplex.streams.seam import ConnectionInfo, Headers, Request, Stream
from multiplex.streams.webtransport import close_capsule

if TYPE_CHECKING:
    from multiplex.protocols.quic import CreditedQuicConnection, QuicEndpoint

logger = logging.getLogger("multiplex")

# RFC 9114 section 8.1 error codes.
H3_NO_ERROR = 0x100
H3_INTERNAL_ERROR = 0x102
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C
H3_ID_ERROR = 0x108
H3_EXCESSIVE_LOAD = 0x107
# WebTransport over HTTP/3 (draft-ietf-webtrans-http3) error codes.
WT_BUFFERED_STREAM_REJECTED = 0x3994BD84
WT_SESSION_GONE = 0x170D7B68
# Short header, connection ID, packet number, AEAD tag, DATAGRAM frame type and length,
# quarter stream ID: what a datagram's packet spends besides the payload (generous).
DATAGRAM_OVERHEAD = 64
# An incremental response hands this much to QUIC per turn before the next one's turn.
INCREMENTAL_CHUNK = 16 * 1024
H3_GOAWAY_FRAME = 0x7

# What aioquic raises when a stream can no longer take a frame (reset, finished).
SEND_ERRORS = (H3Error, ProtocolError, AssertionError, ValueError)


class H3Protocol(PendingSends):
    def __init__(
        self, endpoint: QuicEndpoint, quic: CreditedQuicConnection, addr: NetworkAddress
    ) -> None:
        self.endpoint = endpoint
        self.server = endpoint.server
        self.config = self.server.config
        self.quic = quic
        self.h3 = BoundedH3Connection(
            quic,
            enable_webtransport=self.config.webtransport,
            max_table_capacity=self.config.quic_qpack_max_table_capacity,
            blocked_streams=self.config.quic_qpack_blocked_streams,
            max_field_section_size=self.config.quic_max_field_section_size,
            client=addr,
        )
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
        # The send path: response data that could not go to QUIC at once waits here,
        # ordered by the scheduler (RFC 9218); `_blocked` streams wait for their own
        # flow-control credit or for acknowledgements (quic_send_buffer).
        self._sched = Scheduler()
        self._pending: dict[int, PendingSend] = {}
        self._blocked: set[int] = set()
        self._prioritize = self.config.priorities
        self._early_priority: dict[int, Priority] = {}
        self._sniffer = PrioritySniffer()
        self._push_streams: dict[int, int] = {}  # push ID -> its stream
        self._last_handed = -1  # the stream the scheduler last gave data to QUIC for
        # WebTransport: sessions by CONNECT stream, and each WebTransport stream's session.
        self._wt_sessions: dict[int, WebTransportStream] = {}
        self._wt_streams: dict[int, int] = {}
        self._raw: set[int] = set()  # streams whose bytes go to QUIC unframed
        # Response heads held back for the body that usually follows in the same loop
        # turn, so both go to QUIC in one write (`send_head`); sent by the end of it.
        self._heads: dict[int, Headers] = {}
        self.datagrams_dropped = 0  # outgoing, when too many wait for the wire
        # Rapid Reset over QUIC: request streams the client resets, per window.
        self._resets = RateWindow(
            self.config.quic_max_resets_per_window, self.config.quic_rate_window
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_scheduled = False
        # Apps were started after this turn's transmit was scheduled: see `_turn_end`.
        self._apps_behind = False
        self._goaway_id: int | None = None
        self._close_when_drained = False
        self._highest_request_id = -4
        self.server.connections.add(self)
        # A client that starts a handshake and goes quiet holds state until this fires
        # (the idle timeout is meant for established connections and is longer).
        self._handshake_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.config.quic_handshake_timeout, self._handshake_timed_out
        )

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
        # Not at once: the loop runs due timers before the callbacks already waiting,
        # and under load the timer that comes due is the ACK delay (1 ms) of the
        # datagram whose requests have just started their apps. Sent now, the ACK would
        # leave alone and the responses in packets of their own after the apps ran
        # (live, gtlsclient: a quarter of the packets carried only an ACK or
        # MAX_STREAMS). At the end of the turn, they leave together.
        self._transmit_soon()

    def _process_events(self) -> None:
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is quic_events.StreamDataReceived and event.stream_id % 4 == 2:  # type: ignore[attr-defined]
                # The client's unidirectional streams: the control stream carries
                # PRIORITY_UPDATE, which aioquic drops, so we read it alongside.
                self._sniff(event)  # type: ignore[arg-type]
            if kind is quic_events.StreamDataReceived or kind is quic_events.StreamReset:
                # H3Connection closes the connection itself on an HTTP/3 protocol error.
                for h3_event in self.h3.handle_event(event):
                    h3_kind = type(h3_event)
                    if h3_kind is DataReceived:
                        self._on_data(h3_event)  # type: ignore[arg-type]
                    elif h3_kind is HeadersReceived:
                        self._on_headers(h3_event)  # type: ignore[arg-type]
                    elif h3_kind is WebTransportStreamDataReceived:
                        self._on_wt_stream(h3_event)  # type: ignore[arg-type]
                if kind is quic_events.StreamReset:
                    stream_id = event.stream_id  # type: ignore[attr-defined]
                    if stream_id % 4 == 0 and self._reset_counted():
                        return
                    if stream_id in self._wt_streams:
                        self._on_wt_reset(stream_id, event.error_code)  # type: ignore[attr-defined]
                    else:
                        self._disconnect_stream(stream_id)
            elif kind is quic_events.StopSendingReceived:
                # The client no longer wants this response: stop it and tell the app.
                stream_id = event.stream_id  # type: ignore[attr-defined]
                if stream_id % 4 == 0 and self._reset_counted():
                    return
                quic.discard_unsent(stream_id)
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
                if self._handshake_timer is not None:
                    self._handshake_timer.cancel()
                    self._handshake_timer = None
                self.endpoint.handshake_done(self)
                self.h3.handle_event(event)
            elif kind is quic_events.DatagramFrameReceived:
                for h3_event in self.h3.handle_event(event):
                    if type(h3_event) is DatagramReceived:
                        session = self._wt_sessions.get(h3_event.stream_id)
                        if session is not None:
                            session.feed_datagram(h3_event.data)
            else:
                self.h3.handle_event(event)
            event = quic.next_event()
        if self._sched or self._blocked:
            self._pump()

    def _on_headers(self, event: HeadersReceived) -> None:
        stream_id = event.stream_id
        # Built while the fields were checked, when they came the short road.
        built = self.h3.requests.pop(stream_id, None) if self.h3.requests else None
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
        limit = self.config.quic_max_field_section_size
        request = (
            built
            if built is not None
            else request_from_fields(event.headers, self.config.webtransport, limit)
        )
        if isinstance(request, int):
            if request == 431:
                # RFC 9114 section 4.2.2: the decoded header list is over our limit.
                logger.info(
                    "HTTP/3 stream %s from %s: header list over quic_max_field_section_size = %d",
                    stream_id,
                    self.info.client,
                    limit,
                )
            self._refuse(stream_id, request)
            return
        if request.webtransport and len(self._wt_sessions) >= self.config.webtransport_max_sessions:
            logger.info(
                "HTTP/3 connection from %s: over webtransport_max_sessions = %d",
                self.info.client,
                self.config.webtransport_max_sessions,
            )
            self._refuse(stream_id, 429)
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
        self._set_request_priority(stream_id, request)
        request.push = self.config.push and self.h3._max_push_id is not None
        stream = open_stream(self, stream_id, request, self.info, self.server)
        self.streams[stream_id] = stream
        self.unread[stream_id] = 0
        self.quic.hold(stream_id)  # its stream slot comes back when the app is done
        if isinstance(stream, WebTransportStream):
            self._wt_sessions[stream_id] = stream
        stream.start()
        if self._transmit_scheduled:
            self._apps_behind = True
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
        self._fail_pending(stream_id, "closed by the client")

    def _terminated(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.endpoint.connection_terminated(self)
        self.server.connections.discard(self)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._heads.clear()
        for stream in list(self.streams.values()):
            stream.feed_disconnect()
        for stream_id in list(self._pending):
            self._fail_pending(stream_id, "connection closed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Finished: out of the endpoint, no timer. aioquic's own reference cycles are
        # broken now, or the connection would wait for a cyclic collection.
        self.quic.release()

    # --- output ------------------------------------------------------------------------

    def transmit(self) -> None:
        self._transmit_scheduled = False
        if self._heads:
            for stream_id in list(self._heads):
                self._send_held_head(stream_id)
        if self._close_when_drained and self._drained():
            self._close_when_drained = False
            self.quic.close(error_code=H3_NO_ERROR)
        endpoint = self.endpoint
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            endpoint.sendto(data, addr)
        if self._sched or self._blocked:
            unsent = self.quic.unsent
            self._pump()
            if self.quic.unsent > unsent:
                self._transmit_soon()  # what the scheduler just handed over
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
            self.loop.call_soon(self._turn_end)

    def _turn_end(self) -> None:
        """The turn's output goes out after the first step of every app started in it.
        When several datagrams arrive in one turn, the first schedules this before the
        requests of the next have started their apps: run now, it would send this
        turn's ACKs in a packet of their own, and the responses those apps write at
        once in a second one (and pay a second visit of every stream). So it waits
        one callback more, behind those apps' first steps."""
        if self._apps_behind:
            self._apps_behind = False
            self.loop.call_soon(self._turn_end)
            return
        self.transmit()

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

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        if self.closed or stream_id not in self.streams:
            return
        self.h3.send_headers(stream_id, [(b":status", STATUS[status]), *headers])
        self._transmit_soon()

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        if self.closed or stream_id not in self.streams:
            return
        out = response_fields(status, headers)
        if not end:
            # A body follows, most often at once (the stream layer calls send_body
            # next): held for it, and sent alone at the latest when this turn's output
            # goes out, or before anything else on the stream.
            self._heads[stream_id] = out
            self._transmit_soon()
            return
        try:
            self.h3.send_headers(stream_id, out, end_stream=end)
        except SEND_ERRORS as exc:
            logger.debug("HTTP/3 stream %s: cannot send head: %s", stream_id, exc)
            return
        self._transmit_soon()

    def _send_held_head(self, stream_id: int) -> None:
        out = self._heads.pop(stream_id, None)
        if out is None:
            return
        try:
            self.h3.send_headers(stream_id, out)
        except SEND_ERRORS as exc:
            logger.debug("HTTP/3 stream %s: cannot send head: %s", stream_id, exc)

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.closed or stream_id not in self.streams:
            raise ClientDisconnected(f"stream {stream_id} closed")
        await self._send(stream_id, data, end)

    eager_body = True  # an EagerBodyWire

    def try_send_body(self, stream_id: int, data: bytes, end: bool) -> bool:
        """`send_body` without its coroutines, for a piece QUIC can take whole now with
        nobody queued before it; False (nothing done) otherwise. What `_hand_over`
        does for a piece that fits, without asking for the room twice."""
        if self._sched or self.closed or stream_id not in self.streams or stream_id in self._raw:
            return False
        room = self._room(stream_id)
        if room is None or room < len(data):
            return False
        head = self._heads.pop(stream_id, None) if self._heads else None
        try:
            if head is not None:
                self.h3.send_response(stream_id, head, data, end)
            else:
                self.h3.send_data(stream_id, data, end_stream=end)
        except SEND_ERRORS as exc:
            raise ClientDisconnected(f"stream {stream_id}: {exc}") from None
        self._transmit_soon()
        return True

    async def _send(self, stream_id: int, data: bytes, end: bool) -> None:
        if not self._sched:
            # Nobody else is waiting to send: no order to keep, straight to QUIC.
            left = self._hand_over(stream_id, data, end, len(data))
            if left is None:
                return
            data = left
        await self._wait_turn(stream_id, data, end)

    def _room(self, stream_id: int) -> int | None:
        """How much of this stream's data QUIC may take now (<= 0: none): bounded by
        the connection's send-ahead and credit, the stream's credit and its
        unacknowledged bytes. None when the stream is gone."""
        quic = self.quic
        stream = quic._streams.get(stream_id)
        if stream is None:
            return None
        sender = stream.sender
        config = self.config
        queued = quic.queued
        # quic.unsent and quic.send_credit, written out: this runs for every response.
        unsent = queued - quic._remote_max_data_used
        return min(
            config.quic_send_ahead - (unsent if unsent > 0 else 0),
            quic._remote_max_data - queued,
            stream.max_stream_data_remote - sender._buffer_stop,
            config.quic_send_buffer - (sender._buffer_stop - sender._buffer_start),
        )

    def _hand_over(self, stream_id: int, data: bytes, end: bool, most: int) -> bytes | None:
        """Give QUIC what fits of `data` (at most `most` bytes); what is left, or None
        once all of it (and the end of stream) is handed over."""
        room = self._room(stream_id)
        if room is None:
            self._heads.pop(stream_id, None)
            raise ClientDisconnected(f"stream {stream_id} closed")
        size = min(room, most, len(data))
        if size <= 0 and data:
            if stream_id in self._heads:
                self._send_held_head(stream_id)  # the head needs no room: it goes now
                self._transmit_soon()
            return data
        head = self._heads.pop(stream_id, None) if self._heads else None
        if size == len(data):
            chunk, rest = data, b""
        else:
            chunk, rest = data[:size], data[size:]
        try:
            if stream_id in self._raw:
                self.quic.send_stream_data(stream_id, chunk, end and not rest)
            elif head is not None:
                self.h3.send_response(stream_id, head, chunk, end and not rest)
            else:
                self.h3.send_data(stream_id, chunk, end_stream=end and not rest)
        except SEND_ERRORS as exc:
            raise ClientDisconnected(f"stream {stream_id}: {exc}") from None
        self._transmit_soon()
        return rest or None

    def _pump(self) -> None:
        """Hand waiting response data to QUIC in priority order, as far as the
        send-ahead bound and flow control allow."""
        sched = self._sched
        if self._blocked:
            # Credit or acknowledgements may have come: everyone gets another look.
            blocked, self._blocked = self._blocked, set()
            for blocked_id in blocked:
                sched.ready(blocked_id)
        now = self.loop.time()
        while sched and not self.closed:
            if self.quic.unsent >= self.config.quic_send_ahead or self.quic.send_credit <= 0:
                return  # transmit() brings us back once packets go out or credit comes
            stream_id = sched.peek()
            if stream_id is None:
                return
            if stream_id != self._last_handed and self._unsent_of(self._last_handed):
                # QUIC interleaves the streams it holds data for: the next stream's
                # turn starts once the last one's bytes are on the wire.
                return
            sched.next()
            pending = self._pending.get(stream_id)
            if pending is None:
                continue
            self._last_handed = stream_id
            incremental = sched.priority(stream_id)[1]
            most = INCREMENTAL_CHUNK if incremental else len(pending.data)
            try:
                # HTTP/3 queues bytes only (views of a body are HTTP/2's framing).
                data = cast(bytes, pending.data)
                rest = self._hand_over(stream_id, data, pending.end, most)
            except ClientDisconnected as exc:
                self._fail_pending(stream_id, str(exc))
                continue
            if rest is None:
                del self._pending[stream_id]
                if not pending.waiter.done():
                    pending.waiter.set_result(None)
            elif rest is pending.data:
                self._blocked.add(stream_id)  # no room for this stream in particular
            else:
                pending.data = rest
                pending.progress = now
                sched.ready(stream_id)

    def _unsent_of(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        if stream is None or stream.sender.reset_pending:
            return 0
        return int(stream.sender._buffer_stop - stream.sender.highest_offset)

    def _check_stall(self, stream_id: int, pending: PendingSend) -> None:
        """Reset a stream that could send nothing for `send_stall_timeout`: the client
        gives it no credit, or acknowledges nothing."""
        pending.timer = None
        if self.closed or self._pending.get(stream_id) is not pending:
            return
        stall = self.config.send_stall_timeout
        since = self.loop.time() - pending.progress
        if since < stall:
            pending.timer = self.loop.call_later(
                stall - since, self._check_stall, stream_id, pending
            )
            return
        logger.info(
            "HTTP/3 stream %s from %s: nothing sent for send_stall_timeout = %s s; reset",
            stream_id,
            self.info.client,
            stall,
        )
        self.reset(stream_id)
        self._disconnect_stream(stream_id)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self.closed or stream_id not in self.streams:
            return
        self._send_held_head(stream_id)  # a response with trailers and no body
        try:
            self.h3.send_headers(stream_id, headers, end_stream=True)
        except SEND_ERRORS as exc:
            logger.debug("HTTP/3 stream %s: cannot send trailers: %s", stream_id, exc)
            return
        self._transmit_soon()

    def consumed(self, stream_id: int, n: int) -> None:
        if n and stream_id in self.unread and self.unread[stream_id] >= n:
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

    def prioritize(self, stream_id: int, urgency: int, incremental: bool) -> None:
        if self._prioritize:
            self._sched.set_priority(stream_id, (urgency, incremental))

    def push(self, stream_id: int, authority: bytes, path: bytes, headers: Headers) -> None:
        """PUSH_PROMISE on the request stream, then the promised GET runs through the
        app on a push stream (RFC 9114 section 4.6), within the client's MAX_PUSH_ID."""
        if self.closed or self._goaway_id is not None or stream_id not in self.streams:
            return
        self._send_held_head(stream_id)  # the promise goes where it did: after the head
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority),
            (b":path", path),
            *headers,
        ]
        try:
            push_stream_id = self.h3.send_push_promise(stream_id, fields)
        except (*SEND_ERRORS, H3Error, NoAvailablePushIDError) as exc:
            logger.debug("HTTP/3 push of %r on stream %s not sent: %s", path, stream_id, exc)
            return
        self._push_streams[self.h3._next_push_id - 1] = push_stream_id
        request = Request("GET", path, [(b"host", authority), *headers])
        request.priority = DEFAULT_PRIORITY
        stream = open_stream(self, push_stream_id, request, self.info, self.server)
        self.streams[push_stream_id] = stream
        stream.start()
        stream.feed_end()
        self._transmit_soon()

    def _sniff(self, event: quic_events.StreamDataReceived) -> None:
        for update in self._sniffer.feed(event.stream_id, event.data):
            self._priority_update(update)

    def _priority_update(self, update: PriorityUpdate) -> None:
        """RFC 9218 section 7.2: a client's PRIORITY_UPDATE for a request or push."""
        element = update.element_id
        if element < 0 or (not update.push and element % 4 != 0):
            self._close_with(H3_ID_ERROR, "PRIORITY_UPDATE for no request stream")
            return
        if not self._prioritize:
            return
        stream_id = self._push_streams.get(element) if update.push else element
        if stream_id is not None and stream_id in self.streams:
            base = self._sched.priority(stream_id)
            self._sched.set_priority(stream_id, parse_priority(update.value, base))
        elif not update.push and element > self._highest_request_id:
            early = self._early_priority  # for a stream not open yet; bounded
            if len(early) >= self.config.quic_max_streams:
                early.pop(next(iter(early)))
            early[element] = parse_priority(update.value)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.closed or self.quic.handshake_complete:
            return
        logger.info(
            "QUIC handshake from %s not complete within quic_handshake_timeout = %s s: dropped",
            self.info.client,
            self.config.quic_handshake_timeout,
        )
        self._terminated()  # nothing to tell a peer that never finished the handshake

    def _reset_counted(self) -> bool:
        """Count a stream the client reset; True once that closed the connection."""
        if not self._resets.hit(self.loop.time()):
            return False
        logger.warning(
            "HTTP/3 connection from %s went over quic_max_resets_per_window = %d: closing"
            " with H3_EXCESSIVE_LOAD",
            self.info.client,
            self.config.quic_max_resets_per_window,
        )
        self.quic.close(error_code=H3_EXCESSIVE_LOAD, reason_phrase="too many stream resets")
        self._transmit_soon()
        return True

    def _close_with(self, code: int, reason: str) -> None:
        logger.info("HTTP/3 connection from %s: %s", self.info.client, reason)
        self.quic.close(error_code=code, reason_phrase=reason)
        self._transmit_soon()

    def reset(self, stream_id: int) -> None:
        self._heads.pop(stream_id, None)  # nothing more goes out on it
        if self.closed:
            return
        try:
            self.quic.reset_stream(stream_id, H3_INTERNAL_ERROR)
        except (AssertionError, ValueError):
            return
        self._transmit_soon()

    def stream_complete(self, stream_id: int) -> None:
        if self._wt_sessions.pop(stream_id, None) is not None:
            self.wt_end_session(stream_id)
        if self._heads and not self.closed:
            self._send_held_head(stream_id)
        self.streams.pop(stream_id, None)
        self.quic.forget(stream_id, self.unread.pop(stream_id, 0))
        self._drop_pending(stream_id)
        self._sched.forget(stream_id)
        if self.closed:
            return
        quic_stream = self.quic._streams.get(stream_id)
        if quic_stream is not None and stream_id % 4 == 0 and not quic_stream.receiver.is_finished:
            # Complete response, request still coming: ask the client to stop sending
            # (RFC 9114 section 4.1.1).
            try:
                self.quic.stop_stream(stream_id, H3_NO_ERROR)
            except (AssertionError, ValueError):
                pass
        if not self.streams and self._goaway_id is not None:
            self._close_when_drained = True  # once the last responses are delivered
        self._transmit_soon()

    # --- WebTransport ------------------------------------------------------------------

    def _on_wt_stream(self, event: WebTransportStreamDataReceived) -> None:
        stream_id = event.stream_id
        session_id = self._wt_streams.get(stream_id)
        if session_id is None:
            session = self._wt_sessions.get(event.session_id)
            if session is None or session.disconnected:
                self._refuse_wt_stream(stream_id, "for no open session")
                return
            if session.open_streams >= self.config.webtransport_max_streams:
                self._refuse_wt_stream(stream_id, "over webtransport_max_streams")
                return
            session_id = self._wt_streams[stream_id] = event.session_id
            self.unread[stream_id] = 0
            if stream_id % 4 == 2:
                self.quic.credited_uni.add(stream_id)
        session = self._wt_sessions.get(session_id)
        if session is None:
            return
        data = event.data
        if data:
            self.unread[stream_id] += len(data)
            self.quic.unread += len(data)
        session.feed_stream(stream_id, data, event.stream_ended)
        if event.stream_ended and stream_id % 4 == 2:
            self._forget_wt_stream(stream_id)  # a client's unidirectional stream is done

    def _refuse_wt_stream(self, stream_id: int, why: str) -> None:
        logger.info(
            "HTTP/3 WebTransport stream %s from %s refused: %s", stream_id, self.info.client, why
        )
        try:
            self.quic.stop_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
            if stream_id % 4 == 0:
                self.quic.reset_stream(stream_id, WT_BUFFERED_STREAM_REJECTED)
        except (AssertionError, ValueError):
            pass
        self._transmit_soon()

    def _on_wt_reset(self, stream_id: int, code: int) -> None:
        session = self._wt_sessions.get(self._wt_streams.get(stream_id, -1))
        self._fail_pending(stream_id, "reset by the client")
        if session is not None:
            session.feed_stream_reset(stream_id, code)
        if stream_id % 4 == 2:
            self._forget_wt_stream(stream_id)

    def _forget_wt_stream(self, stream_id: int) -> None:
        """Done with a WebTransport stream: what the app left unread frees its credit."""
        self._wt_streams.pop(stream_id, None)
        self._raw.discard(stream_id)
        self._drop_pending(stream_id)
        self._sched.forget(stream_id)
        self.quic.forget(stream_id, self.unread.pop(stream_id, 0))

    def accept_webtransport(self, session_id: int, headers: Headers) -> None:
        if self.closed or session_id not in self.streams:
            raise ClientDisconnected(f"stream {session_id} closed")
        out = response_fields(200, [(b"sec-webtransport-http3-draft", b"draft02"), *headers])
        try:
            self.h3.send_headers(session_id, out)
        except SEND_ERRORS as exc:
            raise ClientDisconnected(f"stream {session_id}: {exc}") from None
        self._transmit_soon()

    def wt_open(self, session_id: int, unidirectional: bool) -> int:
        if self.closed:
            raise ClientDisconnected("connection closed")
        stream_id = self.h3.create_webtransport_stream(session_id, is_unidirectional=unidirectional)
        self._wt_streams[stream_id] = session_id
        self._raw.add(stream_id)
        if not unidirectional:
            self.unread[stream_id] = 0  # the client may answer on it
        self._transmit_soon()
        return stream_id

    def wt_stream_of(self, stream_id: int, session_id: int) -> bool:
        return self._wt_streams.get(stream_id) == session_id and stream_id % 4 != 2

    async def wt_send(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.closed or stream_id not in self._wt_streams:
            raise ClientDisconnected(f"WebTransport stream {stream_id} closed")
        self._raw.add(stream_id)  # a client's bidirectional stream, answered unframed
        await self._send(stream_id, data, end)

    def wt_send_datagram(self, session_id: int, data: bytes) -> None:
        quic = self.quic
        remote = quic._remote_max_datagram_frame_size
        if remote is None:
            raise ValueError("webtransport.datagram.send: the client takes no datagrams")
        # A DATAGRAM frame travels in one packet: the packet's room less its header,
        # the AEAD tag, the frame header and the session's quarter stream ID.
        limit = min(remote, quic._max_datagram_size) - DATAGRAM_OVERHEAD
        if len(data) > limit:
            raise ValueError(
                f"webtransport.datagram.send: {len(data)} bytes do not fit in one QUIC packet"
                f" (at most {limit} on this connection)"
            )
        if len(quic._datagrams_pending) >= self.config.webtransport_max_datagrams:
            self.datagrams_dropped += 1  # unreliable by definition: dropped, not queued
            return
        self.h3.send_datagram(session_id, data)
        self._transmit_soon()

    def wt_reset(self, stream_id: int, code: int) -> None:
        try:
            if stream_id % 4 != 2:
                self.quic.reset_stream(stream_id, code)
            if stream_id % 4 in (0, 2):
                self.quic.stop_stream(stream_id, code)
        except (AssertionError, ValueError):
            pass
        self._fail_pending(stream_id, "reset")
        self._forget_wt_stream(stream_id)
        self._transmit_soon()

    def wt_close(self, session_id: int, code: int, reason: str) -> None:
        if self.closed or session_id not in self.streams:
            return
        try:
            self.h3.send_data(session_id, close_capsule(code, reason), end_stream=True)
        except SEND_ERRORS:
            pass
        self._transmit_soon()

    def wt_end_session(self, session_id: int) -> None:
        for stream_id, owner in list(self._wt_streams.items()):
            if owner == session_id:
                self.wt_reset(stream_id, WT_SESSION_GONE)

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
