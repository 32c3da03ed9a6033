"""The UDP endpoint for QUIC: routes datagrams to connections by connection ID.

Shaped after aioquic's own asyncio server (version negotiation, Retry, one
`QuicConnection` per client), with what a front-end server needs on top: our
connection subclass that gives receive credit only for what apps have read, a shared
session-ticket store for resumption, qlog and key logging from the config, and
connections that speak HTTP/3 through `H3Protocol`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any, cast

from aioquic import tls
from aioquic.buffer import Buffer, size_uint_var  # type: ignore[attr-defined]
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionAdapter
from aioquic.quic.crypto import NoCallback
from aioquic.quic.logger import QuicFileLogger
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.stream import QuicStream
from aioquic.tls import SessionTicket

from multiplex.config import Config
from multiplex.protocols.limits import RateWindow, over_connection_limit
from multiplex.protocols.quic_output import write_application
from multiplex.protocols.quic_stateless import (
    connection_refused,
    retry_token_handler,
    stateless_reset_key,
)
from multiplex.streams.seam import ServerState

logger = logging.getLogger("multiplex")

# Request streams are client-initiated bidirectional: stream id % 4 == 0.
CLIENT_BIDI = 0
# RFC 9000 section 10.3: a stateless reset is at least 21 bytes; we send a few more.
STATELESS_RESET_MIN = 21
STATELESS_RESETS_PER_SECOND = 100


class CreditedQuicConnection(QuicConnection):
    """A QuicConnection whose receive windows follow what the app has read.

    aioquic doubles a stream's MAX_STREAM_DATA (and the connection's MAX_DATA) as soon
    as the peer has *sent* half of it, so a client can make us buffer without bound
    for an app that does not read. Here request streams get `consumed + window`, and
    the connection `received - unread + window`, where `unread` is what the wire
    protocol has handed to apps but they have not yet read. Other streams (HTTP/3
    control and QPACK streams, read at once by aioquic) keep aioquic's policy.
    """

    def __init__(
        self,
        *args: Any,
        stream_window: int,
        connection_window: int,
        early_data: bool = False,
        reset_key: bytes = b"",
        select_certificate: Callable[[str | None], Any] | None = None,
        **kw: Any,
    ) -> None:
        self.early_data_allowed = early_data
        self.select_certificate = select_certificate
        self.reset_key = reset_key
        super().__init__(*args, **kw)
        # The adapter is shared with the connection's loss recovery: changing its class
        # covers both.
        self._logger.__class__ = _CheapDebugAdapter
        self._derive_reset_tokens()
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.stream_consumed: dict[int, int] = {}
        self.unread = 0
        self._discounted: set[int] = set()
        # Client unidirectional streams whose data goes to apps (WebTransport): credited
        # like request streams, unlike HTTP/3's own control and QPACK streams.
        self.credited_uni: set[int] = set()

    def _derive_reset_tokens(self) -> None:
        """Stateless reset tokens derived from the connection ID (RFC 9000 section
        10.3.2), not random as aioquic makes them: so the endpoint can still reset a
        connection it has forgotten. Derivation is deterministic, so rewriting tokens
        already sent changes nothing."""
        for host_cid in self._host_cids:
            host_cid.stateless_reset_token = reset_token(self.reset_key, host_cid.cid)

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self._derive_reset_tokens()

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self.early_data_allowed:
            _refuse_early_data(self.tls)
        if self.select_certificate is not None:
            _choose_certificate_by_sni(self.tls, self.select_certificate)

    @property
    def handshake_complete(self) -> bool:
        return bool(self._handshake_complete)

    def _confirm_handshake(self) -> None:
        super()._confirm_handshake()
        self._shed_handshake_state()

    def _shed_handshake_state(self) -> None:
        """Free what the handshake needed and aioquic never touches again, so an idle
        connection costs less: a 16 KiB TLS output buffer per discarded epoch (Initial,
        Handshake), their CRYPTO streams, and the server's ephemeral key share.

        A server confirms the handshake when it has the client's Finished (RFC 9001
        section 4.1.2), by then aioquic has discarded the Initial and Handshake keys
        and packet spaces (`_discard_epoch`), so no CRYPTO frame of those epochs is
        decrypted or sent again; `_push_crypto_data` walks only the buffers left in the
        dict. The 1-RTT buffer and stream stay: aioquic still reads them. The TLS
        context in its post-handshake state writes nothing and refuses any handshake
        message, so the key share (kept by aioquic for the connection's life) is
        unused; dropping it is also what forward secrecy asks for."""
        if self._is_client:
            return
        for epoch in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE):
            if self._spaces[epoch].discarded:
                self._crypto_buffers.pop(epoch, None)
                self._crypto_streams.pop(epoch, None)
        context = self.tls
        if context.state == tls.State.SERVER_POST_HANDSHAKE:
            context._ec_private_keys = []
            context._x25519_private_key = None
            context._x448_private_key = None

    def release(self) -> None:
        """Break the reference cycles aioquic builds into every connection, so that a
        finished one is freed by reference counting rather than left, about 340 objects
        (streams, packet spaces, crypto contexts, the TLS context), for a cyclic
        collection, which a serving process runs rarely (gc_young_threshold).

        Each cycle runs through a callback that is a bound method of the connection:
        its frame handlers, its loss recovery's probe, its crypto contexts' key logging,
        its TLS context's callbacks (and the SNI hook, which holds the context itself).
        Called once the connection is finished (H3Protocol._terminated): the endpoint
        routes no datagram to it any more and its timer is cancelled, and those are the
        only roads to the receive path, the loss timer and the handshake, where the
        callbacks run. What may still come (an app's late send, a transmit already
        scheduled) only queues stream data or finds the connection closed; and in case
        anything did reach them, each callback is replaced by one that does nothing
        rather than deleted, so that nothing can raise for a missing attribute."""
        self._QuicConnection__frame_handlers: dict[int, Any] = {}
        self._loss._send_probe = _do_nothing
        for pair in (*self._cryptos.values(), *self._cryptos_initial.values()):
            for context in (pair.recv, pair.send):
                context._setup_cb = context._teardown_cb = NoCallback
        handshake: tls.Context | None = getattr(self, "tls", None)  # made on the first datagram
        if handshake is not None:
            handshake.alpn_cb = None
            handshake.new_session_ticket_cb = None
            handshake.update_traffic_key_cb = _do_nothing
            handshake.__dict__.pop("_server_handle_hello", None)  # _choose_certificate_by_sni

    def consume(self, stream_id: int, n: int) -> None:
        self.stream_consumed[stream_id] = self.stream_consumed.get(stream_id, 0) + n
        self.unread -= n

    def hold(self, stream_id: int) -> None:
        """An app runs for this request stream: until `forget()`, aioquic keeps the
        stream, so the client gets no new stream (MAX_STREAMS) for it. Otherwise a
        client that resets its requests could have any number of apps running while
        it never has more than quic_max_streams streams open (Rapid Reset)."""
        stream = self._streams.get(stream_id)
        if stream is not None and type(stream) is QuicStream:
            stream.__class__ = _HeldStream

    def forget(self, stream_id: int, unread: int) -> None:
        """The stream is finished: what it left unread no longer holds the window."""
        stream = self._streams.get(stream_id)
        if stream is not None and type(stream) is _HeldStream:
            cast(QuicStream, stream).__class__ = QuicStream  # discarded once both sides are done
        self.stream_consumed.pop(stream_id, None)
        self.unread -= unread
        self._discounted.discard(stream_id)
        self.credited_uni.discard(stream_id)

    # aioquic's, with leaner walks over the streams for every packet, and with
    # MAX_STREAMS and early ACKs put in packets that go anyway (see quic_output).
    _write_application = write_application
    coalesce = True

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        target = limit.used - self.unread + self.connection_window
        if target - limit.value >= self.connection_window // 2:
            limit.value = target
        # aioquic doubles MAX_DATA when `used` passes half of it; our target replaces
        # that, so hide `used` from its check for the duration of the call.
        used, limit.used = limit.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # aioquic calls this for every stream on every packet it builds. A stream whose
        # final size is known needs no more MAX_STREAM_DATA (RFC 9000 section 3.2: the
        # peer has all the credit it can use), and that is every request whose GET has
        # arrived whole: return before anything else.
        if stream.receiver._final_size is not None:
            return
        stream_id = stream.stream_id
        if (
            stream_id is None
            or (stream_id % 4 != CLIENT_BIDI and stream_id not in self.credited_uni)
            or not stream.max_stream_data_local
        ):
            super()._write_stream_limits(builder, space, stream)
            return
        target = self.stream_consumed.get(stream_id, 0) + self.stream_window
        if target - stream.max_stream_data_local >= self.stream_window // 2:
            stream.max_stream_data_local = target
        receiver = stream.receiver
        highest, receiver.highest_offset = receiver.highest_offset, 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    def _write_stream_frame(self, builder: Any, space: Any, stream: Any, max_offset: int) -> int:
        # aioquic offers every stream that has not yet found its send buffer empty to
        # every packet it builds: a response whose bytes all went out is offered once
        # more (get_frame then notes the buffer empty), and once a packet is full the
        # streams still waiting are each offered to it in turn. For 35 requests a
        # datagram that is about two calls a request that send nothing, each sizing a
        # frame header (next_offset twice) before get_frame says no. Both cases are
        # answered here as get_frame would answer them; anything with bytes or a FIN
        # to send takes aioquic's path.
        sender = stream.sender
        if sender._reset_error_code is not None:
            return super()._write_stream_frame(builder, space, stream, max_offset)
        remaining = builder.remaining_flight_space
        header = 3 + size_uint_var(stream.stream_id)
        if remaining < header:
            return 0  # no room for any frame header of this stream: get_frame's "no"
        if sender._pending_eof or len(sender._pending):
            return super()._write_stream_frame(builder, space, stream, max_offset)
        # Nothing pending: get_frame notes the buffer empty, given room for the header
        # (whose offset field is the next offset, the end of the buffer).
        stop = sender._buffer_stop
        if remaining >= header + (size_uint_var(stop) if stop else 0):
            sender.buffer_is_empty = True
        return 0

    # --- what the HTTP/3 scheduler needs to know about the send buffer ------------------

    queued = 0  # stream bytes ever handed to aioquic, all streams

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self.queued += len(data)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        self.discard_unsent(stream_id)
        super().reset_stream(stream_id, error_code)

    def discard_unsent(self, stream_id: int) -> None:
        """The stream's sending side is reset (by us, or by the peer's STOP_SENDING):
        what was handed over but not sent never will be. Counted once per stream."""
        stream = self._streams.get(stream_id)
        if stream is None or stream_id in self._discounted:
            return
        self._discounted.add(stream_id)
        sender = stream.sender
        self.queued -= max(0, sender._buffer_stop - sender.highest_offset)

    @property
    def unsent(self) -> int:
        """Stream bytes handed to aioquic that have not yet gone out in a packet."""
        return max(0, self.queued - self._remote_max_data_used)

    @property
    def send_credit(self) -> int:
        """Connection flow-control credit left for bytes not yet handed to aioquic."""
        return int(self._remote_max_data) - self.queued


class _CheapDebugAdapter(QuicConnectionAdapter):
    """aioquic's connection log adapter with a debug() that asks the logger first.
    aioquic logs every stream's creation and discarding at debug level, two calls per
    request, and LoggerAdapter.debug goes through log() and two isEnabledFor() before
    it finds the level off: 0.4 us a call against 0.15 (timeit). When debug is on,
    the record is the same as aioquic's."""

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.log(logging.DEBUG, msg, *args, **kwargs)


class _HeldStream(QuicStream):
    """A QuicStream that aioquic may not discard yet: see `CreditedQuicConnection.hold`."""

    @property
    def is_finished(self) -> bool:
        return False


class _NoEarlyDataContext(tls.Context):
    """A server TLS context that never accepts 0-RTT: aioquic accepts early data from any
    resuming client that sends it, whatever its tickets said."""

    @property
    def early_data_accepted(self) -> bool:
        return False  # so EncryptedExtensions tells the client to resend in 1-RTT

    @early_data_accepted.setter
    def early_data_accepted(self, value: bool) -> None:
        pass


def _do_nothing(*args: Any) -> None:
    """What a finished connection's callbacks become (CreditedQuicConnection.release)."""


def _refuse_early_data(context: tls.Context) -> None:
    # Tickets without early data: well-behaved clients do not even try.
    context._max_early_data = None
    context.__class__ = _NoEarlyDataContext
    install_key = context.update_traffic_key_cb

    def without_zero_rtt_keys(
        direction: tls.Direction, epoch: tls.Epoch, suite: tls.CipherSuite, secret: bytes
    ) -> None:
        # Without 0-RTT read keys, early packets are dropped undecrypted, never served
        # twice (the client resends their content in 1-RTT).
        if epoch == tls.Epoch.ZERO_RTT and direction == tls.Direction.DECRYPT:
            return
        install_key(direction, epoch, suite, secret)

    context.update_traffic_key_cb = without_zero_rtt_keys


def reset_token(key: bytes, cid: bytes) -> bytes:
    return hmac.new(key, cid, hashlib.sha256).digest()[:16]


class TicketStore:
    """Session tickets for TLS 1.3 resumption, in memory, bounded."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.tickets: dict[bytes, SessionTicket] = {}

    def add(self, ticket: SessionTicket) -> None:
        if len(self.tickets) >= self.limit:
            self.tickets.pop(next(iter(self.tickets)))
        self.tickets[ticket.ticket] = ticket

    def pop(self, label: bytes) -> SessionTicket | None:
        return self.tickets.pop(label, None)


def _choose_certificate_by_sni(context: tls.Context, select: Callable[[str | None], Any]) -> None:
    """aioquic has no server-name callback: each connection serves the configuration's
    one certificate. Read the ClientHello's SNI just before aioquic handles it and put
    the certificate chosen for that name (reloads and ACME renewals included) in place."""
    handle_hello = context._server_handle_hello

    def with_certificate(input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
        start = input_buf.tell()
        try:
            server_name = tls.pull_client_hello(input_buf).server_name
        except Exception:  # malformed: aioquic's own parse below raises the right alert
            server_name = None
        input_buf.seek(start)
        chosen = select(server_name)
        if chosen is not None:
            leaf, chain, key = chosen
            context.certificate = leaf
            context.certificate_chain = chain
            context.certificate_private_key = key
        handle_hello(input_buf, initial_buf, handshake_buf)

    context._server_handle_hello = with_certificate  # type: ignore[method-assign]


def quic_configuration(config: Config, certificates: Any = None) -> QuicConfiguration:
    """The aioquic server configuration from ours (certificate, limits, logging).
    With `certificates` (a `CertStore`), connections take theirs from it by SNI."""
    from multiplex.errors import ConfigError

    if not config.tls:
        raise ConfigError("--quic-bind needs --certfile and --keyfile: QUIC is always TLS")
    configuration = QuicConfiguration(
        is_client=False,
        alpn_protocols=list(config.quic_alpn_protocols),
        idle_timeout=config.quic_idle_timeout,
        max_data=config.quic_max_data,
        max_stream_data=config.quic_max_stream_data,
        congestion_control_algorithm=config.quic_congestion_control,
        # HTTP datagrams (RFC 9297) need the DATAGRAM frame (RFC 9221), only for
        # WebTransport; without it a client may not send any.
        max_datagram_frame_size=65536 if config.webtransport else None,
    )
    if certificates is not None:
        from multiplex.certificates import placeholder_quic_certificate

        # aioquic wants one in the configuration; each connection replaces it.
        chosen = certificates.quic_select(None) or placeholder_quic_certificate()
        configuration.certificate, configuration.certificate_chain = chosen[0], chosen[1]
        configuration.private_key = chosen[2]
    else:
        assert config.certfile is not None
        try:
            configuration.load_cert_chain(config.certfile, config.keyfile)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {config.certfile} for QUIC: {exc}") from None
    keylog = config.keylog_file or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        configuration.secrets_log_file = open(keylog, "a")
    if config.quic_qlog_dir:
        os.makedirs(config.quic_qlog_dir, exist_ok=True)
        configuration.quic_logger = QuicFileLogger(config.quic_qlog_dir)
    return configuration


class QuicEndpoint(asyncio.DatagramProtocol):
    def __init__(
        self, server: ServerState, configuration: QuicConfiguration, certificates: Any = None
    ) -> None:
        from multiplex.protocols.http3 import H3Protocol

        self.server = server
        self.configuration = configuration
        # A CertStore's quic_select, when the server has one: certificates by SNI.
        self.select_certificate: Callable[[str | None], Any] | None = (
            certificates.quic_select if certificates is not None else None
        )
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None
        self.connections: dict[bytes, H3Protocol] = {}
        self.tickets = TicketStore()
        self.retry = retry_token_handler()
        self.retry_always = server.config.quic_retry
        self.retry_threshold = server.config.quic_retry_threshold
        # Connections still in their handshake: the measure of load that turns Retry on.
        self.handshaking: set[Any] = set()
        self.reset_key = stateless_reset_key()
        self._reset_window_start = 0.0
        self._resets_in_window = 0
        self._refusals = RateWindow(STATELESS_RESETS_PER_SECOND, 1.0)
        self._protocol_class = H3Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple):
            self.address = (str(sockname[0]), int(sockname[1]))

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self.configuration.connection_id_length
            )
        except ValueError:
            return  # not QUIC, or mangled: drop it
        transport = self.transport
        assert transport is not None
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self.configuration.supported_versions
        ):
            transport.sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.configuration.supported_versions,
                ),
                addr,
            )
            return
        protocol = self.connections.get(header.destination_cid)
        if protocol is None:
            if header.version is None:  # short header: 1-RTT for a connection we forgot
                self._stateless_reset(header.destination_cid, len(data), addr)
                return
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(data) < SMALLEST_MAX_DATAGRAM_SIZE
            ):
                return  # belongs to no connection we know
            if self.server.shutting_down.is_set():
                return
            protocol = self._accept(header, data, addr)
            if protocol is None:
                return
        protocol.datagram_received(data, addr)

    def _accept(self, header: Any, data: bytes, addr: NetworkAddress) -> Any:
        original_cid: bytes | None = header.destination_cid
        retry_cid: bytes | None = None
        if header.token:
            try:
                original_cid = self.retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=self.loop.time(),
                )
                retry_cid = header.destination_cid
            except ValueError:
                # RFC 9000 section 8.1.3: go on as if the client had sent no token.
                logger.debug("QUIC: unusable address validation token from %s", addr)
                header.token = b""
        if over_connection_limit(self.server, "QUIC"):
            # RFC 9000 section 5.2.2: CONNECTION_REFUSED, without any TLS work; rate
            # limited like stateless resets (past it the Initial is just dropped).
            if not self._refusals.hit(self.loop.time()) and self.transport is not None:
                self.transport.sendto(
                    connection_refused(header, self.configuration.max_datagram_size), addr
                )
            return None
        if not header.token and (
            self.retry_always or len(self.handshaking) >= self.retry_threshold
        ):
            self._send_retry(header, addr)
            return None
        config = self.server.config
        quic = CreditedQuicConnection(
            configuration=self.configuration,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
            session_ticket_fetcher=self.tickets.pop,
            session_ticket_handler=self.tickets.add,
            stream_window=config.quic_max_stream_data,
            connection_window=config.quic_max_data,
            early_data=config.quic_0rtt,
            reset_key=self.reset_key,
            select_certificate=self.select_certificate,
        )
        # aioquic hard-codes 128 concurrent bidirectional streams; ours is a setting.
        quic._local_max_streams_bidi.value = config.quic_max_streams
        quic._local_max_streams_bidi.sent = config.quic_max_streams
        protocol = self._protocol_class(self, quic, addr)
        self.handshaking.add(protocol)
        self.connections[header.destination_cid] = protocol
        self.connections[quic.host_cid] = protocol
        return protocol

    def connection_id_issued(self, cid: bytes, protocol: Any) -> None:
        self.connections[cid] = protocol

    def connection_id_retired(self, cid: bytes, protocol: Any) -> None:
        if self.connections.get(cid) is protocol:
            del self.connections[cid]

    def _stateless_reset(self, cid: bytes, received: int, addr: NetworkAddress) -> None:
        """RFC 9000 section 10.3: tell a peer its connection is gone. Smaller than what
        it answers, so two endpoints cannot loop, and rate limited, so it amplifies
        nothing."""
        if received <= STATELESS_RESET_MIN or self.transport is None:
            return
        now = self.loop.time()
        if now - self._reset_window_start >= 1.0:
            self._reset_window_start = now
            self._resets_in_window = 0
        if self._resets_in_window >= STATELESS_RESETS_PER_SECOND:
            return
        self._resets_in_window += 1
        size = min(received - 1, STATELESS_RESET_MIN + 20)
        unpredictable = bytearray(os.urandom(size - 16))
        unpredictable[0] = 0x40 | (unpredictable[0] & 0x3F)  # looks like a short header
        self.transport.sendto(bytes(unpredictable) + reset_token(self.reset_key, cid), addr)

    def _send_retry(self, header: Any, addr: NetworkAddress) -> None:
        assert self.transport is not None
        source_cid = os.urandom(8)
        self.transport.sendto(
            encode_quic_retry(
                version=header.version,
                source_cid=source_cid,
                destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                retry_token=self.retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid,
                    now=self.loop.time(),
                ),
            ),
            addr,
        )

    def handshake_done(self, protocol: Any) -> None:
        self.handshaking.discard(protocol)

    def connection_terminated(self, protocol: Any) -> None:
        self.handshaking.discard(protocol)
        for cid, known in list(self.connections.items()):
            if known is protocol:
                del self.connections[cid]

    def sendto(self, data: bytes, addr: NetworkAddress) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
