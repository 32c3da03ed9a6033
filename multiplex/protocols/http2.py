"""HTTP/2 over one TCP connection, with the h2 state machine.

Turns h2 events into stream calls and the `Wire` verbs into h2 calls. Output is
batched: whatever h2 queued is written once per event-loop turn (or at once when a
body chunk is large), so many small responses share one write.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.stream import StreamInputs, StreamState
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame

from multiplex.errors import ClientDisconnected
from multiplex.protocols import h2decode, h2fields
from multiplex.protocols.base import BaseConnection
from multiplex.protocols.fields import STATUS, request_from_fields, response_fields
from multiplex.protocols.h2encode import encode_block
from multiplex.protocols.h2setup import new_h2_connection, open_connection_window
from multiplex.protocols.limits import RateWindow
from multiplex.protocols.pending import PendingSends
from multiplex.scheduling import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY_FIELD,
    PendingSend,
    Priority,
    Scheduler,
    parse_priority,
)
from multiplex.streams import open_stream
from multiplex.streams.seam import ConnectionInfo, Headers, Request, ServerState, Stream

logger = logging.getLogger("multiplex")

# Flush at once rather than at the end of the loop turn past this many unflushed bytes.
FLUSH_THRESHOLD = 64 * 1024
# DATA frames this small because the peer's window was this small count as dribble.
TINY_FRAME = 128


_PREFACE_LENGTH = 24
_HEADERS, _RST_STREAM, _CONTINUATION, _END_HEADERS = 0x1, 0x3, 0x9, 0x4
_PRIORITY_UPDATE = 0x10  # RFC 9218 section 7.1

# Frames we serialise ourselves on the hot path (see H2Protocol._frame_head): a frame
# header is a 24-bit length (here as a byte and a short), type, flags, stream ID.
_FRAME_HEADER = struct.Struct(">BHBBL")
_DATA = 0x0
_END_STREAM = 0x1
# Per field, at most this many bytes beyond its name and value in an HPACK block (two
# length prefixes and a representation byte): a head whose fields and this overhead fit
# in one frame needs no CONTINUATION, so it may take the fast path.
_HPACK_FIELD_OVERHEAD = 12
_SENDABLE = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)
_SEND_HEADERS = StreamInputs.SEND_HEADERS
_SEND_DATA = StreamInputs.SEND_DATA
_SEND_END_STREAM = StreamInputs.SEND_END_STREAM
_SERVER_OPEN = ConnectionState.SERVER_OPEN


class _Connection(h2.connection.H2Connection):
    """h2, counting the RST_STREAM frames it queues (those it sends on its own, while
    receiving, are resets the peer provoked: MadeYouReset)."""

    resets_sent = 0

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config)
        # hpack's decoder with a short road for blocks of indexed fields (h2decode);
        # a class swap, so that the state h2's __init__ gave it stays as it is.
        self.decoder.__class__ = h2decode.Decoder
        # h2 keeps its frame handlers as bound methods in a dict on the connection, a
        # reference cycle (connection, table, methods, connection): every closed
        # connection waited for the cyclic collector, rare in a serving process
        # (gc_young_threshold). h2 reads the table only in _receive_frame, which ours
        # replaces; our _dispatch_frame takes the same handlers, as functions, from
        # _FRAME_HANDLERS. Dropped here so that nothing can use it by mistake.
        del self._frame_dispatch_table

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.type == _RST_STREAM:
                self.resets_sent += 1
        super()._prepare_for_sending(frames)

    def _receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        try:
            return self._dispatch_frame(frame)
        except h2.exceptions.ProtocolError as exc:
            # h2 answers an undecodable header block (e.g. a dynamic table size update
            # past our SETTINGS_HEADER_TABLE_SIZE) with PROTOCOL_ERROR; RFC 9113 section
            # 4.3 wants COMPRESSION_ERROR. (An HPACK bomb stays ENHANCE_YOUR_CALM.)
            if isinstance(exc.__cause__, hpack.HPACKError) and not isinstance(
                exc, h2.exceptions.DenialOfServiceError
            ):
                exc.error_code = ErrorCodes.COMPRESSION_ERROR
            raise

    def _dispatch_frame(self, frame: Frame) -> list[h2.events.Event]:
        """h2's H2Connection._receive_frame (4.1 to 4.3) without its first line, a trace
        call whose argument, repr(frame), is built for every frame received even though
        h2's logger drops it (our configuration gives h2 none): about 3 % of the
        server's time on hello requests. What it does with the frame is h2's, unchanged;
        tests/protocols/test_http2_receive.py compares both on good and bad frames."""
        events: list[h2.events.Event]
        try:
            frames, events = _FRAME_HANDLERS[frame.__class__](self, frame)
        except h2.exceptions.StreamClosedError as e:
            # Closed by our RST_STREAM: a stream error; otherwise a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            # A stream ID lower than one already seen: a stream error if we reset that
            # stream, a connection error (STREAM_CLOSED or PROTOCOL_ERROR) otherwise.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


def _frame_handlers() -> dict[type[Frame], Callable[..., Any]]:
    """h2's frame dispatch table, frame class to handler, with the handlers as functions
    of our class rather than bound methods of one connection; taken from a connection
    h2 builds, so that it follows h2's own table."""
    table = h2.connection.H2Connection()._frame_dispatch_table
    return {kind: getattr(_Connection, method.__name__) for kind, method in table.items()}


_FRAME_HANDLERS = _frame_handlers()


class H2Protocol(PendingSends, BaseConnection):
    def __init__(self, server: ServerState, info: ConnectionInfo) -> None:
        super().__init__(server, info)
        config = self.config
        self.h2 = new_h2_connection(config, _Connection)
        self.streams: dict[int, Stream] = {}
        # The send path: data that could not go out at once waits in `_pending`; the
        # streams among them that may send now are in the scheduler, those whose own
        # flow-control window is shut in `_blocked` until a WINDOW_UPDATE.
        self._sched = Scheduler()
        self._pending: dict[int, PendingSend] = {}
        self._blocked: set[int] = set()
        self._prioritize = config.priorities
        # PRIORITY_UPDATEs for streams not open yet (RFC 9218 section 7.1), bounded.
        self._early_priority: dict[int, Priority] = {}
        self._last_sent = 0.0  # when DATA last went out on this connection
        self._request_priority: h2.events.PriorityUpdated | None = None
        self._flush_scheduled = False
        self._unflushed = 0
        # Output in order, for the next flush: DATA frames we framed (header and a view
        # of the app's body, never a copy) and, before each, whatever h2 had queued. What
        # h2 queued since the last of them is still in h2's own buffer.
        self._out: list[bytes | bytearray | memoryview] = []
        # TLS: one join per flush, as each piece given to the SSL transport separately
        # would become a TLS record of its own (a 9-byte record per frame header).
        # Cleartext: the pieces go to the kernel as they are, in one vectored write.
        self._join_output = info.scheme == "https"
        self._goaway_last_id: int | None = None  # set once we sent a graceful GOAWAY
        self._peer_goaway = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # when the last stream ended (read when the timer fires)
        # Abuse limits (issue 6): rates per window, and the frame scan that bounds header
        # blocks before h2 buffers them.
        window = config.h2_rate_window
        self._resets = RateWindow(config.h2_max_resets_per_window, window)
        self._control = RateWindow(config.h2_max_control_frames_per_window, window)
        self._empty = RateWindow(config.h2_max_empty_frames_per_window, window)
        self._tiny = RateWindow(config.h2_max_tiny_frames_per_window, window)
        self._scan_skip = _PREFACE_LENGTH  # bytes until the next frame header
        self._scan_partial = b""  # a frame header split across reads
        self._block_frames = -1  # CONTINUATIONs of the open header block; -1: none open
        self._block_size = 0

    # --- set-up ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.h2.initiate_connection()
        open_connection_window(self.h2, self.config)
        self._flush()
        self._arm_idle_timer()

    def start_upgraded(
        self, transport: asyncio.Transport, settings: bytes, request: Request, rest: bytes
    ) -> None:
        """Take over a connection after `101 Switching Protocols` (RFC 7540 section 3.2):
        the upgrading request becomes stream 1, already half-closed by the client."""
        super().connection_made(transport)
        self.h2.initiate_upgrade_connection(settings)
        open_connection_window(self.h2, self.config)
        self._new_stream(1, request).feed_end()
        self._flush()
        if rest:
            self.data_received(rest)

    def pause_writing(self) -> None:
        # A peer that does not read must not make us queue ACKs, RST_STREAMs and
        # WINDOW_UPDATEs without bound (CVE-2019-9512/9517): stop reading it meanwhile.
        super().pause_writing()
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.closed:
            self.transport.resume_reading()
            if self._sched:
                self._pump()

    # --- input -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._scan_skip >= len(data):
            self._scan_skip -= len(data)  # inside one frame's payload: nothing to look at
        elif not self._scan_frames(data):
            return
        h2conn = self.h2
        resets_before = h2conn.resets_sent
        try:
            events = h2conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the right code; send it and hang up.
            logger.info("HTTP/2 protocol error from %s: %s", self._peer(), exc)
            self._flush()
            self.close()
            return
        provoked = h2conn.resets_sent - resets_before
        if provoked and self._reset_counted(provoked):
            return
        handlers = _EVENT_HANDLERS
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(self, event)
                if self.closed:
                    return
        if self._sched:
            self._pump()
        self._flush()

    def _scan_frames(self, data: bytes) -> bool:
        """Walk the frame headers in `data` and bound header blocks (CONTINUATION flood,
        CVE-2024-27316) before h2 buffers them. False once the connection is closed."""
        pos = self._scan_skip
        if self._scan_partial:
            data = self._scan_partial + data  # pos is 0: a header was cut short
            self._scan_partial = b""
        end = len(data)
        while pos + 9 <= end:
            length = int.from_bytes(data[pos : pos + 3], "big")
            kind = data[pos + 3]
            if kind == _HEADERS or (kind == _CONTINUATION and self._block_frames >= 0):
                if kind == _HEADERS:
                    self._block_frames, self._block_size = 0, length
                else:
                    self._block_frames += 1
                    self._block_size += length
                if self._block_frames > self.config.h2_max_continuation_frames:
                    self._calm("h2_max_continuation_frames", self._block_frames)
                    return False
                if self._block_size > self.config.h2_max_header_block_size:
                    self._calm("h2_max_header_block_size", self._block_size)
                    return False
                if data[pos + 4] & _END_HEADERS:
                    self._block_frames = -1
            pos += 9 + length
        if pos >= end:
            self._scan_skip = pos - end
        else:
            self._scan_skip = 0
            self._scan_partial = data[pos:]
        return True

    def _reset_counted(self, n: int = 1) -> bool:
        """Count stream resets (the client's or provoked by it); True if that closed us."""
        if self._resets.hit(self.loop.time(), n):
            self._calm("h2_max_resets_per_window", self._resets.count)
            return True
        return False

    def _calm(self, limit: str, value: int) -> None:
        """The peer went past an abuse limit: GOAWAY ENHANCE_YOUR_CALM and hang up."""
        logger.warning(
            "HTTP/2 connection from %s went over %s = %s (reached %s): GOAWAY ENHANCE_YOUR_CALM",
            self._peer(),
            limit,
            getattr(self.config, limit),
            value,
        )
        self._goaway_and_close(ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_control(self, event: h2.events.Event) -> None:
        # PING and SETTINGS each make h2 queue an ACK (CVE-2019-9512, CVE-2019-9515).
        if self._control.hit(self.loop.time()):
            self._calm("h2_max_control_frames_per_window", self._control.count)

    def _on_priority(self, event: h2.events.PriorityUpdated) -> None:
        # RFC 7540 PRIORITY frames change nothing here (RFC 9218 replaces them) but cost
        # h2 work: counted like PING (CVE-2019-9513, resource loop). Priority carried
        # inside a request's HEADERS frame comes as an event too; that one is free.
        if event is not self._request_priority:
            self._on_control(event)

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        self._request_priority = event.priority_updated
        stream_id = event.stream_id
        if self._goaway_last_id is not None and stream_id > self._goaway_last_id:
            if self._reset_counted():  # refusals are resets we are made to send
                return
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        error = h2fields.request_error(event.headers)
        if error is not None:
            self._protocol_error(f"malformed request on stream {stream_id}: {error}")
            return
        request = request_from_fields(event.headers)
        if isinstance(request, int):
            self._refuse(stream_id, request)
            return
        self._set_request_priority(stream_id, request)
        request.push = self.config.push and bool(self.h2.remote_settings.enable_push)
        self._new_stream(stream_id, request)

    def _on_unknown_frame(self, event: h2.events.UnknownFrameReceived) -> None:
        frame = event.frame
        if frame.type != _PRIORITY_UPDATE:
            return  # RFC 9113 section 5.5: unknown frame types are ignored
        # Counted like PING and SETTINGS: each costs us work.
        self._on_control(event)
        if self.closed:
            return
        body: bytes = frame.body  # type: ignore[attr-defined]
        target = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
        # RFC 9218 section 7.1: only on stream 0, and never about stream 0.
        if frame.stream_id != 0 or len(body) < 4 or target == 0:
            self._protocol_error("malformed PRIORITY_UPDATE")
            return
        if len(body) - 4 > MAX_PRIORITY_FIELD or not self._prioritize:
            return  # too long to be a priority signal: ignored, not parsed
        if target in self.streams:
            self._sched.set_priority(target, parse_priority(body[4:], self._sched.priority(target)))
        elif target % 2 == 1:
            # For a stream the client has not opened yet: kept (bounded) until it does.
            early = self._early_priority
            if len(early) >= self.config.h2_max_concurrent_streams:
                early.pop(next(iter(early)))
            early[target] = parse_priority(body[4:])

    def _protocol_error(self, why: str) -> None:
        logger.info("HTTP/2 protocol error from %s: %s", self._peer(), why)
        self._goaway_and_close(ErrorCodes.PROTOCOL_ERROR)

    def _goaway_and_close(self, code: ErrorCodes) -> None:
        """A connection error found by us rather than h2: GOAWAY and hang up."""
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = code
        self._flush()
        if not self.closed:
            self.transport.write(frame.serialize())
        self.close()

    def _refuse(self, stream_id: int, status: int) -> None:
        """A complete response that never reaches the app."""
        if self._reset_counted():  # a reset the client provoked (MadeYouReset)
            return
        logger.info("HTTP/2 stream %s from %s refused: %s", stream_id, self._peer(), status)
        try:
            self.h2.send_headers(
                stream_id,
                [(b":status", STATUS[status]), (b"content-length", b"0")],
                end_stream=True,
            )
            if not self.h2.streams[stream_id].closed:
                self.h2.reset_stream(stream_id, ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, KeyError):
            pass

    def _new_stream(self, stream_id: int, request: Request) -> Stream:
        stream = open_stream(self, stream_id, request, self.info, self.server)
        self.streams[stream_id] = stream
        stream.start()
        return stream

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        data = event.data
        if not data and event.stream_ended is None and self._empty.hit(self.loop.time()):
            self._calm("h2_max_empty_frames_per_window", self._empty.count)  # CVE-2019-9518
            return
        if stream is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return
        padding = event.flow_controlled_length - len(data)
        if padding:
            self.h2.acknowledge_received_data(padding, event.stream_id)
        if data:
            stream.feed_body(data)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_end()

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        # ASGI has no request trailers; the END_STREAM they carry comes as StreamEnded.
        error = h2fields.trailer_error(event.headers)
        if error is not None:
            self._protocol_error(f"malformed trailers on stream {event.stream_id}: {error}")

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        if event.remote_reset and self._reset_counted():
            return  # Rapid Reset (CVE-2023-44487): connection_lost disconnects the streams
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.feed_disconnect()
        self._fail_pending(event.stream_id, "reset by the client")

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            self._unblock(event.stream_id)
        # On stream 0 the connection's window grew: the pump at the end of this read
        # sends whoever waits.

    def _on_settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        self._on_control(event)
        if self.closed:
            return
        if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._unblock_all()
        if h2.settings.SettingCodes.HEADER_TABLE_SIZE in event.changed_settings:
            self._cap_encoder_table()

    def _on_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        self._peer_goaway = True
        if event.error_code != ErrorCodes.NO_ERROR:
            logger.info(
                "HTTP/2 GOAWAY from %s: %s %s",
                self._peer(),
                event.error_code,
                (event.additional_data or b"").decode("latin-1"),
            )
            self.close()
        elif not self.streams:
            self.close()

    # --- output ------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        out = self._out
        if not out:
            data = self.h2.data_to_send()
            if data and not self.closed:
                self.transport.write(data)
            return
        self._out = []
        self._take_h2_output(out)
        if self.closed:
            return
        if self._join_output:
            self.transport.write(b"".join(out))
        else:
            self.transport.writelines(out)

    def _take_h2_output(self, out: list[bytes | bytearray | memoryview]) -> None:
        """Move what h2 has queued so far to the end of `out`, to keep the order."""
        h2conn = self.h2
        if h2conn._data_to_send:
            out.append(h2conn._data_to_send)
            h2conn._data_to_send = bytearray()

    def queued_output(self) -> int:
        """Bytes framed but not yet handed to the transport (ours and h2's)."""
        return sum(len(piece) for piece in self._out) + len(self.h2._data_to_send)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_informational(self, stream_id: int, status: int, headers: Headers) -> None:
        try:
            self.h2.send_headers(stream_id, [(b":status", STATUS[status]), *headers])
        except h2.exceptions.StreamClosedError:
            return
        self._schedule_flush()

    def send_head(self, stream_id: int, status: int, headers: Headers, end: bool) -> None:
        if self.closed:
            return
        out = response_fields(status, headers)
        if not self._frame_head(stream_id, out, end):
            try:
                self.h2.send_headers(stream_id, out, end_stream=end)
            except h2.exceptions.ProtocolError:
                # Reset by the peer meanwhile, or the peer ended the connection (GOAWAY):
                # the stream learns it as a disconnect.
                return
        self._schedule_flush()

    def _frame_head(self, stream_id: int, fields: Headers, end: bool) -> bool:
        """The common response head, framed here: h2's send_headers builds frame objects,
        flags and validation flags per call (two fifths of the server's time on a hello
        response), HPACK-encoded by h2encode without the dynamic table. Only for a final
        response on an open stream of an open connection that fits one HEADERS frame,
        with no HPACK table size update due (h2's encoder must emit it first); h2's own
        state machines still take every transition, so h2 agrees on the stream's state.
        False: not framed, h2's send_headers must do it (and raise what it raises)."""
        h2conn = self.h2
        stream = h2conn.streams.get(stream_id)
        if stream is None or h2conn.state_machine.state is not _SERVER_OPEN:
            return False
        machine = stream.state_machine
        encoder = h2conn.encoder
        if machine.state not in _SENDABLE or machine.headers_sent or encoder.header_table.resized:
            return False
        size = 0
        for name, value in fields:
            size += len(name) + len(value) + _HPACK_FIELD_OVERHEAD
        if size > h2conn.max_outbound_frame_size:
            return False  # may need CONTINUATION frames: h2 splits the block
        machine.process_input(_SEND_HEADERS)
        block = encode_block(fields)
        flags = _END_HEADERS
        if end:
            machine.process_input(_SEND_END_STREAM)
            flags |= _END_STREAM
        length = len(block)
        h2conn._data_to_send += (
            _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, _HEADERS, flags, stream_id) + block
        )
        return True

    def _frame_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> bool:
        """DATA frames for `data`, which the caller has sized to the windows, framed
        here rather than by h2's send_data (a frame object and four state checks per
        frame): cut at the peer's frame size, the stream's state machine driven and
        the windows charged as h2 does (SEND_DATA takes an open or half-closed stream
        back to the same state, so one pass stands for every frame of the batch).
        The payload is not copied: frame headers and views of `data` join `_out`, after
        what h2 queued so far. False: not framed, h2's send_data must do it."""
        h2conn = self.h2
        stream = h2conn.streams.get(stream_id)
        if stream is None or h2conn.state_machine.state is not _SERVER_OPEN:
            return False
        machine = stream.state_machine
        if machine.state not in _SENDABLE:
            return False
        machine.process_input(_SEND_DATA)
        if end:
            machine.process_input(_SEND_END_STREAM)
        size = len(data)
        stream.outbound_flow_control_window -= size
        h2conn.outbound_flow_control_window -= size
        out = self._out
        self._take_h2_output(out)  # h2's earlier output goes first
        pack = _FRAME_HEADER.pack
        most = h2conn.max_outbound_frame_size
        if size <= most:
            out.append(pack(size >> 16, size & 0xFFFF, _DATA, _END_STREAM if end else 0, stream_id))
            out.append(data)
            return True
        view = data if type(data) is memoryview else memoryview(data)
        whole = (size - 1) // most * most  # where the last frame begins
        head = pack(most >> 16, most & 0xFFFF, _DATA, 0, stream_id)  # the same for each
        for offset in range(0, whole, most):
            out.append(head)
            out.append(view[offset : offset + most])
        rest = size - whole
        out.append(pack(rest >> 16, rest & 0xFFFF, _DATA, _END_STREAM if end else 0, stream_id))
        out.append(view[whole:])
        return True

    def _h2_send_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """h2's own road, frame by frame: it raises what a stream or connection that
        cannot send deserves."""
        h2conn = self.h2
        if not data:
            h2conn.send_data(stream_id, b"", end_stream=end)
            return
        most = h2conn.max_outbound_frame_size
        for offset in range(0, len(data), most):
            chunk = data[offset : offset + most]
            h2conn.send_data(stream_id, bytes(chunk), end_stream=end and offset + most >= len(data))

    async def send_body(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.closed:
            raise ClientDisconnected("connection closed")
        h2conn = self.h2
        try:
            if not data:
                if end:
                    h2conn.end_stream(stream_id)
                    self._schedule_flush()
                return
            rest: bytes | memoryview = data
            if not self._sched and not self.write_paused:
                # Nobody else is waiting to send: no order to keep, straight to h2.
                rest = self._send_now(stream_id, data, end)
                if not rest:
                    return
        except h2.exceptions.ProtocolError:
            raise ClientDisconnected(f"stream {stream_id} closed by the client") from None
        # Wait for a turn: the scheduler orders this stream among the others waiting.
        await self._wait_turn(stream_id, rest, end)

    def _send_now(self, stream_id: int, data: bytes | memoryview, end: bool) -> bytes | memoryview:
        """Send what the windows allow at once; what is left over."""
        h2conn = self.h2
        if len(data) > h2conn.max_outbound_frame_size:
            data = memoryview(data)  # frames are views of the body, not copies
        while data:
            window = h2conn.local_flow_control_window(stream_id)
            if window <= 0:
                return data
            size = min(window, len(data), self._batch_room())
            if size < TINY_FRAME and size == window and self._dribbled():
                return data
            if size == len(data):
                chunk, data = data, b""
            else:
                chunk, data = data[:size], data[size:]
            last = end and not data
            if not self._frame_data(stream_id, chunk, last):
                self._h2_send_data(stream_id, chunk, last)
            self._sent(size)
            if self.write_paused:
                return data
        return data

    def _batch_room(self) -> int:
        """How much to frame in one go: whole frames up to the flush threshold, so
        that what we hold unflushed stays under FLUSH_THRESHOLD plus one frame."""
        most = self.h2.max_outbound_frame_size
        frames = (FLUSH_THRESHOLD - self._unflushed + most - 1) // most
        return most * max(frames, 1)

    def _dribbled(self) -> bool:
        """A DATA frame cut tiny by a tiny window: data dribble (CVE-2019-9511) makes us
        frame a body a few bytes at a time. True once that closed the connection."""
        if self._tiny.hit(self.loop.time()):
            self._calm("h2_max_tiny_frames_per_window", self._tiny.count)
            return True
        return False

    def _sent(self, size: int) -> None:
        self._unflushed += size
        if self._unflushed >= FLUSH_THRESHOLD:
            self._flush()  # may pause writing
        else:
            self._schedule_flush()

    def _pump(self) -> None:
        """Send waiting data in priority order while the connection's window and the
        transport take it: one frame per turn for an incremental stream, so that those
        interleave; a batch for a non-incremental one, which the scheduler would pick
        again frame after frame anyway (it keeps its place in stream order)."""
        sched = self._sched
        h2conn = self.h2
        pending_of = self._pending
        while sched and not self.write_paused and not self.closed:
            if h2conn.outbound_flow_control_window <= 0:
                return  # a WINDOW_UPDATE on stream 0 brings us back
            stream_id = sched.next()
            if stream_id is None:
                return
            pending = pending_of.get(stream_id)
            if pending is None:
                continue
            try:
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    self._blocked.add(stream_id)
                    continue
                data = pending.data
                if sched.priority(stream_id)[1]:
                    size = min(window, len(data), h2conn.max_outbound_frame_size)
                else:
                    size = min(window, len(data), self._batch_room())
                if size < TINY_FRAME and size == window and self._dribbled():
                    return
                if size == len(data):
                    chunk, data = data, b""
                else:
                    if type(data) is bytes:
                        data = memoryview(data)  # frames are views of the body, not copies
                    chunk, data = data[:size], data[size:]
                last = pending.end and not data
                if not self._frame_data(stream_id, chunk, last):
                    self._h2_send_data(stream_id, chunk, last)
            except h2.exceptions.ProtocolError:
                self._fail_pending(stream_id, "closed by the client")
                continue
            now = self.loop.time()
            pending.progress = self._last_sent = now
            if data:
                pending.data = data
                sched.ready(stream_id)
            else:
                del pending_of[stream_id]
                if not pending.waiter.done():
                    pending.waiter.set_result(None)
            self._sent(size)

    def _check_stall(self, stream_id: int, pending: PendingSend) -> None:
        """A stream waiting to send: reset it if the peer gave it no window for
        `send_stall_timeout` (its own window shut, or the connection's). Waiting
        behind more urgent streams that do make progress is not a stall."""
        pending.timer = None
        if self.closed or self._pending.get(stream_id) is not pending:
            return
        stall = self.config.send_stall_timeout
        now = self.loop.time()
        since = now - max(pending.progress, 0.0 if stream_id in self._blocked else self._last_sent)
        if since < stall:
            pending.timer = self.loop.call_later(
                stall - since, self._check_stall, stream_id, pending
            )
            return
        logger.info(
            "HTTP/2 stream %s from %s: no flow-control window for send_stall_timeout = %s s;"
            " RST_STREAM CANCEL",
            stream_id,
            self._peer(),
            stall,
        )
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:
            pass
        self._schedule_flush()
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.feed_disconnect()
        self._fail_pending(stream_id, "send stalled")

    def _unblock(self, stream_id: int) -> None:
        """The stream's own window opened: it may take its turn again."""
        if stream_id in self._blocked:
            self._blocked.discard(stream_id)
            self._sched.ready(stream_id)

    def _unblock_all(self) -> None:
        blocked, self._blocked = self._blocked, set()
        for stream_id in blocked:
            self._sched.ready(stream_id)

    def _fail_all_pending(self) -> None:
        for stream_id in list(self._pending):
            self._fail_pending(stream_id, "connection closed")

    def push(self, stream_id: int, authority: bytes, path: bytes, headers: Headers) -> None:
        """PUSH_PROMISE on the client's stream, then the promised GET runs through the
        app on the new (even) stream like any request, scheduled like any response."""
        h2conn = self.h2
        if self.closed or self._goaway_last_id is not None or self._peer_goaway:
            return
        if not h2conn.remote_settings.enable_push:
            return  # the client turned pushes off since the request came: dropped
        promised = h2conn.get_next_available_stream_id()
        scheme = self.info.scheme.encode("ascii")
        fields = [
            (b":method", b"GET"),
            (b":scheme", scheme),
            (b":authority", authority),
            (b":path", path),
            *headers,
        ]
        try:
            h2conn.push_stream(stream_id, promised, fields)
        except h2.exceptions.ProtocolError as exc:
            # The parent stream is done, or the client's stream limit is reached.
            logger.debug("HTTP/2 push of %r on stream %s not sent: %s", path, stream_id, exc)
            return
        request = Request("GET", path, [(b"host", authority), *headers])
        request.priority = DEFAULT_PRIORITY
        self._new_stream(promised, request).feed_end()
        self._schedule_flush()

    def prioritize(self, stream_id: int, urgency: int, incremental: bool) -> None:
        """The app (or its `priority` response header) set the stream's priority:
        a server-side override (RFC 9218 section 8)."""
        if self._prioritize:
            self._sched.set_priority(stream_id, (urgency, incremental))

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        if self.closed:
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return  # reset by the peer meanwhile; the stream knows
        self._schedule_flush()

    def consumed(self, stream_id: int, n: int) -> None:
        if n and not self.closed:
            self.h2.acknowledge_received_data(n, stream_id)
            self._schedule_flush()

    def accept_websocket(self, stream_id: int, headers: Headers) -> int:
        if self.closed:
            raise ClientDisconnected("connection closed")
        out = response_fields(200, headers)
        try:
            self.h2.send_headers(stream_id, out)
        except h2.exceptions.ProtocolError:
            raise ClientDisconnected(f"stream {stream_id} closed by the client") from None
        self._schedule_flush()
        return 200

    def reset(self, stream_id: int) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
        except h2.exceptions.ProtocolError:
            return
        self._fail_pending(stream_id, "reset")
        self._schedule_flush()

    def stream_complete(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._drop_pending(stream_id)
        self._sched.forget(stream_id)
        if self.closed:
            return
        h2conn = self.h2
        h2stream = h2conn.streams.get(stream_id)
        if h2stream is not None:
            if not h2stream.closed:
                # The response is complete but the client is still sending: RFC 9113
                # section 8.1 lets us stop it without error.
                try:
                    h2conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)
                except h2.exceptions.ProtocolError:
                    # Closed meanwhile, or the client's GOAWAY made h2 refuse every frame
                    # (as h2load's at the end of a timed run): nothing to stop, and the
                    # connection must still be ended below once its last stream is done.
                    pass
                self._schedule_flush()
            if h2stream.closed:
                # What h2's _open_streams does with a closed stream, done now rather than
                # when the next request arrives: h2 keeps its stream (three objects)
                # until then, so under many connections they lived through several
                # collections and were promoted, to die in the oldest generation (see
                # tests/protocols/test_http2_lifetime.py). Its closed_by is what h2 reads
                # from then on to tell a stream error from a connection error.
                del h2conn.streams[stream_id]
                h2conn._closed_streams[stream_id] = h2stream.closed_by
        if not self.streams:
            if self._goaway_last_id is not None or self._peer_goaway:
                self._flush()
                self.close()
            else:
                self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        """The connection has no stream left: idle from now. A connection goes idle
        after every batch of requests, so the timer is not cancelled and made again
        each time (a timer handle and a libuv timer per batch); a running one stays,
        and when it fires `_idle` checks how long the connection has really been idle."""
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.config.h2_idle_timeout, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.streams or self.closed:
            return  # busy: the last stream to end arms the timer again
        left = self._idle_since + self.config.h2_idle_timeout - self.loop.time()
        if left > 0:
            # Streams came and went since the timer was set: idle for less than the
            # timeout so far.
            self._idle_timer = self.loop.call_later(left, self._idle)
            return
        logger.debug("HTTP/2 connection from %s idle: closing", self._peer())
        self.shutdown()

    # --- life cycle ----------------------------------------------------------------

    def shutdown(self) -> None:
        if self.closed or self._goaway_last_id is not None:
            return
        # h2's close_connection() would refuse every later frame, including the rest of
        # the in-flight responses; so the GOAWAY is framed here and h2 stays open.
        self._goaway_last_id = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self._goaway_last_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._flush()
        self.transport.write(frame.serialize())
        if not self.streams:
            self.close()
            return
        for stream in list(self.streams.values()):
            stream.going_away()  # WebSockets close (1001); responses just finish

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for stream in list(self.streams.values()):
            stream.feed_disconnect()
        self._fail_all_pending()

    def _peer(self) -> str:
        client = self.info.client
        return f"{client[0]}:{client[1]}" if client else "unix socket"

    def _cap_encoder_table(self) -> None:
        """h2 sized our HPACK encoder's dynamic table to the client's
        SETTINGS_HEADER_TABLE_SIZE, which may be 2^32-1: every response field sent would
        stay in memory (and be searched per field) for the connection's life. RFC 7541
        section 4.2 lets an encoder use less than the decoder allows; the size update
        that says so goes at the start of the next block."""
        encoder = self.h2.encoder
        cap = self.config.h2_max_hpack_table_size
        if encoder.header_table_size > cap:
            # Announce only the final size, not the oversized one h2 just set.
            encoder.table_size_changes = [n for n in encoder.table_size_changes if n <= cap]
            encoder.header_table_size = cap


# What each h2 event is handed to. Functions, not the connection's bound methods: a
# table of those on the connection was a reference cycle (connection, table, methods,
# connection), leaving every closed connection to the cyclic collector. (A subclass
# overriding a handler must put its own in such a table.)
_EVENT_HANDLERS: dict[type[h2.events.Event], Callable[[H2Protocol, Any], None]] = {
    h2.events.PingReceived: H2Protocol._on_control,
    h2.events.PriorityUpdated: H2Protocol._on_priority,
    h2.events.RequestReceived: H2Protocol._on_request,
    h2.events.DataReceived: H2Protocol._on_data,
    h2.events.StreamEnded: H2Protocol._on_stream_ended,
    h2.events.StreamReset: H2Protocol._on_stream_reset,
    h2.events.WindowUpdated: H2Protocol._on_window_updated,
    h2.events.RemoteSettingsChanged: H2Protocol._on_settings_changed,
    h2.events.ConnectionTerminated: H2Protocol._on_terminated,
    h2.events.TrailersReceived: H2Protocol._on_trailers,
    h2.events.UnknownFrameReceived: H2Protocol._on_unknown_frame,
}
