"""What goes into a server's 1-RTT packets: aioquic's `_write_application` (1.7.x)
with leaner walks over the connection's streams.

aioquic walks every stream of the connection twice for every packet it builds: once
to offer each one a MAX_STREAM_DATA frame and once, in its round-robin queue, to offer
each one a STREAM frame; then it rebuilds the queue. An HTTP/3 connection under load
holds a hundred request streams or more (those in flight, and those whose last bytes
await acknowledgement), and almost every one of them has nothing to say: its request
arrived whole (its final size is known, so it needs no credit: see
`CreditedQuicConnection._write_stream_limits`), and its response is either not yet
written or already sent. Those walks were the largest single cost per request left
after the request and response paths themselves.

Here the same frames go out in the same order, with three differences in how they are
found:
- a stream whose final size is known is passed over without a call (the credit check
  would return at once);
- a stream with nothing to send, reset, stop or discard is passed over after reading
  four attributes, without calls;
- once the packet has no room for any STREAM frame header, streams with data are passed
  over too, without the call that would say so;
- the queue is rebuilt only when a stream sent or was discarded, and the streams that
  sent go to its end in the order they were served (aioquic appends them in a set's
  order, which is arbitrary).

With `coalesce` on (the connection's attribute; off, the packets are aioquic's exactly),
two differences in what is sent, each saving a packet that would carry only that frame:
- the MAX_STREAMS that streams discarded in the walk give the peer goes at the end of the
  same packet when there is room, rather than in a packet of its own after it;
- an ACK that is pending but not yet due (aioquic waits 1 ms) rides at the end of a
  packet that carries something else, rather than leaving alone when its delay is up.

Everything else is aioquic's code as it is, so the module must follow aioquic's: the
dependency is capped below the next minor release, and tests/protocols/test_quic_output.py
checks that this and aioquic's give the same datagrams.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.quic.connection import (
    ACK_FRAME_CAPACITY,
    CONNECTION_LIMIT_FRAME_CAPACITY,
    QuicNetworkPath,
    stream_is_client_initiated,
)
from aioquic.quic.packet import QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder, QuicPacketBuilderStop
from aioquic.quic.stream import QuicStream

# A STREAM frame's type, stream ID (at least one byte) and length (two): less room than
# this, and no stream can put a frame in the packet.
SMALLEST_STREAM_FRAME_HEADER = 4


def write_application(
    self: Any, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
) -> None:
    """`QuicConnection._write_application`, with the stream walks described above."""
    crypto_stream: QuicStream | None = None
    if self._cryptos[tls.Epoch.ONE_RTT].send.is_valid():
        crypto = self._cryptos[tls.Epoch.ONE_RTT]
        crypto_stream = self._crypto_streams[tls.Epoch.ONE_RTT]
        packet_type = QuicPacketType.ONE_RTT
    elif self._cryptos[tls.Epoch.ZERO_RTT].send.is_valid():
        crypto = self._cryptos[tls.Epoch.ZERO_RTT]
        packet_type = QuicPacketType.ZERO_RTT
    else:
        return
    space = self._spaces[tls.Epoch.ONE_RTT]
    streams = self._streams
    write_stream_limits = self._write_stream_limits

    while True:
        # apply pacing, except if we have ACKs to send
        if space.ack_at is None or space.ack_at >= now:
            self._pacing_at = self._loss._pacer.next_send_time(now=now)
            if self._pacing_at is not None:
                break
        builder.start_packet(packet_type, crypto)

        # ACK, which a server sends for 0-RTT packets before the handshake
        # completes (RFC 9000 section 13.2.1), but not in 0-RTT packets.
        if (
            packet_type == QuicPacketType.ONE_RTT
            and space.ack_at is not None
            and space.ack_at <= now
        ):
            self._write_ack_frame(builder=builder, space=space, now=now)

        if self._handshake_complete:
            # PATH_CHALLENGE, while the active path is not validated, which only
            # happens on a server whose client migrated (RFC 9000 section 9.3).
            if not (network_path.is_validated or network_path.local_challenge_sent):
                self._write_path_challenge_frame(builder=builder, network_path=network_path)
                # RFC 9000 section 8.2.4 recommends abandoning path validation after
                # three times the larger of the current PTO and the PTO of a new path,
                # which uses the initial RTT.
                if network_path.validation_deadline is None:
                    network_path.validation_deadline = now + 3 * max(
                        self._loss.get_probe_timeout(),
                        2 * self._configuration.initial_rtt,
                    )

            # HANDSHAKE_DONE
            if self._handshake_done_pending:
                self._write_handshake_done_frame(builder=builder)
                self._handshake_done_pending = False

            # PATH RESPONSE
            while len(network_path.remote_challenges) > 0:
                self._write_path_response_frame(
                    builder=builder, challenge=network_path.remote_challenges[0]
                )
                network_path.remote_challenges.popleft()

            # NEW_CONNECTION_ID
            for connection_id in self._host_cids:
                if not connection_id.was_sent:
                    self._write_new_connection_id_frame(
                        builder=builder, connection_id=connection_id
                    )

            # RETIRE_CONNECTION_ID
            for sequence_number in self._retire_connection_ids[:]:
                self._write_retire_connection_id_frame(
                    builder=builder, sequence_number=sequence_number
                )
                self._retire_connection_ids.pop(0)

            # STREAMS_BLOCKED
            if self._streams_blocked_pending:
                if self._streams_blocked_bidi:
                    self._write_streams_blocked_frame(
                        builder=builder,
                        frame_type=QuicFrameType.STREAMS_BLOCKED_BIDI,
                        limit=self._remote_max_streams_bidi,
                    )
                if self._streams_blocked_uni:
                    self._write_streams_blocked_frame(
                        builder=builder,
                        frame_type=QuicFrameType.STREAMS_BLOCKED_UNI,
                        limit=self._remote_max_streams_uni,
                    )
                self._streams_blocked_pending = False

            # MAX_DATA and MAX_STREAMS
            self._write_connection_limits(builder=builder, space=space)

        # stream-level limits: a stream whose final size is known needs none.
        for stream in streams.values():
            if stream.receiver._final_size is None:
                write_stream_limits(builder, space, stream)

        # PING (user-request)
        if self._ping_pending:
            self._write_ping_frame(builder, self._ping_pending)
            self._ping_pending.clear()

        # PING (probe)
        if self._probe_pending:
            self._write_ping_frame(builder, comment="probe")
            self._probe_pending = False

        # CRYPTO
        if crypto_stream is not None and not crypto_stream.sender.buffer_is_empty:
            self._write_crypto_frame(builder=builder, space=space, stream=crypto_stream)

        # DATAGRAM
        while self._datagrams_pending:
            try:
                self._write_datagram_frame(
                    builder=builder,
                    data=self._datagrams_pending[0],
                    frame_type=QuicFrameType.DATAGRAM_WITH_LENGTH,
                )
                self._datagrams_pending.popleft()
            except QuicPacketBuilderStop:
                break

        sent: list[QuicStream] = []
        discarded: list[QuicStream] = []
        # Room left in the packet, read again after every frame the walk writes.
        room = builder.remaining_flight_space
        try:
            for stream in self._streams_queue:
                sender = stream.sender
                receiver = stream.receiver
                if (
                    sender.buffer_is_empty
                    and not sender.reset_pending
                    and not receiver.stop_pending
                    and not (sender.is_finished and receiver.is_finished)
                ):
                    continue  # nothing to send, and not to be discarded

                # if the stream is finished, discard it (a held stream says it is not:
                # see `CreditedQuicConnection.hold`)
                if stream.is_finished:
                    self._logger.debug("Stream %d discarded", stream.stream_id)
                    streams.pop(stream.stream_id)
                    if stream_is_client_initiated(stream.stream_id) != self._is_client:
                        # Let the peer open a new stream for each one that closes
                        # (RFC 9000 section 4.6).
                        self._stream_limit(stream.stream_id).value += 1
                    discarded.append(stream)
                    continue

                if receiver.stop_pending:
                    # STOP_SENDING
                    self._write_stop_sending_frame(builder=builder, stream=stream)
                    room = builder.remaining_flight_space

                if sender.reset_pending:
                    # RESET_STREAM
                    self._write_reset_stream_frame(builder=builder, stream=stream)
                    room = builder.remaining_flight_space
                elif not stream.is_blocked and not sender.buffer_is_empty:
                    # STREAM
                    if room < SMALLEST_STREAM_FRAME_HEADER and sender._reset_error_code is None:
                        # The packet is full: CreditedQuicConnection._write_stream_frame
                        # would answer 0 without a change. Once a packet is full, every
                        # stream still waiting used to be offered to it in turn.
                        continue
                    used = self._write_stream_frame(
                        builder=builder,
                        space=space,
                        stream=stream,
                        max_offset=min(
                            sender.highest_offset
                            + self._remote_max_data
                            - self._remote_max_data_used,
                            stream.max_stream_data_remote,
                        ),
                    )
                    self._remote_max_data_used += used
                    if used > 0:
                        sent.append(stream)
                    room = builder.remaining_flight_space  # a FIN alone uses 0 bytes of data

        finally:
            # A new stream service order, the ones served at the end, kept even if an
            # exception stops the walk (as aioquic keeps it).
            if sent or discarded:
                gone = {id(stream) for stream in sent}
                gone.update(id(stream) for stream in discarded)
                self._streams_queue = [
                    stream for stream in self._streams_queue if id(stream) not in gone
                ]
                self._streams_queue.extend(sent)

        if self.coalesce:
            if (
                discarded
                and self._handshake_complete
                and builder.remaining_flight_space >= 3 * CONNECTION_LIMIT_FRAME_CAPACITY
            ):
                # The streams just discarded let the peer open new ones: MAX_STREAMS goes
                # in this packet, where aioquic builds one more packet for it alone.
                self._write_connection_limits(builder=builder, space=space)
            if (
                space.ack_at is not None
                and packet_type == QuicPacketType.ONE_RTT
                and not builder.packet_is_empty
                and builder.remaining_flight_space >= ACK_FRAME_CAPACITY
            ):
                # An acknowledgement not yet due rides in a packet that goes anyway,
                # where aioquic sends it alone when its delay is up (RFC 9000 section
                # 13.2.1 sets a latest time, not an earliest).
                self._write_ack_frame(builder=builder, space=space, now=now)

        if builder.packet_is_empty:
            # Discarded streams may let the peer open new ones, which the next
            # packet announces with MAX_STREAMS.
            if not discarded:
                break
        else:
            self._loss._pacer.update_after_send(now=now)
