"""Pick the protocol of a new TCP connection: ALPN on TLS, the HTTP/2 connection
preface on cleartext when h2c is on, HTTP/1.1 otherwise. The chosen protocol takes the
transport over with `set_protocol`, so the dispatcher costs nothing afterwards."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from multiplex.protocols.http1 import HTTP1Protocol
from multiplex.protocols.http2 import H2Protocol
from multiplex.protocols.limits import over_connection_limit
from multiplex.streams.seam import ConnectionInfo, ServerState

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class Dispatcher(asyncio.Protocol):
    def __init__(
        self, server: ServerState, tls: bool, proxied_client: tuple[str, int] | None = None
    ) -> None:
        self.server = server
        self.tls = tls
        # The client a PROXY protocol header named; the peer address is the proxy's.
        self.proxied_client = proxied_client
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._shutdown_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        if over_connection_limit(self.server, "TCP"):
            self.transport.abort()  # a reset costs the client least time
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            self._switch("2" if alpn == "h2" else "1.1", b"")
        elif not self.server.config.h2c:
            self._switch("1.1", b"")
        else:
            # Wait for the first bytes to tell HTTP/2 prior knowledge from HTTP/1.1.
            self.server.connections.add(self)

    def shutdown(self) -> None:
        """A cleartext connection still waiting for its first bytes (to tell h2c from
        HTTP/1.1) was accepted just before the shutdown: its client has most likely sent
        a request already, and would not retry it on a new connection, so it gets the
        same grace as an HTTP/1.1 connection without its first request. Once the bytes
        come, the protocol it switches to is told the server is shutting down."""
        if self.transport is None or self._shutdown_timer is not None:
            return
        wait = self.server.config.graceful_first_request_wait
        if wait <= 0:
            self.transport.close()
            return
        self._shutdown_timer = asyncio.get_running_loop().call_later(wait, self._undecided)

    def _undecided(self) -> None:
        self._shutdown_timer = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._cancel_shutdown_timer()
        if self.transport is not None:
            self.transport.abort()

    def _cancel_shutdown_timer(self) -> None:
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer[: len(PREFACE)]
        if PREFACE.startswith(head) and len(head) < len(PREFACE):
            return  # not enough yet to tell
        self._switch("2" if head == PREFACE else "1.1", self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_shutdown_timer()
        self.server.connections.discard(self)

    def _info(self, http_version: str) -> ConnectionInfo:
        transport = self.transport
        assert transport is not None
        extensions: dict[str, Any] = {}
        if self.tls:
            from multiplex.tls import tls_extension_info

            extensions["tls"] = tls_extension_info(transport.get_extra_info("ssl_object"))
        server = _address(transport.get_extra_info("sockname"))
        if server is None:
            sockname = transport.get_extra_info("sockname")
            server = (str(sockname), None) if sockname else None  # type: ignore[assignment]
        return ConnectionInfo(
            http_version,
            "https" if self.tls else "http",
            self.proxied_client or _address(transport.get_extra_info("peername")),
            server,
            extensions,
            self.server.alt_svc,
        )

    def _switch(self, http_version: str, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.server.connections.discard(self)
        self._cancel_shutdown_timer()
        info = self._info(http_version)
        protocol: H2Protocol | HTTP1Protocol
        if http_version == "2":
            protocol = H2Protocol(self.server, info)
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            if data:
                protocol.data_received(data)
        else:
            protocol = HTTP1Protocol(self.server, info)
            transport.set_protocol(protocol)
            protocol.start_with(transport, data)
        if self.server.shutting_down.is_set() and not protocol.closed:
            # The server's shutdown went over the connections before this one had a
            # protocol: it finishes what it was given, then closes.
            protocol.shutdown()
