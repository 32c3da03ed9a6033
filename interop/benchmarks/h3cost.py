"""What HTTP/3 hello requests cost a server, with no socket and no load generator: an
aioquic client in the same process sends batches of GETs on one QUIC connection, its
datagrams go straight into the server's `datagram_received`, and the server's come back
through a fake datagram transport. The same driver serves multiplex's `QuicEndpoint`
and the bare aioquic server of `bare_aioquic` (answers from the event callback, no
ASGI), both on uvloop, both serving `apps.app`'s hello response.

The client's work is in every figure, and it is the same for both servers as long as
they answer with the same packets: so compare the two, and read the difference as what
multiplex spends on top of the bare server. `--batch` requests go out together, as
gtlsclient's (about 16 GETs to a datagram) do, and the next batch waits for every
response of the last one.

    python -m interop.benchmarks.h3cost --server multiplex --requests 5000

Both run with the youngest GC generation's threshold that multiplex's serving process
sets (`gc_young_threshold`, `--gc-young`): the client's garbage shares the collector,
and the comparison is of the two servers' code, not of their GC settings.

`--instructions` runs it under callgrind twice (N and N/2 requests) and prints
instructions per request; `--profile` prints a cProfile of the measured requests;
`--client-time` reports how much of the wall time was the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from interop.benchmarks import callgrind
from interop.benchmarks.apps import HELLO
from multiplex.config import Config

SERVER_ADDR = ("127.0.0.1", 4433)
CLIENT_ADDR = ("127.0.0.1", 50000)
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"localhost:4433"),
    (b":path", b"/"),
    (b"user-agent", b"h3cost"),
]
# The client's clock moves this much per exchange, so its delayed ACKs (1 ms in aioquic)
# go out every round, as a real client's do while it waits for responses.
CLIENT_TICK = 0.002


class FakeDatagramTransport:
    """Keeps what the server sends until the driver hands it to the client."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.endpoint: Any = None  # multiplex's QuicEndpoint, for tests that look inside

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": SERVER_ADDR}.get(name, default)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _certificates() -> tuple[str, str]:
    from multiplex.devcerts import ensure

    certs = ensure()  # the development certificate, made if missing
    return str(certs.cert), str(certs.key)


def _multiplex(transport: FakeDatagramTransport, app: Any = None) -> Callable[[bytes], None]:
    """multiplex's QUIC endpoint serving `app` (the benchmark app by default)."""
    from interop.benchmarks import apps
    from multiplex.config import Config
    from multiplex.protocols.quic import QuicEndpoint, quic_configuration
    from multiplex.streams.seam import ServerState

    cert, key = _certificates()
    config = Config(
        app="interop.benchmarks.apps:app",
        access_log=False,
        certfile=cert,
        keyfile=key,
        quic_bind=[f"{SERVER_ADDR[0]}:{SERVER_ADDR[1]}"],
    )
    state = ServerState(app or apps.app, config, {})
    endpoint = QuicEndpoint(state, quic_configuration(config))
    endpoint.connection_made(transport)  # type: ignore[arg-type]
    transport.endpoint = endpoint
    return lambda data: endpoint.datagram_received(data, CLIENT_ADDR)


def _bare(transport: FakeDatagramTransport) -> Callable[[bytes], None]:
    from interop.benchmarks.bare_aioquic import BareH3Protocol

    cert, key = _certificates()
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(cert, key)
    protocols: dict[bytes, BareH3Protocol] = {}

    def receive(data: bytes) -> None:
        # One client, one connection: aioquic's serve() routes by connection ID; the
        # first datagram makes the connection, as there.
        protocol = next(iter(protocols.values()), None)
        if protocol is None:
            from aioquic.buffer import Buffer
            from aioquic.quic.packet import pull_quic_header

            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            quic = QuicConnection(
                configuration=configuration,
                original_destination_connection_id=header.destination_cid,
            )
            protocol = BareH3Protocol(quic)
            protocol.connection_made(transport)  # type: ignore[arg-type]
            protocols[header.destination_cid] = protocol
        protocol.datagram_received(data, CLIENT_ADDR)

    return receive


FACTORIES: dict[str, Callable[[FakeDatagramTransport], Callable[[bytes], None]]] = {
    "multiplex": _multiplex,
    "bare-aioquic": _bare,
}


class Client:
    """An aioquic HTTP/3 client on a virtual clock, talking to `receive`."""

    def __init__(
        self,
        receive: Callable[[bytes], None],
        transport: FakeDatagramTransport,
        keep: bool = False,
    ) -> None:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, verify_mode=0, server_name="localhost"
        )
        self.quic = QuicConnection(configuration=configuration)
        self.h3 = H3Connection(self.quic)
        self.receive = receive
        self.transport = transport
        self.now = time.monotonic()
        self.open: set[int] = set()
        self.body = 0
        # With `keep`, every response as it came: its fields and its body, by stream.
        self.keep = keep
        self.responses: dict[int, tuple[list[Any], bytearray]] = {}
        self.client_time = 0.0
        self.datagrams_in = 0
        self.datagrams_out = 0
        # While profiling, the profiler is off during the client's own work.
        self.profiler: Any = None

    def _client_begins(self) -> float:
        if self.profiler is not None:
            self.profiler.disable()
        return time.perf_counter()

    def _client_ends(self, start: float) -> None:
        self.client_time += time.perf_counter() - start
        if self.profiler is not None:
            self.profiler.enable()

    def _flush(self) -> None:
        start = self._client_begins()
        out = [data for data, _ in self.quic.datagrams_to_send(now=self.now)]
        self._client_ends(start)
        self.datagrams_out += len(out)
        for data in out:
            self.receive(data)

    def _absorb(self) -> None:
        start = self._client_begins()
        sent, self.transport.sent = self.transport.sent, []
        self.datagrams_in += len(sent)
        self.now += CLIENT_TICK
        for data in sent:
            self.quic.receive_datagram(data, SERVER_ADDR, now=self.now)
        timer = self.quic.get_timer()
        if timer is not None and timer <= self.now:
            self.quic.handle_timer(now=self.now)
        event = self.quic.next_event()
        while event is not None:
            for h3_event in self.h3.handle_event(event):
                if self.keep and isinstance(h3_event, (DataReceived, HeadersReceived)):
                    fields, body = self.responses.setdefault(h3_event.stream_id, ([], bytearray()))
                    if isinstance(h3_event, DataReceived):
                        body += h3_event.data
                    else:
                        fields.append(h3_event.headers)
                if isinstance(h3_event, DataReceived):
                    self.body += len(h3_event.data)
                    if h3_event.stream_ended:
                        self.open.discard(h3_event.stream_id)
                elif isinstance(h3_event, HeadersReceived) and h3_event.stream_ended:
                    self.open.discard(h3_event.stream_id)
            event = self.quic.next_event()
        self._client_ends(start)

    async def exchange(self, done: Callable[[], bool]) -> None:
        """Datagrams both ways, letting the server's loop turn in between, until done."""
        for _ in range(10_000):
            self._flush()
            await asyncio.sleep(0)  # the server's transmit and app tasks run here
            await asyncio.sleep(0)
            self._absorb()
            if done():
                self._flush()  # the ACKs of the last responses
                return
        raise RuntimeError("no progress: the server stopped answering")

    async def handshake(self) -> None:
        self.quic.connect(SERVER_ADDR, now=self.now)
        await self.exchange(lambda: self.quic._handshake_complete)

    async def batch(self, n: int) -> None:
        start = self._client_begins()
        for _ in range(n):
            stream_id = self.quic.get_next_available_stream_id()
            self.h3.send_headers(stream_id, REQUEST, end_stream=True)
            self.open.add(stream_id)
        self._client_ends(start)
        await self.exchange(lambda: not self.open)

    async def keep_open(self, total: int, in_flight: int) -> None:
        """`total` requests, with up to `in_flight` open at any time: after every
        exchange the client tops up to that many, as gtlsclient does within the
        server's stream limit."""
        sent = 0
        while sent < total or self.open:
            start = self._client_begins()
            while sent < total and len(self.open) < in_flight:
                stream_id = self.quic.get_next_available_stream_id()
                self.h3.send_headers(stream_id, REQUEST, end_stream=True)
                self.open.add(stream_id)
                sent += 1
            self._client_ends(start)
            self._flush()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self._absorb()
        self._flush()


def _freeze_date() -> None:
    """Both servers format the `date` field once a second, and each new value is a QPACK
    table insertion that responses cannot use until the client acknowledges it: they
    carry the value whole meanwhile. Under callgrind, 50 times slower, that happened
    every 20 requests or so instead of once in thousands; so the date stands still."""
    from interop.benchmarks import bare_aioquic
    from multiplex.streams import http

    fixed = http.http_date()
    http.http_date = lambda: fixed  # type: ignore[assignment]
    field = (b"date", fixed)
    bare_aioquic._Date.now = staticmethod(lambda: field)  # type: ignore[assignment,method-assign]


async def drive(
    server: str, warmup: int, requests: int, batch: int, in_flight: int, profile: bool
) -> dict[str, Any]:
    _freeze_date()
    transport = FakeDatagramTransport()
    client = Client(FACTORIES[server](transport), transport)
    await client.handshake()

    async def run(n: int) -> None:
        if in_flight:
            await client.keep_open(n, in_flight)
            return
        for _ in range(n // batch):
            await client.batch(batch)

    await run(warmup)
    if in_flight:
        batch = 1  # every request counts
    if client.body != len(HELLO) * (warmup // batch * batch):
        raise RuntimeError(f"{server}: wrong response bodies ({client.body} bytes)")
    gc.collect()
    gc.freeze()  # as multiplex's serve() does, for both servers
    client.client_time = 0.0
    client.datagrams_in = client.datagrams_out = 0
    profiler = None
    if profile:
        import cProfile

        profiler = client.profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    await run(requests)
    elapsed = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        client.profiler = None
        print("The server's share only: the profiler is off while the client works.")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
    done = requests // batch * batch
    return {
        "elapsed": elapsed,
        "requests": done,
        "client": client.client_time,
        "datagrams_in": client.datagrams_in,
        "datagrams_out": client.datagrams_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(FACTORIES), default="multiplex")
    parser.add_argument("--warmup", type=int, default=320)
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--batch", type=int, default=16, help="GETs sent together")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=0,
        help="instead of batches, keep this many requests open (gtlsclient: the server's limit)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the measured requests")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request under callgrind: (run(N) - run(N/2)) / (N/2)",
    )
    parser.add_argument(
        "--gc-young",
        type=int,
        default=Config.__dataclass_fields__["gc_young_threshold"].default,
        help="the youngest GC generation's threshold, for both servers",
    )
    args = parser.parse_args()
    if args.instructions:

        def run_args(n: int) -> list[str]:
            return [
                *("--server", args.server, "--warmup", str(args.warmup), "--requests", str(n)),
                *("--batch", str(args.batch), "--in-flight", str(args.in_flight)),
                *("--gc-young", str(args.gc_young)),
            ]

        count = callgrind.per_request("interop.benchmarks.h3cost", run_args, args.requests)
        print(f"{args.server}: {count:,.0f} instructions/request")
        return
    import uvloop

    _, older, oldest = gc.get_threshold()
    gc.set_threshold(args.gc_young, older, oldest)
    result = uvloop.run(
        drive(args.server, args.warmup, args.requests, args.batch, args.in_flight, args.profile)
    )
    if not args.profile:
        n = result["requests"]
        print(
            f"{args.server}: {result['elapsed'] / n * 1e6:.1f} µs/request in all, "
            f"{(result['elapsed'] - result['client']) / n * 1e6:.1f} without the client's; "
            f"datagrams per request: {result['datagrams_in'] / n:.3f} to the client, "
            f"{result['datagrams_out'] / n:.3f} from it"
        )


if __name__ == "__main__":
    main()
