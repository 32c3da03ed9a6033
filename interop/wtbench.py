"""WebTransport on loopback: datagram echo round trips per second and bidirectional
stream echo throughput, against `multiplex demo`'s /wt echo (started here, stopped by
its PID).

    python -m interop.wtbench [--seconds 5] [--stream-mib 64]

Datagrams go one at a time (send, wait for the echo), so the figure is round trips per
second, not a flood. The stream figure counts bytes echoed (sent and received) per
second on one stream.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from interop.bench import free_port, wait_listening
from multiplex import devcerts
from tests.protocols.wtclient import wt_connect

ROOT = Path(__file__).resolve().parent.parent


async def measure(port: int, ca: str, seconds: float, stream_mib: int) -> tuple[float, float]:
    async with wt_connect(port, ca) as client:
        session = await client.session("/wt")
        assert session.status == 200, session.status
        count = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            client.datagram(session, b"x" * 64)
            await session.until(lambda n=count: len(session.datagrams) > n, timeout=5)
            count += 1
        rtt_rate = count / (time.perf_counter() - start)

        stream = client.open_stream(session)
        chunk = b"y" * 65536
        total = stream_mib * 1024 * 1024
        start = time.perf_counter()
        sent = 0
        while sent < total:
            client.send(stream, chunk, end=sent + len(chunk) >= total)
            sent += len(chunk)
            # Keep what is in flight bounded: wait for the echo to catch up.
            await session.until(
                lambda n=sent: len(session.streams.get(stream, b"")) >= n - 4 * 1024 * 1024
            )
        await session.until(lambda: stream in session.ended, timeout=60)
        elapsed = time.perf_counter() - start
        return rtt_rate, 2 * total / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stream-mib", type=int, default=64)
    args = parser.parse_args()
    certs = devcerts.ensure()
    port = free_port()
    cmd = [sys.executable, "-m", "multiplex", "demo", "--bind", f"127.0.0.1:{port}"]
    cmd += ["--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        rate, mbps = asyncio.run(measure(port, str(certs.ca_cert), args.seconds, args.stream_mib))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    print(f"datagram echo: {rate:,.0f} round trips/s")
    print(f"stream echo:   {mbps:,.1f} MB/s (bytes sent + received)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
