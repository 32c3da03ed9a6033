"""Small blocking-socket helpers shared by tests that speak raw bytes."""

from __future__ import annotations

import socket


def read_to_eof(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
