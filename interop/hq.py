"""HTTP/0.9 over QUIC (ALPN `hq-interop`), the file transfer of most QUIC interop runner
test cases, beside multiplex's own HTTP/3 on one UDP endpoint.

Not part of the server: the interop endpoint installs `AlpnSwitch` as the endpoint's
protocol class. Every new connection starts with an `AlpnSwitch`; as soon as the
ClientHello has chosen an application protocol it hands the connection over, to
multiplex's `H3Protocol` for `h3` or to `HqProtocol` here for `hq-interop`, and steps
out of the endpoint's routing table.

`HqProtocol` reads `GET /path\\r\\n` on each client bidirectional stream and answers
with the file's bytes and a FIN. Bodies are read from disk only while the stream has
less than `quic_send_buffer` bytes unacknowledged, so a 10 MB file is never queued
whole in aioquic.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from aioquic.quic import events as quic_events
from aioquic.quic.connection import NetworkAddress

from interop.static_app import resolve

if TYPE_CHECKING:
    from multiplex.protocols.quic import CreditedQuicConnection, QuicEndpoint

logger = logging.getLogger("interop.hq")

HQ_ALPN = "hq-interop"
CHUNK = 64 * 1024
MAX_REQUEST = 4096  # "GET " + a path: anything longer is not a request we serve
# hq-interop has no error codes of its own; these are what the stream resets carry.
HQ_NO_ERROR = 0x0
HQ_REQUEST_ERROR = 0x1


class _Timers:
    """The QUIC timer and output of one connection (the part H3Protocol also has)."""

    endpoint: QuicEndpoint
    quic: CreditedQuicConnection
    loop: asyncio.AbstractEventLoop

    def _init_timers(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def _flush(self) -> None:
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.endpoint.sendto(data, addr)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self.loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        now = max(self._timer_at or 0.0, self.loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._after_timer()

    def _after_timer(self) -> None:
        raise NotImplementedError

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class AlpnSwitch(_Timers):
    """A connection until its ALPN is known; then `H3Protocol` or `HqProtocol`."""

    def __init__(
        self, endpoint: QuicEndpoint, quic: CreditedQuicConnection, addr: Any, *, www: Path
    ) -> None:
        self.endpoint = endpoint
        self.quic = quic
        self.loop = endpoint.loop
        self.addr = addr
        self.www = www
        self._init_timers()

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._decide()

    def _after_timer(self) -> None:
        self._decide()

    def _decide(self) -> None:
        tls = getattr(self.quic, "tls", None)  # set by the first Initial it could read
        alpn = tls.alpn_negotiated if tls is not None else None
        if alpn is None:
            # The ClientHello is incomplete (or the handshake failed): ACK, retransmit or
            # close as aioquic decides, and look again at the next datagram or timer.
            for event in _drain(self.quic):
                if isinstance(event, quic_events.ConnectionTerminated):
                    self._cancel_timer()
                    self.endpoint.connection_terminated(self)
                    return
                if isinstance(event, quic_events.ConnectionIdIssued):
                    self.endpoint.connection_id_issued(event.connection_id, self)
            self._flush()
            return
        self._cancel_timer()
        protocol: Any
        if alpn == HQ_ALPN:
            protocol = HqProtocol(self.endpoint, self.quic, self.addr, self.www)
        else:
            from multiplex.protocols.http3 import H3Protocol

            protocol = H3Protocol(self.endpoint, self.quic, self.addr)
        endpoint = self.endpoint
        connections: dict[bytes, Any] = endpoint.connections  # ours too, not only H3's
        for cid, known in list(connections.items()):
            if known is self:
                connections[cid] = protocol
        if self in endpoint.handshaking:
            endpoint.handshaking.discard(self)
            endpoint.handshaking.add(protocol)
        # The events of the first flight (ProtocolNegotiated, ConnectionIdIssued, early
        # stream data) are still queued in the connection: the new owner reads them.
        protocol._process_events()
        protocol.transmit()

    def shutdown(self) -> None:
        pass

    def abort(self) -> None:
        self.quic.close()
        self._flush()
        self._cancel_timer()


def _drain(quic: Any) -> list[quic_events.QuicEvent]:
    events = []
    event = quic.next_event()
    while event is not None:
        events.append(event)
        event = quic.next_event()
    return events


class _Transfer:
    __slots__ = ("file", "request")

    def __init__(self) -> None:
        self.request = bytearray()
        self.file: IO[bytes] | None = None


class HqProtocol(_Timers):
    """HTTP/0.9 file downloads over one QUIC connection."""

    def __init__(
        self, endpoint: QuicEndpoint, quic: CreditedQuicConnection, addr: Any, www: Path
    ) -> None:
        self.endpoint = endpoint
        self.server = endpoint.server
        self.quic = quic
        self.loop = endpoint.loop
        self.www = www.resolve()
        self.send_buffer = self.server.config.quic_send_buffer
        self.transfers: dict[int, _Transfer] = {}
        self.closed = False
        self._closing = False
        self._transmit_scheduled = False
        self._init_timers()
        self.server.connections.add(self)

    # --- input -------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process_events()
        self._transmit_soon()

    def _after_timer(self) -> None:
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        for event in _drain(self.quic):
            if isinstance(event, quic_events.StreamDataReceived):
                self._on_data(event)
            elif isinstance(event, (quic_events.StreamReset, quic_events.StopSendingReceived)):
                stop = isinstance(event, quic_events.StopSendingReceived)
                self._abandon(event.stream_id, reset=stop)
            elif isinstance(event, quic_events.HandshakeCompleted):
                self.endpoint.handshake_done(self)
            elif isinstance(event, quic_events.ConnectionIdIssued):
                self.endpoint.connection_id_issued(event.connection_id, self)
            elif isinstance(event, quic_events.ConnectionIdRetired):
                self.endpoint.connection_id_retired(event.connection_id, self)
            elif isinstance(event, quic_events.ConnectionTerminated):
                self._terminated()
                return
        self._pump()

    def _on_data(self, event: quic_events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id % 4 != 0:
            return  # hq-interop uses client bidirectional streams only
        transfer = self.transfers.get(stream_id)
        if transfer is None:
            transfer = self.transfers[stream_id] = _Transfer()
        elif transfer.file is not None:
            return  # the request was complete; nothing more is expected
        transfer.request += event.data
        if not (event.end_stream or b"\n" in transfer.request):
            if len(transfer.request) > MAX_REQUEST:
                self._refuse(stream_id, "request too long")
            return
        line = bytes(transfer.request).split(b"\n", 1)[0].rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 2 or parts[0] != b"GET":
            self._refuse(stream_id, f"not an HTTP/0.9 request: {line[:80]!r}")
            return
        path = parts[1].decode("latin-1").split("?", 1)[0]
        found = resolve(self.www, path)
        if found is None:
            self._refuse(stream_id, f"no file for {path!r}")
            return
        transfer.file = found.open("rb")
        transfer.request.clear()

    def _refuse(self, stream_id: int, why: str) -> None:
        logger.info("hq-interop stream %d: %s", stream_id, why)
        self._abandon(stream_id, reset=True)

    def _abandon(self, stream_id: int, reset: bool) -> None:
        transfer = self.transfers.pop(stream_id, None)
        if transfer is not None and transfer.file is not None:
            transfer.file.close()
        if reset and not self.closed:
            try:
                self.quic.reset_stream(stream_id, HQ_REQUEST_ERROR)
            except (AssertionError, ValueError):
                pass

    # --- output ------------------------------------------------------------------------

    def _buffered(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def _pump(self) -> None:
        """Read files into the streams whose unacknowledged data is below the bound."""
        if self.closed:
            return
        for stream_id, transfer in list(self.transfers.items()):
            file = transfer.file
            if file is None:
                continue
            while self._buffered(stream_id) < self.send_buffer:
                chunk = file.read(CHUNK)
                end = len(chunk) < CHUNK  # a file of whole chunks ends with b""
                self.quic.send_stream_data(stream_id, chunk, end_stream=end)
                if end:
                    file.close()
                    del self.transfers[stream_id]
                    break
        if self._closing and not self.transfers and self._drained():
            self._closing = False
            self.quic.close(error_code=HQ_NO_ERROR)

    def _drained(self) -> bool:
        for stream_id, stream in self.quic._streams.items():
            if stream_id % 4 == 0 and not stream.sender.is_finished:
                return False
        return True

    def transmit(self) -> None:
        self._transmit_scheduled = False
        if self.closed:
            return
        self._pump()
        self._flush()

    def _transmit_soon(self) -> None:
        if not self._transmit_scheduled:
            self._transmit_scheduled = True
            self.loop.call_soon(self.transmit)

    # --- life cycle ----------------------------------------------------------------

    def _terminated(self) -> None:
        if self.closed:
            return
        self.closed = True
        for transfer in self.transfers.values():
            if transfer.file is not None:
                transfer.file.close()
        self.transfers.clear()
        self.endpoint.connection_terminated(self)
        self.server.connections.discard(self)
        self._cancel_timer()

    def shutdown(self) -> None:
        """Finish the downloads under way, then close."""
        if not self.closed:
            self._closing = True
            self.transmit()

    def abort(self) -> None:
        if not self.closed:
            self.quic.close(error_code=HQ_NO_ERROR, reason_phrase="server shutting down")
            self._flush()
            self._terminated()
