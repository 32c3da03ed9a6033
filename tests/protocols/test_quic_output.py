"""Our 1-RTT packet writer (quic_output.write_application) against aioquic's
_write_application: the same frames in the same packets, over a connection with many
streams in every state the writer meets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from aioquic.quic import connection as aioquic_connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived
from aioquic.quic.logger import QuicLogger

from multiplex.protocols.quic import CreditedQuicConnection

CLIENT = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 4433)
WINDOW = 16 * 1024
UPLOAD = 100_000  # on one stream, which stays open: it needs MAX_STREAM_DATA


class _InsertionOrderedSet(dict[Any, None]):
    """A set that iterates in insertion order: aioquic appends the streams that sent to
    its queue in a built-in set's order, which follows object addresses; with this
    order in its place, the reference run is deterministic, and puts the served streams
    at the end in the order they were served, as ours does."""

    def add(self, item: Any) -> None:
        self[item] = None


class _Pair:
    """A client and our server connection, in memory, on a clock that only the test
    moves; every datagram the server sends is kept per round, as the frames it carried."""

    def __init__(self, certs: Any) -> None:
        self.now = 1000.0
        client_config = QuicConfiguration(is_client=True, alpn_protocols=["test"], verify_mode=0)
        server_config = QuicConfiguration(is_client=False, alpn_protocols=["test"])
        server_config.load_cert_chain(str(certs.cert), str(certs.key))
        self.logger = QuicLogger()
        server_config.quic_logger = self.logger
        self.client = QuicConnection(configuration=client_config)
        self.client.connect(SERVER, now=self.now)
        first = [data for data, _ in self.client.datagrams_to_send(now=self.now)]
        self.server = CreditedQuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
            stream_window=WINDOW,
            connection_window=1024 * 1024,
        )
        self.trace = self.server._quic_logger
        for data in first:
            self.server.receive_datagram(data, CLIENT, now=self.now)
        self.dropped = 0
        for _ in range(10):
            self.round()
        assert self.server._handshake_complete

    def round(self, drop_every: int = 0, server_first: bool = True) -> None:
        """Server to client, then client to server, then the clock moves on; or only
        client to server (the server then answers with `answer_now`)."""
        self.now += 0.01
        if server_first:
            self.answer_now(drop_every)
        for data, _ in self.client.datagrams_to_send(now=self.now):
            self.server.receive_datagram(data, CLIENT, now=self.now)
        for connection in (self.client, self.server):
            timer = connection.get_timer()
            if timer is not None and timer <= self.now:
                connection.handle_timer(now=self.now)

    def answer_now(self, drop_every: int = 0) -> None:
        """Server to client, at once: as a server answers in the turn a request came,
        before the client's packets are due an acknowledgement."""
        for n, (data, _) in enumerate(self.server.datagrams_to_send(now=self.now)):
            if drop_every and n % drop_every == drop_every - 1:
                self.dropped += 1
                continue
            self.client.receive_datagram(data, SERVER, now=self.now)

    def server_events(self) -> Iterator[Any]:
        event = self.server.next_event()
        while event is not None:
            yield event
            event = self.server.next_event()

    def sent_frames(self) -> list[list[dict[str, Any]]]:
        return [
            event["data"]["frames"]
            for event in self.trace._events
            if event["name"] == "transport:packet_sent"
            and event["data"]["header"]["packet_type"] == "1RTT"
        ]


def _scenario(certs: Any, at_once: bool) -> tuple[list[list[dict[str, Any]]], int]:
    """Requests on 60 streams, then waves of 30 more, answered with 10 bytes to 5 KiB (many per
    packet, and some over several), one reset, one stop, one held after its response, one body
    still coming (MAX_STREAM_DATA), a loss now and then; the 1-RTT frames sent. With
    `at_once`, responses leave in the turn their requests came."""
    pair = _Pair(certs)
    pair.trace._events.clear()
    for n in range(60):
        stream_id = pair.client.get_next_available_stream_id()
        body = b"u" * UPLOAD if n == 7 else b"GET"
        pair.client.send_stream_data(stream_id, body, end_stream=n != 7)
    answered: set[int] = set()
    uploaded = 0
    for turn in range(60):
        drop_every = 2 if turn % 3 == 1 else 0
        pair.round(drop_every, server_first=not at_once)
        for event in pair.server_events():
            if not isinstance(event, StreamDataReceived):
                continue
            if event.stream_id == 28:  # the upload, read as it comes: credit goes back
                pair.server.unread += len(event.data)
                pair.server.consume(28, len(event.data))
                uploaded += len(event.data)
            if event.stream_id in answered:
                continue
            stream_id = event.stream_id
            answered.add(stream_id)
            n = stream_id // 4
            if n == 3:
                pair.server.reset_stream(stream_id, 0x10C)
                continue
            if n == 5:
                pair.server.stop_stream(stream_id, 0x10C)
            if n == 9:
                pair.server.hold(stream_id)
            size = {4: 5000, 8: 1500}.get(n, 10 + n)
            pair.server.send_stream_data(stream_id, bytes([65 + n % 26]) * size, end_stream=True)
        if at_once:
            pair.answer_now(drop_every)
        if turn % 10 == 9:
            # More waves on the same connection, once streams have been discarded.
            for _ in range(30):
                stream_id = pair.client.get_next_available_stream_id()
                pair.client.send_stream_data(stream_id, b"GET", end_stream=True)
    assert len(answered) == 60 + 5 * 30 and pair.dropped > 0
    assert uploaded > WINDOW  # so it took MAX_STREAM_DATA frames
    return pair.sent_frames(), len(pair.server._streams)


def _aioquics(self: Any, *args: Any, **kwargs: Any) -> None:
    """aioquic's _write_application, made deterministic (see _InsertionOrderedSet)."""
    # Only while it writes: the module's other uses of set() stay as they are.
    aioquic_connection.set = _InsertionOrderedSet  # type: ignore[attr-defined]
    try:
        QuicConnection._write_application(self, *args, **kwargs)
    finally:
        del aioquic_connection.set  # type: ignore[attr-defined]


@pytest.mark.parametrize("at_once", [False, True])
def test_packet_writer_agrees_with_aioquic(
    dev_certs: Any, at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `coalesce` off, the same frames in the same packets as aioquic's."""
    monkeypatch.setattr(CreditedQuicConnection, "coalesce", False)
    limits_calls = frame_calls = 0
    ours_limits = CreditedQuicConnection._write_stream_limits
    ours_frame = CreditedQuicConnection._write_stream_frame

    def counted(self: Any, builder: Any, space: Any, stream: Any) -> None:
        nonlocal limits_calls
        limits_calls += 1
        ours_limits(self, builder, space, stream)

    def counted_frame(self: Any, *args: Any, **kwargs: Any) -> int:
        nonlocal frame_calls
        frame_calls += 1
        return ours_frame(self, *args, **kwargs)

    monkeypatch.setattr(CreditedQuicConnection, "_write_stream_limits", counted)
    monkeypatch.setattr(CreditedQuicConnection, "_write_stream_frame", counted_frame)
    ours, ours_left = _scenario(dev_certs, at_once)
    ours_calls, limits_calls = limits_calls, 0
    ours_frames, frame_calls = frame_calls, 0

    with monkeypatch.context() as patched:
        patched.setattr(CreditedQuicConnection, "_write_application", _aioquics)
        theirs, theirs_left = _scenario(dev_certs, at_once)
    theirs_calls = limits_calls
    theirs_frames = frame_calls

    assert len(ours) > 30  # many packets, so the comparison covers something
    assert any(len(frames) > 10 for frames in ours)  # packets with many stream frames
    assert ours == theirs
    assert ours_left == theirs_left
    # The short road was taken: streams whose final size is known were passed over
    # without the call aioquic makes for each ...
    assert 0 < ours_calls < theirs_calls / 2, (ours_calls, theirs_calls)
    # ... and streams offered to a full packet were passed over without the call.
    assert 0 < ours_frames < theirs_frames, (ours_frames, theirs_frames)


def _alone(packets: list[list[dict[str, Any]]], kind: str) -> int:
    return sum(1 for frames in packets if {frame["frame_type"] for frame in frames} == {kind})


def _streams_sent(packets: list[list[dict[str, Any]]]) -> dict[int, tuple[list[int], bool]]:
    """By stream, in the order streams were first sent: the bytes sent (as merged
    ranges) and whether the FIN was. Where an ACK or MAX_STREAMS takes room, frames
    split at other offsets; what each stream got across must not change."""
    out: dict[int, tuple[list[int], bool]] = {}
    for frames in packets:
        for frame in frames:
            if frame["frame_type"] != "stream":
                continue
            ranges, fin = out.get(frame["stream_id"], ([], False))
            ranges = _merged([*ranges, frame["offset"], frame["offset"] + frame["length"]])
            out[frame["stream_id"]] = (ranges, fin or frame["fin"])
    return out


def _merged(bounds: list[int]) -> list[int]:
    pairs = sorted(zip(bounds[::2], bounds[1::2], strict=True))
    merged: list[int] = []
    for start, stop in pairs:
        if merged and start <= merged[-1]:
            merged[-1] = max(merged[-1], stop)
        else:
            merged += [start, stop]
    return merged


def test_coalesced_packets_carry_the_same_streams(
    dev_certs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `coalesce` on (the default), MAX_STREAMS and ACK frames that aioquic sends
    in packets of their own ride in packets that go anyway: fewer packets, and every
    stream's bytes and FIN sent as before."""
    assert CreditedQuicConnection.coalesce
    ours, ours_left = _scenario(dev_certs, at_once=True)
    with monkeypatch.context() as patched:
        patched.setattr(CreditedQuicConnection, "_write_application", _aioquics)
        theirs, theirs_left = _scenario(dev_certs, at_once=True)
    ours_sent, theirs_sent = _streams_sent(ours), _streams_sent(theirs)
    assert list(ours_sent) == list(theirs_sent)
    assert ours_sent == theirs_sent
    assert ours_left == theirs_left
    assert len(ours) < len(theirs), (len(ours), len(theirs))
    assert _alone(ours, "ack") < _alone(theirs, "ack"), (_alone(ours, "ack"), _alone(theirs, "ack"))
