"""`--workers N` and `--reload` for real: a supervisor process and its workers on one
port, answering with their pids (tests.cli_apps:pid)."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

from multiplex.supervisor import EARLY_DEATH
from tests.protocols.h3client import client_configuration, h3_connect
from tests.test_cli_serve import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


class Supervised:
    """`python -m multiplex ...` in a session of its own (so that cleanup can kill the
    supervisor and its workers together, by process group), its stderr read by a
    thread as it comes (the log says when workers are ready)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MULTIPLEX_")}
        environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
        environ.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "multiplex", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            cwd=ROOT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, text: str, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.log.count(text) < count:
            assert self.process.poll() is None or self.reader.is_alive(), self.log
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log}"
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM; the exit status once the supervisor and every worker are gone
        (the reader sees end-of-file when the last process holding stderr exits)."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self.reader.join(timeout)
        assert not self.reader.is_alive(), "a worker outlived the supervisor"
        return status

    def kill_all(self) -> None:
        if self.reader.is_alive() or self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        self.reader.join(10)


@pytest.fixture
def supervise() -> Iterator[Any]:
    started: list[Supervised] = []

    def start(*args: str, ready: bool = True) -> Supervised:
        server = Supervised(*args)
        started.append(server)
        if ready:
            server.wait_log("Workers ready")
        return server

    yield start
    for server in started:
        server.kill_all()


@functools.cache
def trusting(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def pid_at(port: int, path: str = "/", timeout: float = 10, ca: str | None = None) -> int:
    # A new connection each time: SO_REUSEPORT spreads connections, not requests.
    url = f"{'https' if ca else 'http'}://127.0.0.1:{port}{path}"
    response = httpx.get(url, timeout=timeout, verify=trusting(ca) if ca else True)
    assert response.status_code == 200
    return int(response.text)


def pids_seen(port: int, tries: int = 60, ca: str | None = None) -> set[int]:
    return {pid_at(port, ca=ca) for _ in range(tries)}


def new_pids(port: int, old: set[int], tries: int = 20, ca: str | None = None) -> set[int]:
    """Pids serving now that are not in `old`; empty while no worker listens."""
    try:
        return pids_seen(port, tries, ca) - old
    except httpx.HTTPError:
        return set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of the supervisor counts as gone.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except FileNotFoundError:
        return False


def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def serve_pid(supervise: Any, port: int, *options: str) -> Supervised:
    server: Supervised = supervise(
        "tests.cli_apps:pid", "--workers", "2", "--bind", f"127.0.0.1:{port}", *options
    )
    return server


def test_two_workers_share_the_port(supervise: Any) -> None:
    port = free_port()
    server = serve_pid(supervise, port)
    pids = pids_seen(port)
    assert len(pids) == 2, pids
    assert server.pid not in pids  # the supervisor serves nothing itself
    assert f"[worker {min(pids)}]" in server.log  # workers log with their pid
    assert server.stop() == 0, server.log
    assert not any(alive(pid) for pid in pids), "workers outlived the supervisor"
    for pid in pids:  # each worker ran the app's lifespan, and ended it gracefully
        assert f"lifespan startup in {pid}" in server.log
        assert f"lifespan shutdown in {pid}" in server.log
    assert "Traceback" not in server.log
    assert "replacing it" not in server.log  # stopping workers are not replaced


def test_a_port_in_use_is_a_one_line_error(supervise: Any) -> None:
    """Even a port whose listener has SO_REUSEPORT (as our workers' do) is not joined:
    it is someone else's."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server: Supervised = supervise(
            "tests.cli_apps:pid", "--workers", "2", "--bind", f"127.0.0.1:{port}", ready=False
        )
        assert server.process.wait(30) == 1
        server.reader.join(30)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in server.log
    assert "Traceback" not in server.log


def test_an_app_that_cannot_be_imported_fails_the_start(supervise: Any) -> None:
    server: Supervised = supervise(
        "tests.no_such_module:app", "--workers", "2", "--bind", "127.0.0.1:0", ready=False
    )
    assert server.process.wait(30) == 1
    server.reader.join(30)
    # Each worker fails alike, but the supervisor stops the other once the first one
    # fails, so the second may never get as far as saying why.
    assert server.log.count("error: cannot import app module 'tests.no_such_module'") >= 1
    assert "Workers failed to start" in server.log
    assert "Traceback" not in server.log


def test_killed_worker_is_replaced(supervise: Any) -> None:
    port = free_port()
    started = time.monotonic()  # before the workers start
    server = serve_pid(supervise, port)
    before = pids_seen(port)
    assert len(before) == 2
    victim = min(before)
    # Past EARLY_DEATH, a death is not a crash at startup: the replacement starts at once.
    time.sleep(max(0.0, EARLY_DEATH + 0.5 - (time.monotonic() - started)))
    os.kill(victim, signal.SIGKILL)
    until(lambda: not alive(victim), 30, "the killed worker to be gone")
    # While its replacement starts, connections the kernel puts in the dead worker's
    # slot wait there for the replacement: every one is answered, none reset.
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
    for sock in waiting:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
    for sock in waiting:
        with sock:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    until(lambda: len(new_pids(port, before)) >= 1, 30, "a replacement worker")
    after = pids_seen(port)
    assert victim not in after and len(after) == 2, (before, after)
    assert server.stop() == 0
    assert f"Worker {victim} exited with status -9; replacing it" in server.log


def test_sighup_reload_drops_no_request_in_flight(supervise: Any) -> None:
    port = free_port()
    server = serve_pid(supervise, port)
    old = pids_seen(port)
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(pid_at(port, "/slow")))
    slow.start()
    server.wait_log("slow request in")  # the app has it, and sleeps 2 s
    server.signal(signal.SIGHUP)
    server.wait_log("Reloaded")
    slow.join(timeout=30)
    assert results and results[0] in old  # answered, by the old generation
    new = pids_seen(port)
    assert len(new) == 2 and not (new & old), (old, new)
    until(lambda: not any(alive(pid) for pid in old), 30, "the old workers to exit")
    assert server.stop() == 0


def raw_pid_at(port: int) -> int:
    """`pid_at` on a bare socket: a new connection per request at a few thousand a
    second (httpx makes a client, and a TLS context, per call: tens a second), so that
    many connections are being accepted at the moment an old worker stops."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    if not response.startswith(b"HTTP/1.1 200 "):
        raise ConnectionError(f"no response: {response[:60]!r}")
    return int(response.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_keep_being_answered_across_reloads(supervise: Any, loop: str) -> None:
    """Clients that keep making requests (a new connection each) through reloads see no
    failure: the new generation listens before the old one closes; a new worker accepts
    from the socket its predecessor did, so nothing waiting in its accept queue is reset
    when the old one closes its copy; and a connection an old worker accepted just before
    is still served, on either event loop (asyncio makes a connection's transport a loop
    turn after accepting it). Before these, about one reload in two cut a connection."""
    pytest.importorskip(loop)
    port = free_port()
    server = serve_pid(supervise, port, "--no-access-log", "--loop", loop)
    answered: list[int] = []
    failures: list[str] = []
    done = threading.Event()

    def client(get: Any) -> None:
        while not done.is_set() and len(answered) < 200_000:
            try:
                answered.append(get(port))
            except (OSError, httpx.HTTPError) as exc:
                failures.append(repr(exc))

    clients = [threading.Thread(target=client, args=(raw_pid_at,)) for _ in range(3)]
    clients.append(threading.Thread(target=client, args=(pid_at,)))
    for thread in clients:
        thread.start()
    try:
        for generation in range(1, 6):
            server.signal(signal.SIGHUP)
            server.wait_log("Reloaded", count=generation)
    finally:
        done.set()
        for thread in clients:
            thread.join(30)
    assert not failures, (len(failures), len(answered), failures[:5])
    assert len(set(answered)) >= 6  # several generations answered
    assert server.stop() == 0


def test_sigterm_lets_requests_in_flight_finish(supervise: Any) -> None:
    port = free_port()
    server = serve_pid(supervise, port)
    pids = pids_seen(port)
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(pid_at(port, "/slow")))
    slow.start()
    server.wait_log("slow request in")
    assert server.stop() == 0
    slow.join(timeout=30)
    assert results and results[0] in pids
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_worker_that_does_not_stop_is_killed(supervise: Any) -> None:
    """A worker whose event loop is blocked cannot act on SIGTERM: past
    graceful_timeout (+ a margin for lifespan shutdown) it is killed, and the
    supervisor still exits."""
    port = free_port()
    server = serve_pid(supervise, port, "--graceful-timeout", "1")
    outcome: list[str] = []

    def block() -> None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/block", timeout=60)
            outcome.append("answered")
        except httpx.HTTPError:
            outcome.append("cut")

    blocking = threading.Thread(target=block)
    blocking.start()
    server.wait_log("blocking request in")
    stuck = int(server.log.split("blocking request in ")[1].split()[0])
    assert server.stop() == 0  # within the 60 s bound, though the app blocks for 30
    assert f"Worker {stuck} outlived the graceful timeout: killed" in server.log
    assert not alive(stuck)
    blocking.join(30)
    assert outcome == ["cut"]  # its connection went with the killed worker


def test_workers_follow_a_killed_supervisor(supervise: Any) -> None:
    """SIGKILL leaves the supervisor no chance to stop its workers: they notice (the
    pipe only it held is closed) and shut down by themselves, not serve on orphaned."""
    port = free_port()
    server = serve_pid(supervise, port)
    pids = pids_seen(port)
    os.kill(server.pid, signal.SIGKILL)
    server.wait_log("Supervisor gone: shutting down", count=2)
    until(lambda: not any(alive(pid) for pid in pids), 30, "the orphaned workers to exit")


def test_workers_crashing_at_startup_back_off(supervise: Any, tmp_path: Path) -> None:
    """A worker that dies right after it starts is replaced after a doubling delay, so
    a broken deploy does not make the supervisor spin; once the cause is gone, the
    workers come back."""
    marker = tmp_path / "broken"
    (tmp_path / "crashy.py").write_text(
        "import os, pathlib\n"
        f"if pathlib.Path({str(marker)!r}).exists():\n"
        "    raise SystemExit('broken on purpose')\n"
        "from tests.cli_apps import pid as app\n"
    )
    port = free_port()
    server: Supervised = supervise(
        "crashy:app", "--workers", "2", "--app-dir", str(tmp_path), "--bind", f"127.0.0.1:{port}"
    )
    before = pids_seen(port)
    marker.touch()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    server.wait_log("in 2.0 s (workers keep dying at startup)")
    # 2 first workers, 2 replacements at once, then one more per delay (0.5, 1, 2 s).
    assert server.log.count("Started worker") <= 6, server.log
    marker.unlink()
    until(lambda: len(new_pids(port, before)) == 2, 60, "two healthy workers")
    assert server.stop() == 0


def quic_options(port: int, dev_certs: Any) -> list[str]:
    return [
        "--quic-bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
    ]


def test_http3_through_workers(supervise: Any, dev_certs: Any) -> None:
    port = free_port()
    server = serve_pid(supervise, port, *quic_options(port, dev_certs))

    async def fetch() -> int:
        async with h3_connect(port, str(dev_certs.ca_cert)) as client:
            # Several requests on one connection: one worker owns the connection.
            bodies = {(await client.request("/")).body for _ in range(5)}
        assert len(bodies) == 1, bodies
        return int(bodies.pop())

    pids = {asyncio.run(fetch()) for _ in range(8)}
    assert pids and all(alive(pid) for pid in pids)
    assert server.stop() == 0


class RawQuic:
    """An aioquic client connection driven by hand over a UDP socket, so a test can
    act between two of its packets."""

    def __init__(self, port: int, ca_cert: str) -> None:
        self.address = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.quic = QuicConnection(configuration=client_configuration(ca_cert))
        self.quic.connect(self.address, now=time.monotonic())

    def flush(self) -> None:
        for data, _ in self.quic.datagrams_to_send(now=time.monotonic()):
            self.sock.sendto(data, self.address)

    def receive(self, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.sock.recv(65536)
            except TimeoutError:
                pass
        raise TimeoutError("no datagram from the server")

    def drain(self) -> None:
        """Drop every datagram already queued on the socket (what the server sent before
        the test acted), so the next receive() sees only the answer to what comes next."""
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(65536)
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.1)

    def handshake(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.flush()
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                timer = self.quic.get_timer()
                if timer is not None and timer <= time.monotonic():
                    self.quic.handle_timer(time.monotonic())
                continue
            self.quic.receive_datagram(data, self.address, now=time.monotonic())
            while (event := self.quic.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    self.flush()
                    return True
        return False

    def close(self) -> None:
        self.sock.close()


def is_retry(datagram: bytes) -> bool:
    return datagram[0] & 0xF0 == 0xF0  # long header, QUIC v1 packet type 3


def test_retry_token_good_across_a_reload(supervise: Any, dev_certs: Any) -> None:
    """A client gets a Retry from a worker of one generation and sends its token after
    a reload replaced it: the new worker accepts the token (one key for all workers;
    with per-process keys it would ignore the token and Retry again, which the client
    must not follow: RFC 9000 section 17.2.5.2)."""
    port = free_port()
    server = serve_pid(supervise, port, "--quic-retry", *quic_options(port, dev_certs))
    old = pids_seen(port, ca=str(dev_certs.ca_cert))
    client = RawQuic(port, str(dev_certs.ca_cert))
    try:
        client.flush()
        retry = client.receive()
        assert is_retry(retry)
        client.quic.receive_datagram(retry, client.address, now=time.monotonic())
        server.signal(signal.SIGHUP)
        server.wait_log("Reloaded")
        until(lambda: not any(alive(pid) for pid in old), 30, "the old workers to exit")
        assert client.handshake(), server.log
    finally:
        client.close()
    assert server.stop() == 0


def test_stateless_reset_from_a_replaced_worker(supervise: Any, dev_certs: Any) -> None:
    """Every worker that had a QUIC connection is killed; a packet for it reaches a
    replacement, which answers with the stateless reset token the dead worker gave
    the client (RFC 9000 section 10.3): the client learns at once that the connection
    is gone."""
    port = free_port()
    server = serve_pid(supervise, port, *quic_options(port, dev_certs))
    ca = str(dev_certs.ca_cert)
    before = pids_seen(port, ca=ca)
    client = RawQuic(port, str(dev_certs.ca_cert))
    try:
        assert client.handshake()
        token = client.quic._peer_cid.stateless_reset_token
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        until(lambda: len(new_pids(port, before, ca=ca)) == 2, 30, "two replacements")
        # The killed workers may have sent more after the handshake (HANDSHAKE_DONE, a
        # Handshake retransmission); those wait on the socket and are not the answer.
        client.drain()
        client.quic.send_ping(1)
        client.flush()
        answer = client.receive()
    finally:
        client.close()
    assert answer[0] & 0xC0 == 0x40  # looks like a short header packet
    assert answer[-16:] == token
    assert server.stop() == 0


def test_reload_on_source_change(supervise: Any, tmp_path: Path) -> None:
    module = tmp_path / "reloadable.py"
    app = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'%s'})\n"
    )
    module.write_text(app % "first")
    port = free_port()
    server: Supervised = supervise(
        "reloadable:app",
        "--reload",
        "--app-dir",
        str(tmp_path),
        "--bind",
        f"127.0.0.1:{port}",
        "--lifespan",
        "off",
    )
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "first"
    # A different mtime whatever the filesystem's resolution, without waiting for it.
    module.write_text(app % "second")
    stat = module.stat()
    os.utime(module, (stat.st_atime, stat.st_mtime + 2))
    server.wait_log("reloadable.py changed")

    def reloaded() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "second"
        except httpx.HTTPError:
            return False

    until(reloaded, 30, "the new code")
    assert server.stop() == 0
