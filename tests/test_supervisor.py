"""`--workers N` and `--reload` for real: a supervisor process and its workers on one
port, answering with their pids (tests.cli_apps:pid)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.protocols.h3client import h3_connect
from tests.test_cli_serve import free_port, start, wait_for_accept

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def pid_at(port: int, path: str = "/", timeout: float = 10) -> int:
    # A new connection each time: SO_REUSEPORT spreads connections, not requests.
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)
    assert response.status_code == 200
    return int(response.text)


def pids_seen(port: int, tries: int = 60) -> set[int]:
    return {pid_at(port) for _ in range(tries)}


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


def test_two_workers_share_the_port(processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    process = start("tests.cli_apps:pid", "--workers", "2", "--bind", f"127.0.0.1:{port}")
    processes.append(process)
    wait_for_accept(process, port)
    pids = pids_seen(port)
    assert len(pids) == 2, pids
    assert process.pid not in pids  # the supervisor serves nothing itself
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert not any(alive(pid) for pid in pids), "workers outlived the supervisor"
    assert "Traceback" not in stderr


def test_killed_worker_is_replaced(processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    process = start("tests.cli_apps:pid", "--workers", "2", "--bind", f"127.0.0.1:{port}")
    processes.append(process)
    wait_for_accept(process, port)
    before = pids_seen(port)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    until(lambda: len(pids_seen(port, 20) - before) >= 1, 30, "a replacement worker")
    after = pids_seen(port)
    assert victim not in after and len(after) == 2, (before, after)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert f"Worker {victim} exited" in stderr


def test_sighup_reload_drops_no_request_in_flight(
    processes: list[subprocess.Popen[str]],
) -> None:
    port = free_port()
    process = start("tests.cli_apps:pid", "--workers", "2", "--bind", f"127.0.0.1:{port}")
    processes.append(process)
    wait_for_accept(process, port)
    old = pids_seen(port)
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(pid_at(port, "/slow")))
    slow.start()
    time.sleep(0.5)  # the slow request is in a worker now
    process.send_signal(signal.SIGHUP)
    slow.join(timeout=30)
    assert results and results[0] in old  # answered, by the old generation
    until(lambda: not (pids_seen(port, 20) & old), 30, "the new generation")
    new = pids_seen(port)
    assert len(new) == 2 and not (new & old), (old, new)
    until(lambda: not any(alive(pid) for pid in old), 30, "the old workers to exit")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert "Reloaded" in stderr, stderr


def test_http3_through_workers(processes: list[subprocess.Popen[str]], dev_certs: Any) -> None:
    port = free_port()
    process = start(
        "tests.cli_apps:pid",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--quic-bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
    )
    processes.append(process)
    wait_for_accept(process, port)

    async def fetch() -> int:
        async with h3_connect(port, str(dev_certs.ca_cert)) as client:
            # Several requests on one connection: one worker owns the connection.
            bodies = {(await client.request("/")).body for _ in range(5)}
        assert len(bodies) == 1, bodies
        return int(bodies.pop())

    pids = {asyncio.run(fetch()) for _ in range(8)}
    assert pids and all(alive(pid) for pid in pids)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)


def test_reload_on_source_change(processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
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
    process = start(
        "reloadable:app",
        "--reload",
        "--app-dir",
        str(tmp_path),
        "--bind",
        f"127.0.0.1:{port}",
        "--lifespan",
        "off",
    )
    processes.append(process)
    wait_for_accept(process, port)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text == "first"
    time.sleep(1.1)  # a different mtime, whatever the filesystem's resolution
    module.write_text(app % "second")

    def reloaded() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "second"
        except httpx.HTTPError:
            return False

    until(reloaded, 30, "the new code")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert "reloadable.py changed" in stderr
