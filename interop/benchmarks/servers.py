"""How each server is started on the benchmark app, what it can serve, and how it is stopped.

Every server runs `interop.benchmarks.apps:app`, one worker, pinned to core 0 with
`taskset -c 0` (its worker processes inherit the pinning). It is started for one
(scenario, round), waited for until its port answers, and stopped by its PID: SIGINT,
then SIGKILL (of it and of any child still alive) after a timeout.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = "interop.benchmarks.apps:app"
HYPERCORN_CONFIG = ROOT / "interop" / "hypercorn-bench.toml"

# What a scenario needs from a server.
H1 = "HTTP/1.1"
H2C = "h2c"
H2 = "HTTP/2 over TLS"
H3 = "HTTP/3"
WS = "WebSocket"


@dataclass(frozen=True)
class Listen:
    """Where and how a server must listen for one scenario."""

    port: int
    tls: bool
    quic: bool
    cert: str
    key: str


CommandBuilder = Callable[[Listen], list[str]]


@dataclass(frozen=True)
class ServerSpec:
    name: str  # key used on the command line and in the table
    package: str  # distribution whose presence decides whether it runs
    can: frozenset[str]
    cannot: dict[str, str]  # capability -> why not, shown under the table
    command: CommandBuilder
    note: str = ""
    program: str = ""  # for a server that is not a Python package: its executable
    # When set, the only scenarios it runs (a static-file server has no app); the rest
    # are n/a with `only_why`.
    only: frozenset[str] | None = None
    only_why: str = ""

    def installed(self) -> bool:
        if self.program:
            return _program(self.program) is not None
        return importlib.util.find_spec(self.package.replace("-", "_").lower()) is not None

    def version(self) -> str:
        if self.program:
            path = _program(self.program)
            try:
                out = subprocess.run([str(path), "--version"], capture_output=True, text=True)
            except OSError:
                return "?"
            return out.stdout.strip().rpartition("/")[2] or "?"
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return "?"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _multiplex(listen: Listen) -> list[str]:
    cmd = _python("-m", "multiplex", APP, "--bind", f"127.0.0.1:{listen.port}")
    cmd += ["--no-access-log", "--log-level", "warning"]
    if listen.tls:
        cmd += ["--certfile", listen.cert, "--keyfile", listen.key]
    else:
        cmd += ["--h2c"]
    if listen.quic:
        cmd += ["--quic-bind", f"127.0.0.1:{listen.port}"]
    return cmd


def _hypercorn(worker_class: str) -> CommandBuilder:
    def build(listen: Listen) -> list[str]:
        cmd = _python("-m", "hypercorn", APP, "--bind", f"127.0.0.1:{listen.port}")
        # Hypercorn ends a connection after 1000 requests by default (h2load counts the
        # rest as failures); the config file lifts that, as interop/bench.py does.
        cmd += ["--config", str(HYPERCORN_CONFIG), "-k", worker_class, "--log-level", "warning"]
        if listen.tls:
            cmd += ["--certfile", listen.cert, "--keyfile", listen.key]
        if listen.quic:
            cmd += ["--quic-bind", f"127.0.0.1:{listen.port}"]
        return cmd

    return build


def _bare_aioquic(listen: Listen) -> list[str]:
    cmd = _python("-m", "interop.benchmarks.bare_aioquic", "--port", str(listen.port))
    return [*cmd, "--certfile", listen.cert, "--keyfile", listen.key]


def _uvicorn(listen: Listen) -> list[str]:
    # Defaults pick httptools and uvloop when installed (the `uvicorn[standard]` set).
    cmd = _python("-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(listen.port))
    cmd += ["--log-level", "warning", "--no-access-log", "--lifespan", "on"]
    if listen.tls:
        cmd += ["--ssl-certfile", listen.cert, "--ssl-keyfile", listen.key]
    return cmd


def _granian(listen: Listen) -> list[str]:
    # `--http auto` answers HTTP/1.1, h2c by prior knowledge, and h2 through ALPN.
    cmd = _python("-m", "granian", APP, "--interface", "asgi", "--host", "127.0.0.1")
    cmd += ["--port", str(listen.port), "--workers", "1", "--http", "auto"]
    cmd += ["--log-level", "warning", "--no-access-log"]
    if listen.tls:
        cmd += ["--ssl-certificate", listen.cert, "--ssl-keyfile", listen.key]
    return cmd


def _daphne(listen: Listen) -> list[str]:
    if listen.tls:
        # Twisted offers h2 through ALPN on a TLS endpoint when h2, priority and
        # pyOpenSSL are importable (they come with aioquic and hypercorn here).
        endpoint = f"ssl:{listen.port}:interface=127.0.0.1:privateKey={listen.key}"
        endpoint += f":certKey={listen.cert}"
        return _python("-m", "daphne", "-e", endpoint, "-v", "0", APP)
    return _python("-m", "daphne", "-b", "127.0.0.1", "-p", str(listen.port), "-v", "0", APP)


def _daphne_h2() -> bool:
    """Whether Twisted here can speak HTTP/2 over TLS (daphne's only way to HTTP/2)."""
    try:
        from twisted.web import http  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return False
    ok = bool(getattr(http, "H2_ENABLED", False))
    return ok and importlib.util.find_spec("OpenSSL") is not None


def _program(name: str) -> str | None:
    """An executable on PATH, or in /usr/sbin (nghttpd's place on Debian, often off PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def htdocs() -> Path:
    """The static server's document root: `download` holds the same 1 MiB as the app's
    /download (written once; the app's bytes are b"x" * 1 MiB)."""
    from interop.benchmarks.apps import DOWNLOAD_SIZE

    root = Path(tempfile.gettempdir()) / "multiplex-bench-htdocs"
    root.mkdir(exist_ok=True)
    download = root / "download"
    if not download.exists() or download.stat().st_size != DOWNLOAD_SIZE:
        download.write_bytes(b"x" * DOWNLOAD_SIZE)
    return root


def _nghttpd(listen: Listen) -> list[str]:
    # One worker thread (its default); nghttpd's own TLS (OpenSSL), ALPN h2.
    cmd = [str(_program("nghttpd")), "--address", "127.0.0.1", "--htdocs", str(htdocs())]
    if listen.tls:
        return [*cmd, str(listen.port), listen.key, listen.cert]
    return [*cmd, "--no-tls", str(listen.port)]


_NO_H3 = "no HTTP/3"

SPECS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "multiplex",
            "multiplex",
            frozenset({H1, H2C, H2, H3, WS}),
            {},
            _multiplex,
            "uvloop (--loop auto)",
        ),
        ServerSpec(
            "hypercorn-asyncio",
            "hypercorn",
            frozenset({H1, H2C, H2, H3, WS}),
            {},
            _hypercorn("asyncio"),
            "-k asyncio; supervisor + 1 worker process",
        ),
        ServerSpec(
            "hypercorn-uvloop",
            "hypercorn",
            frozenset({H1, H2C, H2, H3, WS}),
            {},
            _hypercorn("uvloop"),
            "-k uvloop; supervisor + 1 worker process",
        ),
        ServerSpec(
            "bare-aioquic",
            "aioquic",
            frozenset({H3}),
            {
                H1: "HTTP/3 only",
                H2C: "HTTP/3 only",
                H2: "HTTP/3 only",
                WS: "HTTP/3 only",
            },
            _bare_aioquic,
            "aioquic's serve() + H3Connection answering from its event callback: no ASGI,"
            " no tasks (the yardstick, not a server)",
        ),
        ServerSpec(
            "uvicorn",
            "uvicorn",
            frozenset({H1, WS}),
            {H2C: "no HTTP/2", H2: "no HTTP/2", H3: _NO_H3},
            _uvicorn,
            "httptools + uvloop when installed; WebSocket: websockets-sansio (what its"
            " `--ws auto` picks when websockets is installed)",
        ),
        ServerSpec(
            "granian",
            "granian",
            frozenset({H1, H2C, H2, WS}),
            {H3: _NO_H3},
            _granian,
            "--interface asgi --http auto; supervisor + 1 worker process",
        ),
        ServerSpec(
            "daphne",
            "daphne",
            frozenset({H1, WS} | ({H2} if _daphne_h2() else set())),
            {
                H2C: "no h2c",
                **({} if _daphne_h2() else {H2: "Twisted without its http2/tls extras"}),
                H3: _NO_H3,
            },
            _daphne,
            "Twisted; HTTP/2 only over TLS through ALPN (Twisted's h2 support), no h2c",
        ),
        ServerSpec(
            "nghttpd",
            "nghttp2-server",
            frozenset({H2C, H2}),
            {H1: "no HTTP/1.1", H3: _NO_H3, WS: "no WebSocket"},
            _nghttpd,
            "C (nghttp2), serving the same 1 MiB as a static file: the download yardstick",
            program="nghttpd",
            only=frozenset({"h2-download", "h2c-download"}),
            only_why="static files only",
        ),
    )
}

# `--servers hypercorn` means both of its worker classes.
ALIASES = {"hypercorn": ["hypercorn-asyncio", "hypercorn-uvloop"]}


def resolve(names: str) -> list[ServerSpec]:
    chosen: list[str] = []
    for raw in names.split(","):
        name = raw.strip()
        if not name:
            continue
        for each in ALIASES.get(name, [name]):
            if each not in SPECS:
                raise SystemExit(f"unknown server {each!r}; known: {', '.join(SPECS)}")
            if each not in chosen:
                chosen.append(each)
    return [SPECS[name] for name in chosen]


def free_port() -> int:
    """A port free on both TCP and UDP (HTTP/3 listens on the same number over UDP)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def pinned(core: int, cmd: list[str]) -> list[str]:
    """`cmd` run on one CPU core, when taskset is there (it is on Debian)."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return cmd
    return ["taskset", "-c", str(core), *cmd]


def _children(pid: int) -> list[int]:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _children_proc(pid)
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _children_proc(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far, in seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_kib(pid: int) -> int:
    """VmHWM (the peak resident set) of one process, in KiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class RunningServer:
    spec: ServerSpec
    listen: Listen
    proc: subprocess.Popen[bytes]
    log: Path
    pids: set[int] = field(default_factory=set)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with status {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.listen.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            self.pids.update(_children(self.proc.pid))
            return
        raise RuntimeError(f"{self.spec.name} did not listen within {timeout}s: {self.log_tail()}")

    def peak_rss_mib(self) -> float:
        """Sum of the peak RSS of the server's processes (supervisor and workers)."""
        self.pids.update(_children(self.proc.pid))
        self.pids.add(self.proc.pid)
        return sum(peak_rss_kib(pid) for pid in self.pids) / 1024

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far."""
        self.pids.update(_children(self.proc.pid))
        self.pids.add(self.proc.pid)
        return sum(cpu_seconds(pid) for pid in self.pids)

    def stop(self, timeout: float = 15.0) -> None:
        self.pids.update(_children(self.proc.pid))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids - {self.proc.pid}:
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, size: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def start(spec: ServerSpec, listen: Listen, log: Path, core: int = 0) -> RunningServer:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            pinned(core, spec.command(listen)),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return RunningServer(spec, listen, proc, log)
