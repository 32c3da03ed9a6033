"""Listeners, lifespan, signals and graceful shutdown.

`run(config)` is what the CLI calls; `Server` is the same thing in pieces, for embedding
and for tests that need a live server in their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from multiplex.app import ASGIApp, adapt_app, load_app
from multiplex.config import Config
from multiplex.errors import StartupError
from multiplex.lifespan import Lifespan
from multiplex.protocols.dispatch import Dispatcher
from multiplex.settings import parse_bind
from multiplex.streams.seam import ServerState

if TYPE_CHECKING:
    from multiplex.acme import AcmeManager
    from multiplex.certificates import CertStore
    from multiplex.protocols.quic import QuicEndpoint

logger = logging.getLogger("multiplex")

# Loop turns a shutdown lets pass between no longer accepting and closing the listeners,
# so that connections already accepted reach connection_made (see `Server.shutdown`):
# two for asyncio, one more in case a callback on the accept path schedules another.
ACCEPTED_TURNS = 3


class Server:
    def __init__(
        self, config: Config, app: ASGIApp | None = None, *, reuse_port: bool = False
    ) -> None:
        self.config = config
        self._app = app
        # A worker under the supervisor shares its TCP and UDP ports with its siblings.
        self.reuse_port = reuse_port
        self.listeners: list[asyncio.Server] = []
        self.quic_endpoints: list[QuicEndpoint] = []
        self.state: ServerState | None = None
        self.lifespan: Lifespan | None = None
        self.certificates: CertStore | None = None
        self.acme: AcmeManager | None = None
        self.should_exit = asyncio.Event()

    @property
    def addresses(self) -> list[Any]:
        """Every bound address (real ports when 0 was asked for)."""
        return [sock.getsockname() for listener in self.listeners for sock in listener.sockets]

    async def start(self) -> None:
        config = self.config
        app = adapt_app(self._app, config) if self._app is not None else load_app(config)
        ssl_context: ssl.SSLContext | None = None
        if config.tls:
            from multiplex.certificates import CertStore

            self.certificates = CertStore(config)
            self.certificates.load()
            if config.acme_domain:
                from multiplex.acme import AcmeManager

                self.acme = AcmeManager(config, self.certificates)
                self.acme.load_cached()
            ssl_context = self.certificates.base
        lifespan_state: dict[str, Any] = {}
        self.lifespan = Lifespan(app, config, lifespan_state)
        await self.lifespan.startup()
        self.state = ServerState(app, config, lifespan_state)
        self.state.access_log = config.access_log and logging.getLogger(
            "multiplex.access"
        ).isEnabledFor(logging.INFO)
        try:
            if config.quic_bind:
                await self._listen_quic()
            for bind in config.bind:
                self.listeners.append(await self._listen(bind, ssl_context))
            if self.acme is not None:
                await self.acme.start(self.addresses)
        except BaseException:
            if self.acme is not None:
                await self.acme.stop()
            for listener in self.listeners:
                listener.close()
            for endpoint in self.quic_endpoints:
                endpoint.close()
            await self.lifespan.shutdown()
            raise
        scheme = "https" if ssl_context else "http"
        protocols = (
            ", ".join(config.alpn_protocols)
            if ssl_context
            else ("http/1.1, h2c" if config.h2c else "http/1.1")
        )
        for address in self.addresses:
            logger.info("Listening on %s (%s)", _url(scheme, address), protocols)
        for endpoint in self.quic_endpoints:
            logger.info("Listening on %s (h3, UDP)", _url("https", endpoint.address))
        if self.certificates is not None:
            self.certificates.start_watching()

    def reload_certificates(self) -> bool:
        """Re-read the certificate files: new TCP and QUIC handshakes get the new ones,
        open connections keep theirs. SIGHUP calls this in a single-process server (a
        supervisor's SIGHUP restarts its workers instead, which reloads them too)."""
        if self.certificates is None:
            return False
        return self.certificates.reload()

    async def _listen_quic(self) -> None:
        from multiplex.protocols.quic import QuicEndpoint, quic_configuration

        state = self.state
        assert state is not None
        configuration = quic_configuration(self.config, self.certificates)
        loop = asyncio.get_running_loop()
        for bind in self.config.quic_bind:
            where = parse_bind(bind)
            if where.kind != "tcp" or where.host is None or where.port is None:
                raise StartupError(f"--quic-bind {bind}: QUIC needs a host:port address")
            try:
                _, endpoint = await loop.create_datagram_endpoint(
                    lambda: QuicEndpoint(state, configuration, self.certificates),
                    local_addr=(where.host, where.port),
                    reuse_port=self.reuse_port or None,
                )
            except OSError as exc:
                raise StartupError(f"cannot listen on UDP {bind}: {exc.strerror or exc}") from None
            self.quic_endpoints.append(endpoint)
        port = self.quic_endpoints[0].address[1] if self.quic_endpoints[0].address else 0
        # RFC 9114 section 3.1.1: tell TCP clients where HTTP/3 is.
        state.alt_svc = [(b"alt-svc", f'h3=":{port}"; ma=86400'.encode())]

    async def _listen(self, bind: str, ssl_context: ssl.SSLContext | None) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        state = self.state
        assert state is not None
        tls = ssl_context is not None

        def factory() -> Dispatcher:
            return Dispatcher(state, tls)

        where = parse_bind(bind)
        common: dict[str, Any] = {"backlog": self.config.backlog}
        if ssl_context is not None:
            common["ssl"] = ssl_context
            common["ssl_handshake_timeout"] = self.config.tls_handshake_timeout
        try:
            choose_tls = self.acme.choose_tls if self.acme is not None else None
            if choose_tls is not None and ssl_context is not None and where.kind != "unix":
                # tls-alpn-01 must see the ClientHello before TLS does.
                return _proxy_protocol_listener(where, state, ssl_context, self.config, choose_tls)
            if self.config.proxy_protocol:
                return _proxy_protocol_listener(where, state, ssl_context, self.config)
            if where.kind == "unix":
                assert where.path is not None
                with contextlib.suppress(FileNotFoundError):
                    if os.path.exists(where.path) and _is_socket(where.path):
                        os.unlink(where.path)  # a stale socket from an earlier run
                return await loop.create_unix_server(factory, where.path, **common)
            if where.kind == "fd":
                assert where.fd is not None
                sock = socket.socket(fileno=where.fd)
                if sock.family == socket.AF_UNIX:
                    return await loop.create_unix_server(factory, sock=sock, **common)
                return await loop.create_server(factory, sock=sock, **common)
            return await loop.create_server(
                factory,
                where.host,
                where.port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                **common,
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from None

    async def serve(self) -> None:
        """Serve until `should_exit` is set, then shut down gracefully."""
        await self.should_exit.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        state = self.state
        if state is None:
            return
        logger.info("Shutting down: no new connections; waiting for in-flight requests")
        state.shutting_down.set()
        if self.certificates is not None:
            self.certificates.stop_watching()
        if self.acme is not None:
            await self.acme.stop()
        # Accepting stops first, closing comes a few loop turns later. A connection the
        # loop accepted just before is not among `state.connections` until its
        # protocol's connection_made has run: asyncio makes its transport in a task one
        # turn after accept() and calls connection_made one turn after that (uvloop
        # does both within the turn it accepts). Were the walk and the wait below to
        # miss it, the worker would exit with it open, its request unanswered (the
        # client sees a reset, or "server disconnected"). And asyncio (3.11 at least)
        # silently drops a connection whose transport is made after Server.close():
        # the transport's `server._attach()` asserts the server is open. Connections
        # whose TLS handshake is still running are not waited for: no request has been
        # sent on them yet.
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            if isinstance(listener, asyncio.Server):
                # asyncio's accept callback is a reader on each listening socket (uvloop
                # accepts through libuv, and has no such gap).
                for sock in listener.sockets:
                    loop.remove_reader(sock.fileno())
        for _ in range(ACCEPTED_TURNS):
            await asyncio.sleep(0)
        for listener in self.listeners:
            listener.close()
        for connection in list(state.connections):
            connection.shutdown()
        deadline = asyncio.get_running_loop().time() + self.config.graceful_timeout
        while state.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if state.connections:
            logger.warning(
                "Graceful timeout: closing %d connection(s) with requests in flight",
                len(state.connections),
            )
            for connection in list(state.connections):
                connection.abort()
        await self._cancel_app_tasks()
        for endpoint in self.quic_endpoints:
            endpoint.close()
        for listener in self.listeners:
            await listener.wait_closed()
        if self.lifespan is not None:
            await self.lifespan.shutdown()
        self.state = None
        logger.info("Stopped")

    async def _cancel_app_tasks(self) -> None:
        assert self.state is not None
        tasks = list(self.state.tasks)
        if tasks:
            await asyncio.sleep(0)  # let closes arrive as http.disconnect first
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _proxy_protocol_listener(
    where: Any,
    state: ServerState,
    ssl_context: ssl.SSLContext | None,
    config: Config,
    choose_tls: Any = None,
) -> asyncio.Server:
    """A listener that accepts connections itself: for the PROXY protocol header, and
    for ACME's tls-alpn-01 (`choose_tls`), both of which come before TLS starts."""
    from multiplex.proxy_protocol import ProxyProtocolListener, bind_sockets

    def factory(client: tuple[str, int] | None) -> Dispatcher:
        return Dispatcher(state, ssl_context is not None, client)

    sockets = bind_sockets(where, config.backlog)
    listener = ProxyProtocolListener(
        sockets,
        factory,
        ssl_context,
        config,
        proxy_header=config.proxy_protocol,
        choose_tls=choose_tls,
    )
    # Not an asyncio.Server, but has what Server uses of one (sockets, close, wait_closed).
    return cast(asyncio.Server, listener)


def _is_socket(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def _url(scheme: str, address: Any) -> str:
    if isinstance(address, tuple):
        host = address[0]
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{address[1]}"
    return f"{scheme}+unix://{address}"


def freeze_startup_objects() -> None:
    """Move what exists once the server is up (modules, the app, config, TLS contexts:
    about 25,000 objects for the benchmark app) out of the garbage collector's sight.
    Requests keep promoting a few survivors into the oldest generation, and each time
    enough have, CPython's full collection walks every one of those startup objects
    again, though they live as long as the process: under h2load that was about 3 % of
    the server's CPU (0.25 s of 9 s, gc.callbacks), and about 0.02 s after. Collected
    first, so no garbage is frozen with them. Only the process that serves does this
    (`serve`), not a test or an embedding that runs `Server` in a process of its own."""
    gc.collect()
    gc.freeze()


def pace_collections(config: Config) -> None:
    """Raise the youngest generation's threshold to `gc_young_threshold`.

    CPython collects generation 0 once net container allocations pass 700. No request
    leaves cyclic garbage (tests/protocols/test_http2_lifetime.py), so what passes 700 is
    only the transient peak of live objects: under h2load -c100 -m10 a loop turn reads up
    to 1,000 new streams, about 17 container objects each (h2's stream, the ASGI stream,
    its scope, the app task and its coroutine, context and handle), all alive until their
    tasks run. Collections then start mid-turn, find nothing, and promote those objects
    into generations 1 and 2, whose collections walk them again: 8 % of the server's CPU
    at -c100 against 2 % at -c10 (gc.callbacks, thread CPU time). With 20,000 they all but
    stop (0.3 %; h2 TLS, h2c, HTTP/1.1 and HTTP/3 measured, none worse), while an app that
    does make cyclic garbage still has it collected, after 20,000 net allocations rather
    than 700. Only the serving process does this, like freeze_startup_objects."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(config.gc_young_threshold, older, oldest)


async def serve(
    config: Config,
    app: ASGIApp | None = None,
    *,
    reuse_port: bool = False,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `ready` is called once every port listens."""
    server = Server(config, app, reuse_port=reuse_port)
    await server.start()
    freeze_startup_objects()
    pace_collections(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, server.should_exit.set)
    if server.certificates is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    if ready is not None:
        # After the handlers: from now on, SIGTERM means a graceful stop.
        ready()
    await server.serve()


def run(config: Config) -> int:
    """Run until SIGINT/SIGTERM; the CLI has chosen the event loop policy already."""
    asyncio.run(serve(config))
    return 0
