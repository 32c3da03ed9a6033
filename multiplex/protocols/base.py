"""What every TCP connection protocol shares: the transport, write backpressure,
registration with the server for graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from multiplex.errors import ClientDisconnected
from multiplex.streams.seam import ConnectionInfo, ServerState

logger = logging.getLogger("multiplex")


class BaseConnection(asyncio.Protocol):
    """Owns one transport. Subclasses own one sans-I/O state machine each."""

    transport: asyncio.Transport

    def __init__(self, server: ServerState, info: ConnectionInfo) -> None:
        self.server = server
        self.config = server.config
        self.info = info
        self.closed = False
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._stall_timer: asyncio.TimerHandle | None = None
        self._socket_transport: object = None  # see _release_socket_transport
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        # Pause writes (and so `send()`) once this much is queued in the transport.
        self.transport.set_write_buffer_limits(high=self.config.write_buffer_high)
        self.server.connections.add(self)
        # Under asyncio's TLS the socket's own transport is below the SSL layer, which
        # lets go of it before telling us the connection is lost: found now.
        ssl_layer = getattr(transport, "_ssl_protocol", None)
        self._socket_transport = getattr(ssl_layer, "_transport", None) or transport

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(
                self.config.send_stall_timeout, self._send_stalled
            )

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._wake_drain()

    def _send_stalled(self) -> None:
        """The peer has not read enough of what we queued for `send_stall_timeout`."""
        self._stall_timer = None
        if self.closed or not self.write_paused:
            return
        logger.warning(
            "Connection from %s read too little for send_stall_timeout = %s s"
            " (%d bytes queued): closing",
            self.info.client,
            self.config.send_stall_timeout,
            self.transport.get_write_buffer_size(),
        )
        self.abort()

    def _wake_drain(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        while self.write_paused:
            if self.closed:
                raise ClientDisconnected("connection closed")
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.closed:
            raise ClientDisconnected("connection closed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._wake_drain()
        self._release_socket_transport()

    def _release_socket_transport(self) -> None:
        """asyncio's socket transport (the selector event loop's, not uvloop's) keeps
        its read callback, a bound method of itself, after the connection is lost: a
        reference cycle that left the transport and its socket to the cyclic collector.
        CPython clears it in close() from 3.12 on (gh-100348), still not when the
        transport is aborted or fails; this does the same for every way a connection
        ends. Safe: by connection_lost the transport has removed its reader and closed
        its socket, so nothing calls that callback again."""
        transport, self._socket_transport = self._socket_transport, None
        if getattr(transport, "_read_ready_cb", None) is not None:
            transport._read_ready_cb = None  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close after what is queued has been written."""
        if not self.closed:
            self.closed = True
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: finish in-flight requests, accept no new ones."""
        raise NotImplementedError

    def abort(self) -> None:
        """Hard stop at the end of the graceful timeout."""
        self.closed = True
        self.transport.abort()
