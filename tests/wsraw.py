"""A raw WebSocket client over a plain socket, for what real clients will not do
(invalid UTF-8, ignoring pings, bad handshakes). Frames are parsed with wsproto's
client-side frame layer."""

from __future__ import annotations

import base64
import os
import socket
import struct

from wsproto.frame_protocol import Frame, FrameProtocol, Opcode


class RawWS:
    def __init__(self, port: int, path: str = "/", headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.fp = FrameProtocol(client=True, extensions=[])
        self.frames: list[Frame] = []
        self.eof = False
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        fields.update(headers or {})
        head = f"GET {path} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items() if v is not None
        )
        self.sock.sendall(head.encode() + b"\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }
        self.rest = rest  # the body of a refusal, or the first frames
        if self.status == 101 and rest:
            self.fp.receive_bytes(rest)
            self.rest = b""

    def read_body(self) -> bytes:
        """The body of a non-101 answer (content-length framed)."""
        length = int(self.headers.get("content-length", "0"))
        body = self.rest
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return body

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """A masked frame, built by hand (so it may be invalid)."""
        mask = os.urandom(4)
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(bytes(self.fp.send_data(data)))

    def send_text(self, text: str) -> None:
        self.sock.sendall(bytes(self.fp.send_data(text)))

    def pong(self, payload: bytes) -> None:
        self.sock.sendall(bytes(self.fp.pong(payload)))

    def next_frame(self) -> Frame | None:
        """The next whole frame from the server; None at EOF."""
        while True:
            for frame in self.fp.received_frames():
                return frame
            if self.eof:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
            self.fp.receive_bytes(chunk)

    def until(self, opcode: Opcode) -> Frame:
        """Read frames until one with this opcode (EOF first fails)."""
        while True:
            frame = self.next_frame()
            assert frame is not None, f"EOF before a {opcode.name} frame"
            if frame.opcode is opcode:
                return frame

    def at_eof(self) -> bool:
        """Whether the server closed the TCP connection (after any remaining frames)."""
        while self.next_frame() is not None:
            pass
        return True

    def close(self) -> None:
        self.sock.close()
