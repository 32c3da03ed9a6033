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
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer[: len(PREFACE)]
        if PREFACE.startswith(head) and len(head) < len(PREFACE):
            return  # not enough yet to tell
        self._switch("2" if head == PREFACE else "1.1", self.buffer)

    def connection_lost(self, exc: Exception | None) -> None:
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
        info = self._info(http_version)
        if http_version == "2":
            h2proto = H2Protocol(self.server, info)
            transport.set_protocol(h2proto)
            h2proto.connection_made(transport)
            if data:
                h2proto.data_received(data)
        else:
            h1proto = HTTP1Protocol(self.server, info)
            transport.set_protocol(h1proto)
            h1proto.start_with(transport, data)
