"""Side-by-side benchmark: multiplex and Hypercorn serving the same hello-world app,
driven by h2load in the same run. Prints requests/s for each and the ratio.

    python -m interop.bench [--requests 100000] [--clients 10] [--streams 10] [--tls|--h2c]
        [--path /bytes/16384] [--h2load-args="-W16"]
        [--servers multiplex,multiplex:--no-priorities,hypercorn]

A server name may carry extra command-line arguments after a colon (comma-free), so
one run can compare multiplex configurations with each other and with Hypercorn.

Only loopback; each server is started here and stopped by its PID. Figures from a
2-core machine are noisy: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = "interop.hello_app:app"
HYPERCORN_CONFIG = ROOT / "interop" / "hypercorn-bench.toml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on port {port} within {timeout}s")


def server_command(
    name: str, port: int, tls: bool, certs: tuple[str, str] | None, app: str = APP
) -> list[str]:
    python = sys.executable
    name, _, extra = name.partition(":")
    if name == "multiplex":
        cmd = [python, "-m", "multiplex", app, "--bind", f"127.0.0.1:{port}", "--no-access-log"]
        cmd += ["--log-level", "warning"]
        if tls and certs:
            cmd += ["--certfile", certs[0], "--keyfile", certs[1]]
        else:
            cmd += ["--h2c"]
        return cmd + extra.split()
    if name == "hypercorn":
        cmd = [python, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
        # Hypercorn ends an HTTP/2 connection after 1000 requests by default, which
        # h2load counts as failures; lift that so both servers do the same work.
        cmd += ["--log-level", "warning", "--config", str(HYPERCORN_CONFIG), "-k", "uvloop"]
        if tls and certs:
            cmd += ["--certfile", certs[0], "--keyfile", certs[1]]
        return cmd
    raise ValueError(name)


def run_h2load(
    url: str, requests: int, clients: int, streams: int, extra: list[str] | None = None
) -> float:
    out = subprocess.run(
        ["h2load", f"-n{requests}", f"-c{clients}", f"-m{streams}", *(extra or []), url],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not rate or not done or int(done.group(2)) != requests:
        raise RuntimeError(f"h2load did not complete every request:\n{out}")
    return float(rate.group(1))


def bench(name: str, args: argparse.Namespace, certs: tuple[str, str] | None) -> float:
    port = free_port()
    proc = subprocess.Popen(
        server_command(name, port, args.tls, certs, args.app), cwd=ROOT, stdout=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        scheme = "https" if args.tls else "http"
        url = f"{scheme}://127.0.0.1:{port}{args.path}"
        extra = args.h2load_args.split()
        run_h2load(url, min(2000, args.requests), args.clients, args.streams, extra)  # warm-up
        return run_h2load(url, args.requests, args.clients, args.streams, extra)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", "-n", type=int, default=100_000)
    parser.add_argument("--clients", "-c", type=int, default=10)
    parser.add_argument("--streams", "-m", type=int, default=10)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tls", action="store_true", default=True, help="HTTP/2 over TLS (default)")
    mode.add_argument("--h2c", dest="tls", action="store_false", help="cleartext HTTP/2")
    parser.add_argument("--servers", default="multiplex,hypercorn")
    parser.add_argument("--path", default="/", help="`/bytes/N` for N-byte responses")
    parser.add_argument(
        "--app",
        default=APP,
        help="module:attr for every server, e.g. interop.framework_apps:flask_app",
    )
    parser.add_argument("--h2load-args", default="", help="extra h2load options, e.g. -W16")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install nghttp2-client", file=sys.stderr)
        return 2
    certs = None
    if args.tls:
        from multiplex import devcerts

        dev = devcerts.ensure()
        certs = (str(dev.cert), str(dev.key))
    results: dict[str, float] = {}
    for name in args.servers.split(","):
        results[name] = bench(name, args, certs)
        print(f"{name:10s} {results[name]:10.0f} req/s", flush=True)
    if "hypercorn" in results:
        for name, rate in results.items():
            if name.startswith("multiplex"):
                print(f"ratio {name}/hypercorn: {rate / results['hypercorn']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
