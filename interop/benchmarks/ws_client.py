"""WebSocket echo load: C connections, each doing N send-and-wait-for-echo round trips.

    python -m interop.benchmarks.ws_client ws://127.0.0.1:PORT/ [-c 10] [-n 2000] [--size 32]

Prints `<rate> msg/s`: echoed messages per second over all connections, timed from the
moment every connection is open until the last echo arrives. permessage-deflate is off so
that framing, not zlib, is measured. Built on the `websockets` library.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from websockets.asyncio.client import ClientConnection, connect


async def _round_trips(ws: ClientConnection, count: int, payload: str) -> None:
    for _ in range(count):
        await ws.send(payload)
        echo = await ws.recv()
        if echo != payload:
            raise RuntimeError(f"echo mismatch: {echo!r}")


async def run(url: str, connections: int, messages: int, size: int) -> float:
    """Messages per second; raises if any echo is missing or wrong."""
    payload = "x" * size
    sockets = await asyncio.gather(
        *(connect(url, compression=None, max_queue=None) for _ in range(connections))
    )
    try:
        started = time.monotonic()
        await asyncio.gather(*(_round_trips(ws, messages, payload) for ws in sockets))
        elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return connections * messages / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("-n", "--messages", type=int, default=2000, help="per connection")
    parser.add_argument("--size", type=int, default=32, help="bytes of text per message")
    args = parser.parse_args()
    rate = asyncio.run(run(args.url, args.connections, args.messages, args.size))
    print(f"{rate:.1f} msg/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
