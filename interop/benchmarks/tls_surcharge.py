"""What TLS costs multiplex per request: HTTP/2 hello over TLS against h2c, in server CPU.

    python -m interop.benchmarks.tls_surcharge [--rounds 6] [--requests 30000]
        [--clients 10] [--streams 10]

Wall-clock requests/s on a shared two-core machine move by ±20 % from run to run, more
than TLS costs, so this reads the server's CPU instead: for each round, multiplex is
started twice on core 0 (TLS, then h2c, the order alternating from round to round),
warmed up, and sent `--requests` hello requests by h2load on core 1. For each run it
prints the server's CPU per request (user + system from /proc, in µs), its read and write
system calls per request (/proc/PID/io: the TLS path should add none), and the load
generator's CPU per request. The summary is the median of each mode and the median of
the paired differences, TLS minus h2c, from the same round: the TLS surcharge.
Requests/s are printed too, for what they are worth on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from interop.benchmarks.scenarios import LoadError
from interop.benchmarks.servers import APP, ROOT, cpu_seconds, free_port

WARM_UP = 5000  # requests before the measured run, on connections of their own


@dataclass
class Run:
    tls: bool
    cpu_us: float  # server CPU per request
    reads: float  # read system calls per request
    writes: float  # write system calls per request
    load_us: float  # h2load's CPU per request
    rate: float  # requests/s (contaminated by whatever else runs on the machine)


def _syscalls(pid: int) -> tuple[int, int]:
    fields = dict(line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


def _start(tls: bool, port: int, cert: str, key: str) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "multiplex", APP]
    cmd += ["--bind", f"127.0.0.1:{port}", "--no-access-log", "--log-level", "warning"]
    cmd += ["--certfile", cert, "--keyfile", key] if tls else ["--h2c"]
    server = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["h2load", "-n1", "-c1", _url(tls, port)], capture_output=True, text=True
        )
        if "1 succeeded" in probe.stdout:
            return server
        time.sleep(0.1)
    _stop(server)
    raise LoadError("multiplex did not answer within 30 s")


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _url(tls: bool, port: int) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}/"


def _h2load(url: str, requests: int, clients: int, streams: int) -> tuple[float, float]:
    """(requests/s, h2load's CPU seconds)."""
    before = os.times()
    cmd = ["taskset", "-c", "1", "h2load", f"-n{requests}", f"-c{clients}", f"-m{streams}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=600).stdout
    after = os.times()
    done = re.search(r"(\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if done is None or rate is None or int(done.group(1)) != requests:
        raise LoadError(f"h2load lost requests:\n{out[-1500:]}")
    used = after.children_user + after.children_system
    used -= before.children_user + before.children_system
    return float(rate.group(1)), used


def measure(tls: bool, args: argparse.Namespace, cert: str, key: str) -> Run:
    port = free_port()
    server = _start(tls, port, cert, key)
    try:
        url = _url(tls, port)
        _h2load(url, min(WARM_UP, args.requests), args.clients, args.streams)
        cpu0, (reads0, writes0) = cpu_seconds(server.pid), _syscalls(server.pid)
        rate, load_cpu = _h2load(url, args.requests, args.clients, args.streams)
        cpu1, (reads1, writes1) = cpu_seconds(server.pid), _syscalls(server.pid)
    finally:
        _stop(server)
    n = args.requests
    return Run(
        tls,
        (cpu1 - cpu0) / n * 1e6,
        (reads1 - reads0) / n,
        (writes1 - writes0) / n,
        load_cpu / n * 1e6,
        rate,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10)
    args = parser.parse_args(argv)

    from multiplex import devcerts

    dev = devcerts.ensure()
    cert, key = str(dev.cert), str(dev.key)
    runs: dict[bool, list[Run]] = {True: [], False: []}
    for round_ in range(args.rounds):
        for tls in (True, False) if round_ % 2 == 0 else (False, True):
            run = measure(tls, args, cert, key)
            runs[tls].append(run)
            print(
                f"round {round_} {'TLS' if tls else 'h2c'}: {run.cpu_us:.2f} µs/request"
                f" server CPU, {run.reads:.3f} reads and {run.writes:.3f} writes/request,"
                f" h2load {run.load_us:.2f} µs/request, {run.rate:,.0f} req/s",
                flush=True,
            )
    tls_us = statistics.median(r.cpu_us for r in runs[True])
    h2c_us = statistics.median(r.cpu_us for r in runs[False])
    paired = statistics.median(
        t.cpu_us - c.cpu_us for t, c in zip(runs[True], runs[False], strict=True)
    )
    print(
        f"median server CPU per request: TLS {tls_us:.2f} µs, h2c {h2c_us:.2f} µs;"
        f" TLS surcharge (median of paired differences) {paired:.2f} µs"
        f" ({paired / h2c_us:.1%} of h2c)"
    )
    print(
        f"median req/s (contaminated by other load): TLS"
        f" {statistics.median(r.rate for r in runs[True]):,.0f},"
        f" h2c {statistics.median(r.rate for r in runs[False]):,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
