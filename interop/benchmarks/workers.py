"""Does `--workers N` scale? multiplex with N=1 and N=2 (or any list) in the same run.

    python -m interop.benchmarks.workers [--workers 1,2] [--rounds 3] [--duration 10]
        [--load h2c|h1] [--clients 40] [--streams 10]

Each round starts multiplex with every N in turn (the order alternating from round to
round, so that neither count always runs on a warmer or quieter machine), waits until
all N workers listen, warms up for a second, then measures `--duration` seconds with
h2load (h2c, `-c40 -m10` by default) or wrk (`--load h1`). Forty connections, not ten:
SO_REUSEPORT spreads connections over the workers by a hash of their addresses, and ten
can land 6/4 or worse, which caps the ratio by the split rather than by the server
(on 2026-12-07: 1.65-1.73x with -c10, 1.84-1.85x with -c40, the same build). Prints the median
requests/s of each N, each N's ratio to the first, and where the CPU time went: the
server's (supervisor and workers, user + system, from /proc) and the load generator's, in cores
over the measurement. Nothing is pinned: on a two-core machine the
workers and the load generator share both cores, which is the method to report.

Beside it, in every round, a control: a pure-Python busy loop in 1 and in N processes
for the same kind of interval. Its ratio is what this machine gives N CPU-bound processes
at that moment (other work on the cores, virtual CPUs that share a physical core): the
ceiling the workers' ratio is to be read against.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from interop.benchmarks.report import TIMES
from interop.benchmarks.scenarios import LoadError
from interop.benchmarks.servers import APP, ROOT, _children, cpu_seconds, free_port


@dataclass
class Sample:
    workers: int
    rate: float  # requests/s
    server_cpu: float  # cores' worth of CPU the workers used over the measurement
    load_cpu: float  # the load generator's


def _spin(seconds: float, counts: multiprocessing.Queue[int]) -> None:
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            n += 1
    counts.put(n)


def spin(processes: int, seconds: float) -> int:
    """Loop iterations `processes` busy processes manage in `seconds`, all together."""
    counts: multiprocessing.Queue[int] = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_spin, args=(seconds, counts)) for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    total = sum(counts.get() for _ in procs)
    for proc in procs:
        proc.join()
    return total


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:`port` (each SO_REUSEPORT worker has its own)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def _start(workers: int, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "multiplex", APP, "--bind", f"127.0.0.1:{port}"]
    cmd += ["--workers", str(workers), "--h2c", "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 30
    while _listeners(port) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"multiplex --workers {workers} did not start: {log.read_text()}")
        time.sleep(0.05)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT: the supervisor stops its workers gracefully
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _load_command(args: argparse.Namespace, port: int, seconds: float, warm_up: bool) -> list[str]:
    if args.load == "h1":
        return [
            "wrk",
            "-t1",
            f"-c{args.clients}",
            f"-d{round(seconds)}s",
            f"http://127.0.0.1:{port}/",
        ]
    cmd = ["h2load", f"-c{args.clients}", f"-m{args.streams}", "-D", str(round(seconds))]
    if warm_up:
        cmd += ["--warm-up-time", "1"]
    return [*cmd, f"http://127.0.0.1:{port}/"]


def _rate(args: argparse.Namespace, out: str) -> float:
    if args.load == "h1":
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if match is None or "Non-2xx" in out:
            raise LoadError(f"wrk did not get only 2xx responses:\n{out}")
        return float(match.group(1))
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if match is None or failed is None or any(int(n) for n in failed.groups()):
        raise LoadError(f"h2load lost requests or was not understood:\n{out[-1500:]}")
    return float(match.group(1))


def measure(args: argparse.Namespace, workers: int, log: Path) -> Sample:
    port = free_port()
    proc = _start(workers, port, log)
    try:
        if args.load == "h1":  # wrk has no warm-up of its own
            subprocess.run(_load_command(args, port, 1, False), capture_output=True, check=False)
        pids = [proc.pid, *_children(proc.pid)]  # the supervisor, if any, and its workers
        before = sum(cpu_seconds(pid) for pid in pids)
        load_before = os.times()
        started = time.monotonic()
        result = subprocess.run(
            _load_command(args, port, args.duration, True),
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=False,
        )
        elapsed = time.monotonic() - started
        load_after = os.times()
        after = sum(cpu_seconds(pid) for pid in pids)
        if result.returncode != 0:
            raise LoadError(f"load generator exited {result.returncode}: {result.stderr[-800:]}")
        rate = _rate(args, result.stdout)
    finally:
        _stop(proc)
    load_cpu = (load_after.children_user + load_after.children_system) - (
        load_before.children_user + load_before.children_system
    )
    return Sample(workers, rate, (after - before) / elapsed, load_cpu / elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interop.benchmarks.workers", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--load", choices=("h2c", "h1"), default="h2c")
    parser.add_argument("--clients", type=int, default=40, help="connections")
    parser.add_argument("--streams", type=int, default=10, help="h2c: streams per connection")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    samples: dict[int, list[Sample]] = {n: [] for n in counts}
    control: dict[int, list[int]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="multiplex-workers-") as tmp:
        for index in range(args.rounds):
            for n in counts:
                control[n].append(spin(n, 2.0))
            order = counts if index % 2 == 0 else list(reversed(counts))
            for n in order:
                sample = measure(args, n, Path(tmp) / f"workers-{n}.log")
                samples[n].append(sample)
                print(
                    f"round {index + 1}: --workers {n}: {sample.rate:,.0f} req/s"
                    f" (workers {sample.server_cpu:.2f} cores, load {sample.load_cpu:.2f})",
                    flush=True,
                )
    load = (
        f"wrk -t1 -c{args.clients}"
        if args.load == "h1"
        else f"h2load -c{args.clients} -m{args.streams} h2c"
    )
    print(f"\n{load}, {args.duration:.0f} s, median of {args.rounds}; {os.cpu_count()} cores")
    print(
        "| --workers | req/s | ratio | server CPU (cores) | load generator CPU (cores)"
        " | control: busy loop in N processes, ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = statistics.median(s.rate for s in samples[counts[0]])
    spin_base = statistics.median(control[counts[0]])
    for n in counts:
        rate = statistics.median(s.rate for s in samples[n])
        server = statistics.median(s.server_cpu for s in samples[n])
        load_cpu = statistics.median(s.load_cpu for s in samples[n])
        ratio = f"{rate / base:.2f}{TIMES}"
        ceiling = f"{statistics.median(control[n]) / spin_base:.2f}{TIMES}"
        print(f"| {n} | {rate:,.0f} | {ratio} | {server:.2f} | {load_cpu:.2f} | {ceiling} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
