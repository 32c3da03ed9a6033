"""Heavy legitimate load, nothing lost (issue 6, point 5): h2load drives many HTTP/2
connections with many streams each, and many HTTP/1.1 keep-alive clients, against an
in-process server. Every request must succeed; afterwards no app task is left, the
server loop's task count is back to its baseline, no exception reached the loop's
handler, and the process has not kept the memory the load needed.

CI runs a shorter version; `MULTIPLEX_STRESS=full` runs the issue's sizes (200 HTTP/2
connections x 100 streams, 2,000 HTTP/1.1 clients).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import apps
from tests.conftest import RunningServer, require_tool

pytestmark = pytest.mark.timeout(600)

FULL = os.environ.get("MULTIPLEX_STRESS") == "full"
H2_CONNECTIONS, H2_STREAMS = (200, 100) if FULL else (40, 50)
H1_CLIENTS = 2000 if FULL else 300
REQUESTS = 200_000 if FULL else 20_000


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def h2load(*args: str) -> str:
    result = subprocess.run(
        [require_tool("h2load"), *args], capture_output=True, text=True, timeout=500, check=False
    )
    return result.stdout + result.stderr


def succeeded(out: str) -> tuple[int, int]:
    match = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    assert match, out[-2000:]
    return int(match.group(1)), int(match.group(2))


def report(total: int, ok: int, grown: int) -> None:
    """The figures, for `pytest -s` (the issue's closing note quotes them)."""
    print(f"\n{total} requests, {ok} succeeded, RSS grew {grown / 2**20:.1f} MiB")


class Watch:
    """What the server's loop saw: exceptions that reached its handler, its tasks."""

    def __init__(self, running: RunningServer) -> None:
        self.running = running
        self.errors: list[dict[str, Any]] = []
        loop = running.loop
        running.call(lambda: loop.set_exception_handler(lambda _, ctx: self.errors.append(ctx)))
        self.baseline = self.tasks()

    def tasks(self) -> int:
        return int(self.running.call(lambda: len(asyncio.all_tasks(self.running.loop))))

    def app_tasks(self) -> int:
        state = self.running.server.state
        assert state is not None
        return int(self.running.call(lambda: len(state.tasks)))

    def settle(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (self.app_tasks() or self.tasks() > self.baseline) and time.monotonic() < deadline:
            time.sleep(0.1)


def loaded(run_server: Callable[..., RunningServer], **config: Any) -> tuple[RunningServer, Watch]:
    running = run_server(
        apps.hello,
        h2c=True,
        h2_max_concurrent_streams=max(100, H2_STREAMS),
        backlog=4096,
        **config,
    )
    return running, Watch(running)


def assert_nothing_lost(watch: Watch, *load: str) -> None:
    """Run h2load with `load` and check the issue's promises: every request succeeded,
    app and loop tasks back to baseline, no exception at the loop, memory given back."""
    gc.collect()
    before = rss()
    out = h2load(*load)
    total, ok = succeeded(out)
    watch.settle()
    gc.collect()
    grown = rss() - before
    report(total, ok, grown)
    assert (total, ok) == (REQUESTS, REQUESTS), out[-2000:]
    assert watch.app_tasks() == 0
    assert watch.tasks() <= watch.baseline
    assert watch.errors == []
    assert grown < 64 * 1024 * 1024, grown


def test_many_http2_connections_and_streams(run_server: Callable[..., RunningServer]) -> None:
    running, watch = loaded(run_server)
    url = f"http://127.0.0.1:{running.port}/"
    h2load("-n", "2000", "-c", "10", "-m", "10", url)  # warm-up
    load = ("-n", str(REQUESTS), "-c", str(H2_CONNECTIONS), "-m", str(H2_STREAMS), url)
    assert_nothing_lost(watch, *load)


def test_many_http1_keep_alive_clients(run_server: Callable[..., RunningServer]) -> None:
    running, watch = loaded(run_server)
    url = f"http://127.0.0.1:{running.port}/"
    assert_nothing_lost(watch, "--h1", "-n", str(REQUESTS), "-c", str(H1_CLIENTS), url)
