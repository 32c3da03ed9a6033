"""A small blocking WebSocket-over-HTTP/2 client (RFC 8441) for the tests: h2 (client
side) for the connection, wsproto's FrameProtocol (client side) for each WebSocket."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.errors import ErrorCodes
from wsproto.frame_protocol import FrameProtocol, Opcode


class WSStream:
    def __init__(self, stream_id: int, websocket: bool) -> None:
        self.stream_id = stream_id
        self.fp = FrameProtocol(client=True, extensions=[]) if websocket else None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.messages: list[str | bytes] = []
        self.parts: list[Any] = []
        self.pongs: list[bytes] = []
        self.close: tuple[int, str] | None = None
        self.ended = False
        self.reset_code: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])


class WSH2Client:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
            assert sock.selected_alpn_protocol() == "h2"
        self.sock = sock
        self.scheme = b"https" if tls is not None else b"http"
        self.authority = f"127.0.0.1:{port}".encode()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1},
        )
        self.conn.initiate_connection()
        self.streams: dict[int, WSStream] = {}
        self.remote_settings: dict[int, int] = {}
        self.terminated = False
        self.flush()
        self.until(lambda: bool(self.remote_settings))

    # --- plumbing ------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.terminated = True
            return
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()

    def until(self, done: Any) -> None:
        while not done():
            assert not self.terminated, "connection closed"
            self.pump()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            for code, change in event.changed_settings.items():
                self.remote_settings[int(code)] = change.new_value
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.headers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None:
                if stream.fp is not None and stream.status == 200:
                    stream.fp.receive_bytes(event.data)
                    self._frames(stream)
                else:
                    stream.body += event.data
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset_code = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True

    def _frames(self, stream: WSStream) -> None:
        assert stream.fp is not None
        for frame in stream.fp.received_frames():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                stream.parts.append(frame.payload)
                if frame.message_finished:
                    parts, stream.parts = stream.parts, []
                    text = isinstance(parts[0], str) if parts else frame.opcode is Opcode.TEXT
                    stream.messages.append("".join(parts) if text else b"".join(parts))
            elif frame.opcode is Opcode.PING:
                self._send(stream.stream_id, bytes(stream.fp.pong(frame.payload)))  # type: ignore[arg-type]
            elif frame.opcode is Opcode.PONG:
                stream.pongs.append(bytes(frame.payload))  # type: ignore[arg-type]
            elif frame.opcode is Opcode.CLOSE:
                code, reason = frame.payload  # type: ignore[misc]
                stream.close = (int(code), reason)

    def _send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Send within the flow-control windows, reading WINDOW_UPDATEs as needed."""
        while True:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0 and data:
                self.pump()
                continue
            chunk, data = data[:window], data[window:]
            self.conn.send_data(stream_id, chunk, end_stream=end and not data)
            self.flush()
            if not data:
                return

    # --- requests and WebSockets -----------------------------------------------------

    def websocket(
        self, path: str = "/", protocol: bytes = b"websocket", version: bytes = b"13"
    ) -> WSStream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = WSStream(stream_id, True)
        self.conn.send_headers(
            stream_id,
            [
                (b":method", b"CONNECT"),
                (b":protocol", protocol),
                (b":scheme", self.scheme),
                (b":path", path.encode()),
                (b":authority", self.authority),
                (b"sec-websocket-version", version),
            ],
        )
        self.flush()
        self.until(lambda: bool(stream.headers) or stream.reset_code is not None)
        return stream

    def connect_plain(self) -> WSStream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = WSStream(stream_id, False)
        self.conn.send_headers(
            stream_id, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        )
        self.flush()
        self.until(lambda: bool(stream.headers) or stream.reset_code is not None)
        return stream

    def get(self, path: str = "/") -> WSStream:
        """Start a GET; `until(lambda: s.ended)` to wait for it."""
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = WSStream(stream_id, False)
        self.conn.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", self.scheme),
                (b":path", path.encode()),
                (b":authority", self.authority),
            ],
            end_stream=True,
        )
        self.flush()
        return stream

    def send(self, stream: WSStream, message: str | bytes) -> None:
        assert stream.fp is not None
        self._send(stream.stream_id, bytes(stream.fp.send_data(message)))

    def recv(self, stream: WSStream) -> str | bytes:
        self.until(lambda: bool(stream.messages) or stream.close is not None)
        assert stream.messages, f"closed instead: {stream.close}"
        return stream.messages.pop(0)

    def close(self, stream: WSStream, code: int = 1000, reason: str = "") -> None:
        """Our close frame, the server's answer, then END_STREAM both ways."""
        assert stream.fp is not None
        self._send(stream.stream_id, bytes(stream.fp.close(code, reason)))
        self.until(lambda: stream.close is not None)
        if not self.conn.streams[stream.stream_id].closed:
            self._send(stream.stream_id, b"", end=True)
        self.until(lambda: stream.ended or stream.reset_code is not None)

    def reset(self, stream: WSStream) -> None:
        self.conn.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        self.flush()

    def shutdown(self) -> None:
        self.sock.close()
