"""A WebTransport-over-HTTP/3 test client on aioquic (H3Connection with WebTransport on).

`wt_connect(port, ca_cert)` yields a `WTClient`; `session(path)` sends the extended
CONNECT and returns a `Session` that records what the server sends: its response,
datagrams, streams (by ID, with their bytes and whether they ended or were reset) and
the capsules on the CONNECT stream.

aioquic's client does not mark the bidirectional WebTransport streams it opens itself,
so the server's replies on them would be parsed as HTTP/3 frames and lost: `open_stream`
sets the stream's frame type and session in H3Connection's per-stream state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection, H3Stream
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration

CLOSE_SESSION = 0x2843


class Session:
    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.datagrams: list[bytes] = []
        self.streams: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.capsules = bytearray()
        self.connect_ended = False
        loop = asyncio.get_running_loop()
        self.answered: asyncio.Future[None] = loop.create_future()
        self.changed = asyncio.Event()

    async def until(self, condition: Any, timeout: float = 20) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


class WTClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.sessions: dict[int, Session] = {}
        self._stream_session: dict[int, int] = {}
        self.terminated: quic_events.ConnectionTerminated | None = None

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.ConnectionTerminated):
            self.terminated = event
        if isinstance(event, quic_events.StreamReset):
            session = self.sessions.get(self._stream_session.get(event.stream_id, -1))
            if session is not None:
                session.resets[event.stream_id] = event.error_code
                session.changed.set()
        for h3_event in self.h3.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None and not session.answered.done():
                session.headers = event.headers
                session.status = int(dict(event.headers)[b":status"])
                session.answered.set_result(None)
                if event.stream_ended:
                    session.connect_ended = True
                session.changed.set()
        elif isinstance(event, DataReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                session.capsules += event.data
                session.connect_ended |= event.stream_ended
                session.changed.set()
        elif isinstance(event, WebTransportStreamDataReceived):
            session = self.sessions.get(event.session_id)
            if session is not None:
                self._stream_session[event.stream_id] = event.session_id
                session.streams.setdefault(event.stream_id, bytearray()).extend(event.data)
                if event.stream_ended:
                    session.ended.add(event.stream_id)
                session.changed.set()
        elif isinstance(event, DatagramReceived):
            session = self.sessions.get(event.stream_id)
            if session is not None:
                session.datagrams.append(event.data)
                session.changed.set()

    async def session(self, path: str, timeout: float = 10) -> Session:
        stream_id = self._quic.get_next_available_stream_id()
        session = self.sessions[stream_id] = Session(stream_id)
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
                (b":protocol", b"webtransport"),
                (b"origin", b"https://localhost"),
            ],
        )
        self.transmit()
        await asyncio.wait_for(session.answered, timeout)
        return session

    def open_stream(self, session: Session, unidirectional: bool = False) -> int:
        stream_id = self.h3.create_webtransport_stream(
            session.session_id, is_unidirectional=unidirectional
        )
        if not unidirectional:
            state = self.h3._stream.setdefault(stream_id, H3Stream(stream_id))
            state.frame_type = FrameType.WEBTRANSPORT_STREAM
            state.session_id = session.session_id
        self._stream_session[stream_id] = session.session_id
        self.transmit()
        return stream_id

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end)
        self.transmit()

    def datagram(self, session: Session, data: bytes) -> None:
        self.h3.send_datagram(session.session_id, data)
        self.transmit()

    def close_session(self, session: Session, code: int = 0, reason: bytes = b"") -> None:
        payload = code.to_bytes(4, "big") + reason
        capsule = encode_uint_var(CLOSE_SESSION) + encode_uint_var(len(payload)) + payload
        self.h3.send_data(session.session_id, capsule, end_stream=True)
        self.transmit()


@asynccontextmanager
async def wt_connect(port: int, ca_cert: str) -> AsyncIterator[WTClient]:
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name="localhost",
        max_datagram_frame_size=65536,
    )
    configuration.load_verify_locations(ca_cert)
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=WTClient
    ) as client:
        yield cast(WTClient, client)
