"""A 100 MiB file through `http.response.pathsend` to a rate-limited curl, with the
server in its own process: its resident memory must stay near its baseline (the file
is streamed in bounded chunks or by sendfile(2), never read whole)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.test_cli_serve import free_port, start, wait_for_accept

pytestmark = pytest.mark.timeout(120)

SIZE = 100 * 1024 * 1024
# What the server may grow by while it sends: far below the file's size.
MEMORY_BOUND = 8 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Sampler:
    """Peak RSS of a process, sampled in a thread while a transfer runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    with open(path, "wb") as file:
        file.truncate(SIZE)  # sparse: no 100 MiB of disk writes for a test
    return path


@pytest.fixture
def server(request: Any, dev_certs: Any) -> Iterator[tuple[int, bool, subprocess.Popen[str]]]:
    tls, loop = request.param
    port = free_port()
    args = ["tests.cli_apps:pathsend", "--bind", f"127.0.0.1:{port}", "--loop", loop]
    args += ["--no-access-log"]
    if tls:
        args += ["--certfile", str(dev_certs.cert), "--keyfile", str(dev_certs.key)]
    process = start(*args)
    try:
        wait_for_accept(process, port)
        yield port, tls, process
    finally:
        process.kill()
        process.communicate()


@pytest.mark.parametrize(
    "server",
    [(True, "auto"), (False, "asyncio"), (False, "auto")],
    ids=["h2-tls", "h1-sendfile", "h1-uvloop-chunks"],
    indirect=True,
)
def test_pathsend_100_mib_in_bounded_memory(
    server: tuple[int, bool, subprocess.Popen[str]], big_file: Path
) -> None:
    require_tool("curl")
    port, tls, process = server
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}/?{big_file}"
    protocol = ["--http2"] if tls else ["--http1.1"]
    base = [
        "curl",
        "-sS",
        "-k",
        *protocol,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{http_version}",
    ]
    warm = subprocess.run([*base, f"{scheme}://127.0.0.1:{port}/?{Path(__file__)}"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert warm.returncode == 0, warm.stderr
    baseline = rss(process.pid)
    with Sampler(process.pid) as sampler:
        result = subprocess.run(
            [*base, "--limit-rate", "60M", url],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    size, version = result.stdout.split()
    assert int(size) == SIZE
    assert version == ("2" if tls else "1.1")
    assert sampler.peak - baseline < MEMORY_BOUND, (baseline, sampler.peak)
