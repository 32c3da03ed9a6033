"""Memory per idle connection: what an open, quiet connection costs a server.

    python -m interop.benchmarks.idle_memory [-n 300] [--servers multiplex,hypercorn-uvloop]

For each server (started as the benchmark harness starts it, on the benchmark app, with
its idle timeouts lifted so nothing closes during the measurement) and each protocol,
one at a time on a fresh server:

- HTTP/2: N TLS connections (ALPN h2), one `GET /` each, then left open and silent;
- HTTP/3: N QUIC connections (aioquic), one `GET /` each, then left open and silent.

The figure is the growth of the server's resident set (VmRSS, summed over its
processes) from just before the first connection to a moment after the last request
has been answered, divided by N, in KiB. A few connections are opened and closed first,
so that what a first connection costs once (imported code paths, TLS context caches)
is not counted per connection. Loopback only; servers are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

from interop.benchmarks import servers

RESULTS = Path(__file__).resolve().parent / "results"
WARM_UP = 5
SETTLE = 1.0  # seconds after the last response before RSS is read
IDLE_FOR = 600  # idle timeouts the servers get for the run, seconds


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def command(spec: servers.ServerSpec, listen: servers.Listen) -> list[str]:
    """The harness's command line, with the idle timeouts out of the way."""
    cmd = spec.command(listen)
    if spec.name == "multiplex":
        cmd += ["--h2-idle-timeout", str(IDLE_FOR)]
    elif spec.name.startswith("hypercorn"):
        cmd += ["--keep-alive", str(IDLE_FOR)]
    return cmd


# --- HTTP/2 over TLS ------------------------------------------------------------------


class H2Idle:
    """One TLS connection with ALPN h2 that makes one request and then stays open."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, port: int, context: ssl.SSLContext) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        self.writer = writer
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"), (":path", "/")],
            end_stream=True,
        )
        writer.write(conn.data_to_send())
        done = False
        while not done:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("HTTP/2 connection closed before its response")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    done = True
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            writer.write(conn.data_to_send())
        await writer.drain()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _h2_run(port: int, ca_file: str, count: int, pids: set[int]) -> float:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    for _ in range(WARM_UP):
        warm = H2Idle()
        await warm.open(port, context)
        warm.close()
    await asyncio.sleep(SETTLE)
    before = rss_kib(pids)
    idle = []
    try:
        for _ in range(count):
            connection = H2Idle()
            idle.append(connection)
            await connection.open(port, context)
        await asyncio.sleep(SETTLE)
        after = rss_kib(pids)
    finally:
        for connection in idle:
            connection.close()
    return (after - before) / count


# --- HTTP/3 ---------------------------------------------------------------------------


async def _h3_run(port: int, ca_file: str, count: int, pids: set[int]) -> float:
    from aioquic.asyncio.client import connect
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration

    from interop.h3load import LoadClient

    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost", idle_timeout=IDLE_FOR
    )
    configuration.load_verify_locations(ca_file)

    async def one(stack: contextlib.AsyncExitStack) -> None:
        client: Any = await stack.enter_async_context(
            connect("127.0.0.1", port, configuration=configuration, create_protocol=LoadClient)
        )
        if await client.get("/") != 200:
            raise RuntimeError("HTTP/3 request failed")

    for _ in range(WARM_UP):
        async with contextlib.AsyncExitStack() as warm:
            await one(warm)
    await asyncio.sleep(SETTLE)
    before = rss_kib(pids)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            await one(stack)
        await asyncio.sleep(SETTLE)
        after = rss_kib(pids)
    return (after - before) / count


PROTOCOLS = {"h2": _h2_run, "h3": _h3_run}


def measure(spec: servers.ServerSpec, protocol: str, count: int, logs: Path) -> float:
    from multiplex import devcerts

    dev = devcerts.ensure()
    port = servers.free_port()
    listen = servers.Listen(port, True, protocol == "h3", str(dev.cert), str(dev.key))
    idle_spec = servers.ServerSpec(
        spec.name, spec.package, spec.can, spec.cannot, lambda lst: command(spec, lst)
    )
    running = servers.start(idle_spec, listen, logs / f"{spec.name}.idle-{protocol}.log")
    try:
        running.wait_ready()
        time.sleep(0.3)  # the UDP endpoint opens a moment after the TCP one
        pids = {running.proc.pid, *servers._children(running.proc.pid)}
        return asyncio.run(PROTOCOLS[protocol](port, str(dev.ca_cert), count, pids))
    finally:
        running.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--connections", type=int, default=300)
    parser.add_argument("--servers", default="multiplex,hypercorn-uvloop")
    parser.add_argument("--protocols", default="h2,h3")
    args = parser.parse_args(argv)
    chosen = [spec for spec in servers.resolve(args.servers) if spec.installed()]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    _raise_fd_limit(args.connections)
    rows: dict[str, dict[str, float]] = {}
    for protocol in protocols:
        for spec in chosen:
            needs = servers.H3 if protocol == "h3" else servers.H2
            if needs not in spec.can:
                continue
            value = measure(spec, protocol, args.connections, RESULTS / "logs")
            rows.setdefault(protocol, {})[spec.name] = value
            print(f"{protocol} {spec.name:18s} {value:8.1f} KiB per idle connection", flush=True)
    names = [spec.name for spec in chosen]
    print()
    print(f"Memory per idle connection (KiB of server RSS, {args.connections} connections):")
    print("| Protocol | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    titles = {"h2": "HTTP/2 over TLS", "h3": "HTTP/3 (QUIC)"}
    for protocol, row in rows.items():
        cells = [f"{row[name]:.1f}" if name in row else "n/a" for name in names]
        print(f"| {titles[protocol]} | " + " | ".join(cells) + " |")
    return 0


def _raise_fd_limit(connections: int) -> None:
    """Room for N client sockets here (the servers raise their own, or not)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 2 * connections + 100))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    raise SystemExit(main(sys.argv[1:]))
