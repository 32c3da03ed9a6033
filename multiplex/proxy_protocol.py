"""The PROXY protocol, v1 and v2 (HAProxy's `send-proxy` / `send-proxy-v2`), on TCP and
unix listeners: a load balancer that forwards raw TCP names the real client in a header
sent before anything else, TLS included.

The header comes before the TLS ClientHello, so it has to be read from the raw socket
before TLS starts, and not one byte beyond it: what follows belongs to TLS (or HTTP).
asyncio's `start_tls` cannot be handed bytes a protocol has already read, so these
listeners accept connections themselves, read exactly the header (v2 announces its
length; v1 is found with MSG_PEEK), and only then give the socket to the event loop with
`connect_accepted_socket`, TLS and all. From there on a connection is like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from multiplex.config import Config
from multiplex.settings import Bind

logger = logging.getLogger("multiplex")

V1_MAX = 107  # the longest v1 line, CRLF included (the spec's own figure)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
Address = tuple[str, int]


class ProxyHeaderError(Exception):
    """A missing or malformed PROXY header: the connection is closed."""


# --- parsing --------------------------------------------------------------------------------


def parse_v1(line: bytes) -> Address | None:
    """A v1 line, CRLF included -> the source address; None for `UNKNOWN` (then the
    connection's own peer address stands)."""
    if len(line) > V1_MAX:
        raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
    if not line.startswith(b"PROXY ") or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("v1 header must be 'PROXY ...\\r\\n'")
    parts = line[:-2].split(b" ")
    if parts[1] == b"UNKNOWN":
        return None  # the rest of the line, if any, is to be ignored
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyHeaderError(f"v1 header: unknown protocol or field count: {line[:40]!r}")
    version = 4 if parts[1] == b"TCP4" else 6
    try:
        source = ipaddress.ip_address(parts[2].decode("ascii"))
        destination = ipaddress.ip_address(parts[3].decode("ascii"))
        ports = [int(p) for p in parts[4:6] if p.isdigit() and (p == b"0" or p[:1] != b"0")]
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"v1 header: bad address in {line[:60]!r}") from None
    if source.version != version or destination.version != version:
        raise ProxyHeaderError(f"v1 header: addresses are not {parts[1].decode()}")
    if len(ports) != 2 or not all(0 <= port <= 65535 for port in ports):
        raise ProxyHeaderError("v1 header: bad port")
    return str(source), ports[0]


def parse_v2(head: bytes, body: bytes) -> Address | None:
    """The 16-byte v2 header and the `len` bytes after it -> the source address; None for
    LOCAL (the proxy's own health check) and for families with no IP address."""
    if head[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("v2 header: bad signature")
    version, command = head[12] >> 4, head[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2 header: unknown version {version}")
    if command == 0:
        return None  # LOCAL: use the connection's own addresses
    if command != 1:
        raise ProxyHeaderError(f"v2 header: unknown command {command}")
    family, transport = head[13] >> 4, head[13] & 0x0F
    if family > 3 or transport > 2:
        raise ProxyHeaderError(f"v2 header: unknown address family byte {head[13]:#04x}")
    if family == 1:  # AF_INET: 4 + 4 address bytes, 2 + 2 port bytes
        if len(body) < 12:
            raise ProxyHeaderError("v2 header: too short for TCP4 addresses")
        return str(ipaddress.IPv4Address(body[0:4])), int.from_bytes(body[8:10], "big")
    if family == 2:  # AF_INET6: 16 + 16, 2 + 2
        if len(body) < 36:
            raise ProxyHeaderError("v2 header: too short for TCP6 addresses")
        return str(ipaddress.IPv6Address(body[0:16])), int.from_bytes(body[32:34], "big")
    return None  # UNSPEC or AF_UNIX: no (host, port) to give; TLVs are skipped either way


# --- reading from the raw socket -----------------------------------------------------------


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ProxyHeaderError(f"connection closed within the header ({len(data)} of {n})")
        data += chunk
    return data


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    """Up to `n` bytes that have arrived, left in the socket."""
    while True:
        try:
            return sock.recv(n, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            pass
        readable: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def read_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Address | None:
    """Consume the PROXY header, and nothing after it; the source address it names."""
    start = await _recv_exactly(loop, sock, 5)
    if start == b"PROXY":
        line = start
        while True:
            # Peeked bytes up to a newline are all ours; without a newline, all of them are
            # (the line is not over), so take them and look again when more arrive.
            seen = await _peek(loop, sock, V1_MAX - len(line))
            if not seen:
                raise ProxyHeaderError("connection closed within the v1 header")
            end = seen.find(b"\n")
            line += await _recv_exactly(loop, sock, end + 1 if end >= 0 else len(seen))
            if end >= 0:
                return parse_v1(line)
            if len(line) >= V1_MAX:
                raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
    if start != V2_SIGNATURE[:5]:
        raise ProxyHeaderError(f"no PROXY header (connection starts with {start!r})")
    head = start + await _recv_exactly(loop, sock, 11)
    if head[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("v2 header: bad signature")
    length = int.from_bytes(head[14:16], "big")
    return parse_v2(head, await _recv_exactly(loop, sock, length))


# --- the listener ----------------------------------------------------------------------------

ProtocolFactory = Callable[[Address | None], asyncio.BaseProtocol]
# Looks at a connection before TLS starts (ACME's tls-alpn-01 peeks at the ClientHello):
# the context to use and, for connections that are not HTTP, their own protocol
# factory; None drops the connection.
TlsChooser = Callable[
    [socket.socket],
    Awaitable[tuple[ssl.SSLContext, Callable[[], asyncio.BaseProtocol] | None] | None],
]


class ProxyProtocolListener(asyncio.AbstractServer):
    """Accepts on `sockets`, reads each connection's PROXY header within `timeout`, then
    hands the connection to the loop (with TLS when `ssl_context`). Offers what the
    Server uses of asyncio.Server: `sockets`, `close()`, `wait_closed()`.

    Also the listener for anything else that must see a connection's first bytes before
    TLS does: `proxy_header=False` skips the PROXY header, and `choose_tls` picks the
    TLS context per connection."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: ProtocolFactory,
        ssl_context: ssl.SSLContext | None,
        config: Config,
        *,
        proxy_header: bool = True,
        choose_tls: TlsChooser | None = None,
    ) -> None:
        self.sockets = sockets
        self.factory = factory
        self.ssl_context = ssl_context
        self.config = config
        self.proxy_header = proxy_header
        self.choose_tls = choose_tls
        self.loop = asyncio.get_running_loop()
        self.accepting = [self.loop.create_task(self._accept(sock)) for sock in sockets]
        self.starting: set[asyncio.Task[None]] = set()  # connections still in their header

    async def _accept(self, listening: socket.socket) -> None:
        while True:
            try:
                sock, _ = await self.loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and friends: wait a little, as asyncio does
                logger.error("accept() failed: %s", exc)
                await asyncio.sleep(1)
                continue
            task = self.loop.create_task(self._start(sock))
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    async def _start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        client = None
        if self.proxy_header:
            try:
                async with _timeout(self.config.proxy_protocol_timeout):
                    client = await read_header(self.loop, sock)
            except (ProxyHeaderError, OSError, TimeoutError) as exc:
                reason = "no header within proxy_protocol_timeout" if _is_timeout(exc) else exc
                logger.warning("PROXY protocol: %s from %s; closing the connection", reason, peer)
                sock.close()
                return
            except BaseException:
                sock.close()
                raise
        ssl_context = self.ssl_context
        factory: Callable[[], asyncio.BaseProtocol] = lambda: self.factory(client)  # noqa: E731
        if self.choose_tls is not None:
            try:
                async with _timeout(self.config.tls_handshake_timeout):
                    chosen = await self.choose_tls(sock)
            except (OSError, TimeoutError):
                chosen = None
            except BaseException:
                sock.close()
                raise
            if chosen is None:
                sock.close()
                return
            ssl_context = chosen[0]
            factory = chosen[1] or factory
        try:
            await self.loop.connect_accepted_socket(
                factory,
                sock,
                ssl=ssl_context,
                ssl_handshake_timeout=(self.config.tls_handshake_timeout if ssl_context else None),
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # A failed handshake: asyncio's own listeners drop these quietly too.
            logger.debug("connection from %s failed to start: %r", peer, exc)
            sock.close()

    # --- asyncio.AbstractServer ------------------------------------------------------------

    def close(self) -> None:
        for task in (*self.accepting, *self.starting):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self.accepting, *self.starting, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def is_serving(self) -> bool:
        return not all(task.done() for task in self.accepting)

    async def start_serving(self) -> None:
        return None  # serving from construction

    async def serve_forever(self) -> None:
        await asyncio.gather(*self.accepting)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError))


@contextlib.asynccontextmanager
async def _timeout(seconds: float) -> Any:
    """asyncio.timeout for Python 3.10 too: cancel the body after `seconds`."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        yield
    except asyncio.CancelledError:
        if expired:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()


def bind_sockets(where: Bind, backlog: int) -> list[socket.socket]:
    """Listening sockets for one `--bind`, as loop.create_server would make them."""
    if where.kind == "fd":
        assert where.fd is not None
        sockets = [socket.socket(fileno=where.fd)]
    elif where.kind == "unix":
        assert where.path is not None
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(where.path).st_mode):
                os.unlink(where.path)  # a stale socket from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where.path)
        sockets = [sock]
    else:
        sockets = []
        infos = socket.getaddrinfo(
            where.host, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # As asyncio does: [::] is IPv6 only, 0.0.0.0 gets its own socket.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
    for sock in sockets:
        sock.listen(backlog)
        sock.setblocking(False)
    return sockets
