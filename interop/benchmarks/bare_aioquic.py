"""A bare aioquic HTTP/3 server: the yardstick for what the QUIC and HTTP/3 state
machines allow, with no ASGI, no tasks and no stream layer.

    python -m interop.benchmarks.bare_aioquic --port PORT --certfile CERT --keyfile KEY

aioquic's own asyncio `serve()` and `QuicConnectionProtocol`, with an `H3Connection`
that answers each request from the protocol's event callback with the response the
benchmark app gives for `GET /` (status 200, content-type, content-length, 13 bytes of
body): whatever a real server spends on top of this is the cost of being a server.

The response also carries the two fields multiplex adds to every response by default,
`server` and `date` (formatted at most once a second, as multiplex does), so that both
put the same fields on the wire. Without them its responses were 31.6 bytes a request on
the wire against multiplex's 45.5 (h3cost), and the comparison measured that difference
as much as the servers: more packets to build, encrypt and have acknowledged.

The benchmark harness waits for a server's TCP port to accept; this one opens a TCP
listener on the same port number only after its UDP endpoint is bound, and closes every
connection made to it: it serves nothing over TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from email.utils import formatdate
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent

from interop.benchmarks.apps import HELLO

HELLO_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"text/plain"),
    (b"content-length", str(len(HELLO)).encode()),
]
NOT_FOUND_HEADERS = [
    (b":status", b"404"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"9"),
]
# As multiplex's default `server_header`, whose value it is.
SERVER = (b"server", b"multiplex")


class _Date:
    """The `date` field, formatted at most once a second."""

    second = 0
    field = (b"date", b"")

    @classmethod
    def now(cls) -> tuple[bytes, bytes]:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.field = (b"date", formatdate(second, usegmt=True).encode("ascii"))
        return cls.field


class BareH3Protocol(QuicConnectionProtocol):
    """Answers every request as soon as its headers arrive (a GET has no body)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
        h3 = self._h3
        if h3 is None:
            return
        for h3_event in h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                path = dict(h3_event.headers).get(b":path")
                added = [SERVER, _Date.now()]
                if path == b"/":
                    h3.send_headers(h3_event.stream_id, HELLO_HEADERS + added)
                    h3.send_data(h3_event.stream_id, HELLO, end_stream=True)
                else:
                    h3.send_headers(h3_event.stream_id, NOT_FOUND_HEADERS + added)
                    h3.send_data(h3_event.stream_id, b"not found", end_stream=True)
        # QuicConnectionProtocol.datagram_received transmits after the events of each
        # datagram: aioquic's own per-datagram send, as its example server does.


async def _not_served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def run(host: str, port: int, certfile: str, keyfile: str) -> None:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(certfile, keyfile)
    quic_server = await serve(
        host, port, configuration=configuration, create_protocol=BareH3Protocol
    )
    tcp = await asyncio.start_server(_not_served, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        tcp.close()
        quic_server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="as the peers run"
    )
    args = parser.parse_args()
    runner: Any = asyncio.run
    if args.loop == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(run(args.host, args.port, args.certfile, args.keyfile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
