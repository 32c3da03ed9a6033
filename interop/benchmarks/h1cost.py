"""What one HTTP/1.1 hello request costs a server's protocol object, with no socket and no
load generator: the request bytes go straight into `data_received`, the response comes
back through a fake transport, one request at a time on one keep-alive connection, on
uvloop. The same driver serves multiplex's `HTTP1Protocol` and Uvicorn's
`HttpToolsProtocol` (as `uvicorn` runs it by default: proxy headers on, server and date
headers), both serving `apps.app`.

Wall-clock figures on a shared machine are noisy; run this under callgrind for a
deterministic count, twice with different `--requests`, and divide the difference:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m interop.benchmarks.h1cost --server multiplex --requests 2000

`--instructions` does exactly that and prints instructions per request (`--profile`
prints a cProfile of the measured requests instead).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from interop.benchmarks import callgrind
from interop.benchmarks.apps import HELLO, app

# What wrk sends by default.
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class FakeTransport:
    """Enough of a uvloop TCP transport for both servers; `done` is resolved when a
    write ends with the hello body (the end of the response)."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if data.endswith(HELLO) and self.done is not None:
            self.done.set_result(None)

    def writelines(self, pieces: Any) -> None:
        self.write(b"".join(pieces))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_protocol(self, protocol: Any) -> None:
        pass


def _multiplex(loop: asyncio.AbstractEventLoop) -> Any:
    from multiplex.config import Config
    from multiplex.protocols.http1 import HTTP1Protocol
    from multiplex.streams.seam import ConnectionInfo, ServerState

    config = Config(app="interop.benchmarks.apps:app", access_log=False)
    state = ServerState(app, config, {})
    info = ConnectionInfo("1.1", "http", ("127.0.0.1", 50000), ("127.0.0.1", 8000), {}, [])
    return HTTP1Protocol(state, info)


def _uvicorn(loop: asyncio.AbstractEventLoop) -> Any:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=app, http="httptools", lifespan="off", access_log=False)
    config.load()
    state = ServerState()
    # What uvicorn's main loop sets once a second.
    state.default_headers = [
        (b"date", b"Mon, 07 Dec 2026 07:00:00 GMT"),
        *config.encoded_headers,
    ]
    return HttpToolsProtocol(config, state, app_state={}, _loop=loop)


FACTORIES: dict[str, Callable[[asyncio.AbstractEventLoop], Any]] = {
    "multiplex": _multiplex,
    "uvicorn": _uvicorn,
}


async def drive(server: str, warmup: int, requests: int, profile: bool) -> float:
    loop = asyncio.get_running_loop()
    protocol = FACTORIES[server](loop)
    transport = FakeTransport()
    protocol.connection_made(transport)

    async def run(n: int) -> None:
        for _ in range(n):
            done = transport.done = loop.create_future()
            protocol.data_received(REQUEST)
            await done

    await run(warmup)
    # As multiplex's serve() does: startup objects out of the collector's sight (for
    # both servers, so neither pays full collections over the import graph).
    gc.collect()
    gc.freeze()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    await run(requests)
    elapsed = time.perf_counter() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(FACTORIES), default="multiplex")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile the measured requests")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="instructions per request under callgrind: (run(N) - run(N/2)) / (N/2)",
    )
    args = parser.parse_args()
    if args.instructions:
        count = callgrind.per_request(
            "interop.benchmarks.h1cost",
            lambda n: ["--server", args.server, "--warmup", str(args.warmup), "--requests", str(n)],
            args.requests,
        )
        print(f"{args.server}: {count:,.0f} instructions/request")
        return
    import uvloop

    elapsed = uvloop.run(drive(args.server, args.warmup, args.requests, args.profile))
    if not args.profile:
        print(f"{args.server}: {elapsed / args.requests * 1e6:.1f} µs/request")


if __name__ == "__main__":
    main()
