"""A small HTTP/3 load client on aioquic: C connections, each keeping M requests in
flight, until N requests are answered. Used by `interop.h3bench`.

    python -m interop.h3load PORT CA_FILE [-n 2000] [-c 10] [-m 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class LoadClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters: dict[int, asyncio.Future[int]] = {}
        self.status: dict[int, int] = {}

    def quic_event_received(self, event: Any) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.status[h3_event.stream_id] = int(dict(h3_event.headers)[b":status"])
            if isinstance(h3_event, (HeadersReceived, DataReceived)) and h3_event.stream_ended:
                waiter = self.waiters.pop(h3_event.stream_id, None)
                if waiter is not None:
                    waiter.set_result(self.status.pop(h3_event.stream_id, 0))

    async def get(self, path: str) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        waiter = asyncio.get_running_loop().create_future()
        self.waiters[stream_id] = waiter
        self.transmit()
        return await waiter


async def run_load(port: int, ca_file: str, requests: int, connections: int, streams: int) -> float:
    """Requests per second over the whole run; raises if any request failed."""
    remaining = requests
    failures = 0

    async def worker(client: LoadClient) -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            if await client.get("/") != 200:
                failures += 1

    async def connection() -> None:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
        )
        configuration.load_verify_locations(ca_file)
        async with connect(
            "127.0.0.1", port, configuration=configuration, create_protocol=LoadClient
        ) as client:
            assert isinstance(client, LoadClient)
            await asyncio.gather(*(worker(client) for _ in range(streams)))

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    elapsed = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{failures} of {requests} requests failed")
    return requests / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("ca_file")
    parser.add_argument("-n", "--requests", type=int, default=2000)
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("-m", "--streams", type=int, default=10)
    args = parser.parse_args()
    rate = asyncio.run(
        run_load(args.port, args.ca_file, args.requests, args.connections, args.streams)
    )
    print(f"{rate:.0f} req/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
