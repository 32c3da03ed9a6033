"""The benchmark harness keeps working: a smoke run (one short round per scenario) against
multiplex and Hypercorn writes a table with a positive figure in every cell. No timing is
asserted: the figures of a smoke run mean nothing."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interop.benchmarks.scenarios import SCENARIOS
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def smoke_run(table: Path, *args: str, timeout: float) -> str:
    """`python -m interop.benchmarks --smoke ARGS --output TABLE`; the table's text."""
    result = subprocess.run(
        [sys.executable, "-m", "interop.benchmarks", "--smoke", *args, "--output", str(table)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert table.exists(), result.stdout + result.stderr
    return table.read_text()


def throughput_rows(text: str) -> dict[str, list[str]]:
    """The throughput table: scenario title (without its unit) -> the servers' cells."""
    return {
        line.split(" (")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")][1:]
        for line in text.split("Peak memory")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| Scenario")
    }


@pytest.mark.timeout(240)
def test_benchmark_smoke_writes_a_table(tmp_path: Path) -> None:
    for tool in ("wrk", "h2load", "gtlsclient"):
        require_tool(tool)
    if importlib.util.find_spec("hypercorn") is None:
        pytest.skip("hypercorn not installed")
    text = smoke_run(tmp_path / "table.md", "--servers", "multiplex,hypercorn", timeout=180)
    assert "Machine:" in text and "Date:" in text
    header = next(line for line in text.splitlines() if line.startswith("| Scenario |"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "multiplex",
        "hypercorn-asyncio",
        "hypercorn-uvloop",
    ]
    throughput = text.split("Peak memory")[0]
    for scenario in SCENARIOS:
        row = next(
            (line for line in throughput.splitlines() if line.startswith(f"| {scenario.title} (")),
            None,
        )
        assert row is not None, f"no row for {scenario.key}:\n{text}"
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == 3, row
        for cell in cells:
            number = re.match(r"[\d,.]+", cell)
            assert number is not None, f"{scenario.key}: {cell!r}\n{text}"
            assert float(number.group(0).replace(",", "")) > 0, row
    # Each figure per core-second of the server's CPU. A smoke run is short enough for a
    # cell to have used less than one /proc clock tick ("not measured"), but not every cell.
    per_core = text.split("Per server core")[1].split("Servers as run")[0]
    numbers = 0
    for scenario in SCENARIOS:
        row = next(line for line in per_core.splitlines() if line.startswith(f"| {scenario.title}"))
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == 3, row
        assert all(re.match(r"[\d,.]+|not measured", cell) for cell in cells), row
        numbers += sum(1 for cell in cells if cell[0].isdigit())
    assert numbers > len(SCENARIOS), per_core
    table = tmp_path / "table.md"
    assert table.with_suffix(".json").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert table.with_suffix(".png").stat().st_size > 0
    # The h2 hello rows are followed by the in-memory HTTP/2 ceiling and their share of it.
    assert "HTTP/2 ceiling" in text and "% of the ceiling" in text, text


@pytest.mark.timeout(120)
def test_benchmark_smoke_runs_nghttpd_on_the_downloads_only(tmp_path: Path) -> None:
    """nghttpd serves the same 1 MiB as a static file beside multiplex; it has no app,
    so the hello scenarios are n/a for it, with the reason."""
    require_tool("h2load")
    require_tool("nghttpd")  # Debian: nghttp2-server, in /usr/sbin
    scenarios = "h2-download,h2c-download,h2c-hello-c10m10"
    text = smoke_run(
        tmp_path / "table.md",
        *("--servers", "multiplex,nghttpd", "--scenarios", scenarios),
        timeout=100,
    )
    rows = throughput_rows(text)
    for title in ("HTTP/2 TLS 1 MiB downloads, -c4 -m4", "h2c 1 MiB downloads, -c4 -m4"):
        assert all(re.match(r"[\d,.]+ ", c + " ") for c in rows[title]), rows
    assert rows["h2c hello, h2load -c10 -m10"][1] == "n/a (static files only)", rows


@pytest.mark.timeout(120)
def test_bare_aioquic_server_runs_the_h3_scenarios_only(tmp_path: Path) -> None:
    """The bare aioquic yardstick answers the HTTP/3 scenarios beside multiplex, and is
    marked n/a (not failed) where it has nothing to serve."""
    require_tool("gtlsclient")
    text = smoke_run(
        tmp_path / "table.md",
        *("--scenarios", "h3-hello-one,h1", "--servers", "multiplex,bare-aioquic"),
        timeout=100,
    )
    rows = throughput_rows(text)
    h3 = next(cells for title, cells in rows.items() if title.startswith("HTTP/3"))
    h1 = next(cells for title, cells in rows.items() if title.startswith("HTTP/1.1"))
    assert re.match(r"[\d,]+ \(", h3[1]), h3
    assert h1[1].startswith("n/a"), h1


@pytest.mark.timeout(120)
def test_tls_surcharge_reports_both_modes_and_the_paired_difference() -> None:
    # Real servers and h2load over loopback, TLS and h2c; only the shape of the report is
    # checked (the figures of so short a run mean nothing).
    for tool in ("h2load", "taskset"):
        require_tool(tool)
    args = ["--rounds", "1", "--requests", "200", "--clients", "2", "--streams", "5"]
    result = subprocess.run(
        [sys.executable, "-m", "interop.benchmarks.tls_surcharge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["round 0 TLS", "round 0 h2c"]
    for line in lines[:2]:
        # At most one read system call per request: the server read requests in batches.
        reads = float(re.search(r"([\d.]+) reads", line).group(1))  # type: ignore[union-attr]
        assert 0 < reads <= 1, line
    assert "TLS surcharge (median of paired differences)" in lines[2]
