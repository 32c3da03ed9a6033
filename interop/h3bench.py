"""HTTP/3 side by side: multiplex and Hypercorn (`--quic-bind`) serving the same
hello-world app, in the same run.

Two loads, both from clients installed here:
- one connection, many requests: `gtlsclient -n N` (ngtcp2), timed end to end;
- many connections: `interop.h3load`, an aioquic client opening C connections that
  each keep M requests in flight.

    python -m interop.h3bench [--requests 2000] [--connections 10] [--streams 10]

Prints requests/s for each server and the ratio. Loopback only; servers are started
here and stopped by PID. Compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from interop.bench import HYPERCORN_CONFIG, ROOT, free_port, wait_listening
from interop.h3load import run_load

APP = "interop.hello_app:app"


def start(name: str, port: int, cert: str, key: str) -> subprocess.Popen[bytes]:
    python = sys.executable
    if name == "multiplex":
        cmd = [python, "-m", "multiplex", APP, "--bind", f"127.0.0.1:{port}"]
        cmd += ["--quic-bind", f"127.0.0.1:{port}", "--no-access-log", "--log-level", "warning"]
    else:
        cmd = [python, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"]
        cmd += ["--quic-bind", f"127.0.0.1:{port}", "--log-level", "warning"]
        cmd += ["--config", str(HYPERCORN_CONFIG), "-k", "uvloop"]
    cmd += ["--certfile", cert, "--keyfile", key]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)


def gtlsclient_rate(port: int, requests: int) -> float:
    started = time.monotonic()
    result = subprocess.run(
        [
            "gtlsclient",
            "-q",
            "--exit-on-all-streams-close",
            "-n",
            str(requests),
            "--max-streams-bidi",
            "100",
            "127.0.0.1",
            str(port),
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"gtlsclient failed: {result.stderr.decode()[-500:]}")
    return requests / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", "-n", type=int, default=2000)
    parser.add_argument("--connections", "-c", type=int, default=10)
    parser.add_argument("--streams", "-m", type=int, default=10)
    parser.add_argument("--servers", default="multiplex,hypercorn")
    args = parser.parse_args()
    from multiplex import devcerts

    dev = devcerts.ensure()
    have_gtls = shutil.which("gtlsclient") is not None
    results: dict[str, tuple[float, float]] = {}
    for name in args.servers.split(","):
        port = free_port()
        proc = start(name, port, str(dev.cert), str(dev.key))
        try:
            wait_listening(port, proc)
            time.sleep(0.3)  # the UDP endpoint opens beside the TCP one
            one = gtlsclient_rate(port, args.requests) if have_gtls else 0.0
            many = asyncio.run(
                run_load(port, str(dev.ca_cert), args.requests, args.connections, args.streams)
            )
            results[name] = (one, many)
            print(
                f"{name:10s} one connection (gtlsclient): {one:8.0f} req/s   "
                f"{args.connections}x{args.streams} (aioquic): {many:8.0f} req/s",
                flush=True,
            )
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if "multiplex" in results and "hypercorn" in results:
        m, h = results["multiplex"], results["hypercorn"]
        if h[0]:
            print(f"ratio one connection multiplex/hypercorn: {m[0] / h[0]:.2f}x")
        print(f"ratio many connections multiplex/hypercorn: {m[1] / h[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
