"""What a QUIC endpoint does without connection state: the keys for stateless resets
and Retry tokens, and the packet that refuses a connection.

With `--workers N`, the kernel (SO_REUSEPORT) routes each 4-tuple to one worker, but
which one changes whenever the set of sockets changes: a worker replaced, a reload.
A packet for a connection (or a token) made by one worker may then reach another, so
the keys come from one secret the supervisor shares with all its workers, handed over
through a pipe (never the environment, where the app and its children would see it;
never logged). A server without a supervisor keeps per-process random keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_shared_secret: bytes | None = None


def set_shared_secret(secret: bytes | None) -> None:
    """Called by a worker before it serves: every key below derives from `secret`."""
    global _shared_secret
    _shared_secret = secret


def _derive(label: bytes, size: int) -> bytes | None:
    if _shared_secret is None:
        return None
    return hmac.new(_shared_secret, label, hashlib.sha256).digest()[:size]


def stateless_reset_key() -> bytes:
    """The key stateless reset tokens derive from: any worker can then reset a
    connection another one (or an earlier life of its own) had."""
    return _derive(b"multiplex stateless reset", 32) or os.urandom(32)


def retry_token_handler() -> QuicRetryTokenHandler:
    """aioquic's Retry token handler (AES-GCM tokens bound to the client's address),
    with the shared key: a client that got a Retry from one worker may send its token
    to another, e.g. once a reload has replaced the first."""
    handler = QuicRetryTokenHandler()
    key = _derive(b"multiplex retry token", 16)
    if key is not None:
        handler._aead = AESGCM(key)
    return handler


def connection_refused(header: Any, max_datagram_size: int) -> bytes:
    """An Initial packet carrying CONNECTION_CLOSE (CONNECTION_REFUSED), in answer to
    a client's first Initial (RFC 9000 section 5.2.2: a server that refuses a new
    connection SHOULD send one). Costs one key derivation and one small encryption,
    no TLS: the client gives up at once instead of retransmitting until its timeout.
    Smaller than the 1200-byte Initial it answers, so it amplifies nothing."""
    crypto = CryptoPair()
    crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(
        host_cid=os.urandom(8),
        peer_cid=header.source_cid,
        version=header.version,
        is_client=False,
        max_datagram_size=max_datagram_size,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    reason = b"max_connections"
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=8 + len(reason))
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)  # frame type 0: not caused by a frame
    buf.push_uint_var(len(reason))
    buf.push_bytes(reason)
    datagrams, _ = builder.flush()
    return b"".join(datagrams)
