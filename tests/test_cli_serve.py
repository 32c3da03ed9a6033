"""`python -m multiplex` serving for real: start, answer, stop on SIGINT; port in use.

Skipped only while `multiplex.server` does not exist yet.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from interop.h3load import run_load

pytest.importorskip("multiplex.server", reason="multiplex.server is not written yet")

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MULTIPLEX_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "multiplex", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=ROOT,
    )


def wait_for_accept(process: subprocess.Popen[Any], port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"{process.args[0]} exited with {process.returncode}: {stderr}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"server did not accept on port {port} within {timeout}s")


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """SIGINT, as Ctrl-C would send; returns (status, stdout, stderr)."""
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stdout, stderr


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Whatever a test started is killed at the end, even if the test failed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serves_then_exits_0_on_sigint(processes: list[subprocess.Popen[str]]) -> None:
    port = free_port()
    process = start("tests.cli_apps:hello", "--bind", f"127.0.0.1:{port}", "--lifespan", "on")
    processes.append(process)
    wait_for_accept(process, port)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert response.status_code == 200
    assert response.text == "hello"
    status, _, stderr = interrupt(process)
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert '"GET / HTTP/1.1" 200' in stderr  # the access log line


def test_startup_objects_are_frozen_out_of_the_collector(
    processes: list[subprocess.Popen[str]],
) -> None:
    # The serving process freezes what startup made (multiplex.server.serve), so full
    # collections under load do not walk it again; the app sees the frozen count.
    port = free_port()
    process = start("tests.cli_apps:gc_frozen", "--bind", f"127.0.0.1:{port}")
    processes.append(process)
    wait_for_accept(process, port)
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert int(response.text) > 1000  # the modules, the app, the config: thousands
    status, _, stderr = interrupt(process)
    assert status == 0, stderr


def test_port_in_use_exits_1(processes: list[subprocess.Popen[str]]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = start("tests.cli_apps:hello", "--bind", f"127.0.0.1:{port}")
        processes.append(process)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("multiplex: error: ")]
    assert len(errors) == 1, stderr
    assert f"127.0.0.1:{port}" in errors[0]


def test_failed_lifespan_startup_exits_1(processes: list[subprocess.Popen[str]]) -> None:
    process = start("tests.cli_apps:refuses_to_start", "--bind", f"127.0.0.1:{free_port()}")
    processes.append(process)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "multiplex: error: lifespan startup failed: database unreachable" in stderr


def test_demo_serves_its_page_over_tls(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    certs = tmp_path / "certs"
    process = start("demo", "--bind", f"127.0.0.1:{port}", env={"MULTIPLEX_CERTS_DIR": str(certs)})
    processes.append(process)
    wait_for_accept(process, port)
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with httpx.Client(verify=context, http2=True, timeout=10) as client:
        response = client.get(f"https://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert "text/html" in response.headers["content-type"]
    # HTTP/3 on the same port number over UDP, advertised to TCP clients.
    assert response.headers["alt-svc"] == f'h3=":{port}"; ma=86400'
    rate = asyncio.run(run_load(port, str(certs / "ca.pem"), 5, 1, 5))
    assert rate > 0  # run_load raises unless all 5 HTTP/3 requests got a 200
    status, stdout, stderr = interrupt(process)
    assert status == 0, stderr
    assert f"https://127.0.0.1:{port}/" in stdout
    assert "multiplex certs" in stdout


def test_unix_socket_and_inherited_fd(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """`--bind unix:PATH` and `--bind fd://N` (a socket a supervisor opened for us)."""
    path = tmp_path / "app.sock"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fd = listener.fileno()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MULTIPLEX_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multiplex",
            "tests.apps:hello",
            "--lifespan",
            "off",
            "--bind",
            f"unix:{path}",
            "--bind",
            f"fd://{fd}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=ROOT,
        pass_fds=(fd,),
    )
    processes.append(process)
    listener.close()  # the child holds its own copy
    wait_for_accept(process, port)
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=10) as client:
        assert client.get("http://localhost/").text == "hello 1.1"
    with httpx.Client(timeout=10) as client:
        assert client.get(f"http://127.0.0.1:{port}/").text == "hello 1.1"
    status, _, stderr = interrupt(process)
    assert status == 0, stderr
