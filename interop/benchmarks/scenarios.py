"""The scenarios: which load generator, with which options, against which listener.

Every load generator runs pinned to core 1 (`taskset -c 1`) while the server has core 0.
Each scenario warms the server up first (h2load's --warm-up-time, or a short run that is
thrown away), then measures once; the smoke mode runs tiny fixed counts with no warm-up.
A run that loses requests raises: a number is only reported for complete work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from interop.benchmarks.apps import DOWNLOAD_SIZE, UPLOAD_SIZE
from interop.benchmarks.servers import H1, H2, H2C, H3, ROOT, WS, pinned

LOAD_CORE = 1
MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """What a scenario run gets: the server's port and the files it may need."""

    port: int
    ca_file: str
    upload_file: Path
    smoke: bool
    duration: float  # seconds of measurement for the time-bound loads


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    unit: str
    needs: str  # a capability from servers.py
    tls: bool
    quic: bool
    tool: str  # the external program it needs
    run: Callable[[Target], float]


class LoadError(RuntimeError):
    pass


class LoadTimeout(LoadError):
    """The load generator did not finish: the server stopped answering."""


def _run(cmd: list[str], timeout: float) -> str:
    try:
        result = subprocess.run(
            pinned(LOAD_CORE, cmd),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LoadTimeout(f"{cmd[0]} timed out after {timeout:.0f}s") from exc
    if result.returncode != 0:
        raise LoadError(
            f"{' '.join(cmd[:3])}... exited {result.returncode}: {result.stderr[-800:]}"
        )
    return result.stdout


# --- wrk (HTTP/1.1) -----------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: int) -> float:
    out = _run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", url],
        timeout=seconds + 60,
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or bad is not None or float(rate.group(1)) <= 0:
        raise LoadError(f"wrk did not get only 2xx responses:\n{out}")
    return float(rate.group(1))


def _h1_hello(t: Target) -> float:
    url = f"http://127.0.0.1:{t.port}/"
    if t.smoke:
        return wrk(url, 50, 1)
    wrk(url, 50, 1)  # warm-up
    return wrk(url, 50, round(t.duration))


# --- h2load (HTTP/2) ----------------------------------------------------------------------


def h2load(
    url: str, clients: int, streams: int, t: Target, count: int, data: Path | None = None
) -> float:
    """Requests/s. Full runs are time-bound (-D with a warm-up); smoke runs do `count`."""
    cmd = ["h2load", f"-c{clients}", f"-m{streams}"]
    if t.smoke:
        cmd += [f"-n{count}"]
    else:
        cmd += ["-D", str(round(t.duration)), "--warm-up-time", "1"]
    if data is not None:
        cmd += ["-d", str(data)]
    out = _run([*cmd, url], timeout=t.duration + 60)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not done or not failed or not rate or int(done.group(3)) == 0:
        raise LoadError(f"h2load output not understood:\n{out[-1500:]}")
    lost = sum(int(n) for n in failed.groups())
    if lost or (t.smoke and int(done.group(3)) != count):
        raise LoadError(f"h2load lost requests:\n{out[-1500:]}")
    return float(rate.group(1))


def _h2_hello(tls: bool, clients: int, streams: int) -> Callable[[Target], float]:
    def run(t: Target) -> float:
        scheme = "https" if tls else "http"
        return h2load(f"{scheme}://127.0.0.1:{t.port}/", clients, streams, t, 500)

    return run


def _h2_download(tls: bool) -> Callable[[Target], float]:
    def run(t: Target) -> float:
        scheme = "https" if tls else "http"
        rate = h2load(f"{scheme}://127.0.0.1:{t.port}/download", 4, 4, t, 40)
        return rate * DOWNLOAD_SIZE / MIB

    return run


def _h2_upload(t: Target) -> float:
    rate = h2load(f"https://127.0.0.1:{t.port}/upload", 4, 4, t, 80, data=t.upload_file)
    return rate * UPLOAD_SIZE / MIB


# --- HTTP/3 -------------------------------------------------------------------------------


def gtlsclient(port: int, requests: int) -> float:
    """Requests/s over one connection, timed end to end (handshake included)."""
    cmd = ["gtlsclient", "-q", "--exit-on-all-streams-close", "-n", str(requests)]
    cmd += ["--max-streams-bidi", "100", "127.0.0.1", str(port), f"https://localhost:{port}/"]
    started = time.monotonic()
    _run(cmd, timeout=120)
    return requests / (time.monotonic() - started)


def _retrying(run: Callable[[], float], tries: int = 3) -> float:
    """The UDP endpoint opens a moment after the TCP one: retry a failed first contact
    (not one that timed out: that server is not answering)."""
    for attempt in range(tries):
        try:
            return run()
        except LoadTimeout:
            raise
        except LoadError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


# Issue 9's measure: `gtlsclient -n 5000` on one connection.
H3_ONE_REQUESTS = 5000


def _h3_one(t: Target) -> float:
    _retrying(lambda: gtlsclient(t.port, 100 if t.smoke else 500))  # warm-up
    return gtlsclient(t.port, 200 if t.smoke else H3_ONE_REQUESTS)


def h3load(port: int, ca_file: str, requests: int, connections: int, streams: int) -> float:
    cmd = [sys.executable, "-m", "interop.h3load", str(port), ca_file, "-n", str(requests)]
    out = _run([*cmd, "-c", str(connections), "-m", str(streams)], timeout=120)
    rate = re.search(r"([\d.]+) req/s", out)
    if rate is None:
        raise LoadError(f"interop.h3load output not understood: {out}")
    return float(rate.group(1))


def _h3_many(t: Target) -> float:
    if t.smoke:
        return _retrying(lambda: h3load(t.port, t.ca_file, 100, 4, 5))
    _retrying(lambda: h3load(t.port, t.ca_file, 300, 10, 10))  # warm-up
    return h3load(t.port, t.ca_file, 3000, 10, 10)


# --- WebSocket ----------------------------------------------------------------------------


def ws_echo(port: int, connections: int, window: int, t: Target, count: int) -> float:
    """Echoed messages/s from interop.benchmarks.ws_client: raw sockets, frames built
    before the clock starts, every echo checked byte for byte. Full runs are time-bound
    (`t.duration`), smoke runs send `count` messages per connection."""
    cmd = [sys.executable, "-m", "interop.benchmarks.ws_client", f"ws://127.0.0.1:{port}/"]
    cmd += ["-c", str(connections), "-w", str(window)]
    cmd += ["-n", str(count)] if t.smoke else ["--duration", str(t.duration)]
    out = _run(cmd, timeout=t.duration + 60)
    rate = re.search(r"([\d.]+) msg/s", out)
    if rate is None or float(rate.group(1)) <= 0:
        raise LoadError(f"ws_client output not understood: {out}")
    return float(rate.group(1))


def _ws(connections: int, window: int) -> Callable[[Target], float]:
    """WebSocket echo of 32-byte text messages, `window` in flight on each connection.

    The load generator is a lean raw-socket client (ws_client.py), not a WebSocket
    library: the `websockets` client used before spent more CPU per message than the
    servers, which then idled at a third of a core and all looked alike. This one
    spends less CPU per message than any server measured (it prints its own CPU use):
    pipelined, about a third of multiplex's; with one message in flight, about 0.7 of
    multiplex's and about half of Uvicorn's, because there a message is one read and one
    write system call on each side, the kernel's share, which no client can shed. So the
    server's core fills first and the figure is the server's; where it is close, the
    per-core table (messages per server CPU-second) is the fairer judge.
    Time-bound (`t.duration`, 5 s by default) after a warm-up of 200 messages per
    connection; the smoke mode sends 50 messages on each of 4 connections.
    """

    def run(t: Target) -> float:
        if t.smoke:
            return ws_echo(t.port, 4, window, t, 50)
        warm = Target(t.port, t.ca_file, t.upload_file, True, t.duration)
        ws_echo(t.port, connections, window, warm, 200)  # warm-up
        return ws_echo(t.port, connections, window, t, 0)

    return run


SCENARIOS: list[Scenario] = [
    Scenario("h1-hello", "HTTP/1.1 hello, wrk -c50", "req/s", H1, False, False, "wrk", _h1_hello),
    Scenario(
        "h2c-hello-c10m10",
        "h2c hello, h2load -c10 -m10",
        "req/s",
        H2C,
        False,
        False,
        "h2load",
        _h2_hello(False, 10, 10),
    ),
    Scenario(
        "h2c-hello-c100m10",
        "h2c hello, h2load -c100 -m10",
        "req/s",
        H2C,
        False,
        False,
        "h2load",
        _h2_hello(False, 100, 10),
    ),
    Scenario(
        "h2c-hello-c1m100",
        "h2c hello, h2load -c1 -m100",
        "req/s",
        H2C,
        False,
        False,
        "h2load",
        _h2_hello(False, 1, 100),
    ),
    Scenario(
        "h2-hello-c10m10",
        "HTTP/2 TLS hello, h2load -c10 -m10",
        "req/s",
        H2,
        True,
        False,
        "h2load",
        _h2_hello(True, 10, 10),
    ),
    Scenario(
        "h2-hello-c100m10",
        "HTTP/2 TLS hello, h2load -c100 -m10",
        "req/s",
        H2,
        True,
        False,
        "h2load",
        _h2_hello(True, 100, 10),
    ),
    Scenario(
        "h2-hello-c1m100",
        "HTTP/2 TLS hello, h2load -c1 -m100",
        "req/s",
        H2,
        True,
        False,
        "h2load",
        _h2_hello(True, 1, 100),
    ),
    Scenario(
        "h2-download",
        "HTTP/2 TLS 1 MiB downloads, -c4 -m4",
        "MiB/s",
        H2,
        True,
        False,
        "h2load",
        _h2_download(True),
    ),
    Scenario(
        "h2c-download",
        "h2c 1 MiB downloads, -c4 -m4",
        "MiB/s",
        H2C,
        False,
        False,
        "h2load",
        _h2_download(False),
    ),
    Scenario(
        "h2-upload",
        "HTTP/2 TLS 256 KiB uploads, -c4 -m4",
        "MiB/s",
        H2,
        True,
        False,
        "h2load",
        _h2_upload,
    ),
    Scenario(
        "h3-hello-one",
        "HTTP/3 hello, gtlsclient -n 5000, 1 connection",
        "req/s",
        H3,
        True,
        True,
        "gtlsclient",
        _h3_one,
    ),
    Scenario(
        "h3-hello-many",
        "HTTP/3 hello, h3load -c10 -m10",
        "req/s",
        H3,
        True,
        True,
        sys.executable,
        _h3_many,
    ),
    Scenario(
        "ws-echo",
        "WebSocket echo, 50 connections, 1 message in flight each",
        "msg/s",
        WS,
        False,
        False,
        sys.executable,
        _ws(50, 1),
    ),
    Scenario(
        "ws-echo-pipelined",
        "WebSocket echo, 10 connections, 16 messages in flight each",
        "msg/s",
        WS,
        False,
        False,
        sys.executable,
        _ws(10, 16),
    ),
]


def resolve(keys: str | None) -> list[Scenario]:
    if not keys:
        return list(SCENARIOS)
    by_key = {scenario.key: scenario for scenario in SCENARIOS}
    chosen = []
    for raw in keys.split(","):
        key = raw.strip()
        matches = [s for k, s in by_key.items() if k == key or k.startswith(key + "-")]
        if not matches:
            raise SystemExit(f"unknown scenario {key!r}; known: {', '.join(by_key)}")
        chosen += [s for s in matches if s not in chosen]
    return chosen


def missing_tool(scenario: Scenario) -> str | None:
    return None if shutil.which(scenario.tool) else scenario.tool
