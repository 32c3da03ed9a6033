"""The results: a Markdown table of medians with each peer's ratio to multiplex, the peak
memory table, the machine they were measured on, and a PNG bar chart of the ratios."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from interop.benchmarks.scenarios import Scenario
from interop.benchmarks.servers import ServerSpec

BASELINE = "multiplex"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass
class Cell:
    """One (scenario, server): its samples, peak memory, or why it was not run."""

    values: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    # Cores' worth of CPU the server used while the load ran (1.0: one core all along).
    busy: list[float] = field(default_factory=list)
    skipped: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def median_rss(self) -> float | None:
        return statistics.median(self.rss_mib) if self.rss_mib else None

    @property
    def per_core(self) -> float | None:
        """The figure per core-second of server CPU, median over rounds: how much work
        the server does for its CPU, whether or not the load generator kept it busy."""
        rates = [
            value / busy for value, busy in zip(self.values, self.busy, strict=True) if busy > 0
        ]
        return statistics.median(rates) if rates else None


Results = dict[str, dict[str, Cell]]  # scenario key -> server name -> cell


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tool_version(package: str) -> str:
    """The Debian package version of a load generator, or '?' elsewhere."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.match(r"(?:\d+:)?([\d.]+)", out.stdout)
    return match.group(1) if out.returncode == 0 and match else "?"


def multiplex_commit() -> str:
    """The commit of the multiplex measured, marked when its tree has local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "multiplex"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head} + local changes" if dirty else head


def machine(servers: list[ServerSpec]) -> dict[str, str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "servers": ", ".join(f"{spec.name} {spec.version()}" for spec in servers),
        "commit": multiplex_commit(),
        "tools": (
            f"wrk {tool_version('wrk')}, h2load (nghttp2-client {tool_version('nghttp2-client')}), "
            f"gtlsclient (ngtcp2-client {tool_version('ngtcp2-client')})"
        ),
    }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell_text(cell: Cell, base: float | None, value: float | None, baseline: bool) -> str:
    if cell.skipped:
        return f"n/a ({cell.skipped})"
    if value is None:
        # A run too short for /proc's clock ticks has no per-core figure; that is no failure.
        return "failed" if not cell.values else "not measured"
    if baseline or base is None or base <= 0:
        return _number(value)
    return f"{_number(value)} ({value / base:.2f}{TIMES})"


def _table(
    results: Results,
    scenarios: list[Scenario],
    names: list[str],
    value: Callable[[Cell], float | None],
    with_unit: bool,
) -> list[str]:
    """One Markdown table, a row per scenario: `value` of each server's cell, with its
    ratio to multiplex's."""
    lines = [
        "| Scenario | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
    ]
    for scenario in scenarios:
        row = results.get(scenario.key, {})
        base_cell = row.get(BASELINE)
        base = value(base_cell) if base_cell else None
        cells = [
            _cell_text(row[name], base, value(row[name]), name == BASELINE)
            for name in names
            if name in row
        ]
        title = f"{scenario.title} ({scenario.unit})" if with_unit else scenario.title
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def markdown(
    results: Results,
    scenarios: list[Scenario],
    servers: list[ServerSpec],
    info: dict[str, str],
    rounds: int,
    smoke: bool,
) -> str:
    names = [spec.name for spec in servers]
    lines = [
        "# Benchmark: multiplex and its peers"
        + (" (smoke run: figures mean nothing)" if smoke else ""),
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['system']}, "
        f"Python {info['python']}",
        f"- Servers: {info['servers']} (multiplex at commit {info['commit']})",
        f"- Load generators: {info['tools']}, interop.h3load (aioquic), "
        "interop.benchmarks.ws_client (raw sockets, prebuilt frames)",
        f"- Method: each server on core 0, the load generator on core 1, loopback; "
        f"{rounds} round(s) interleaved server by server; medians. "
        f"In brackets: the ratio to multiplex (above 1.00{TIMES} the peer is faster).",
    ]
    if any(s.key.startswith("ws") for s in scenarios):
        lines.append(
            "- WebSocket echo: 32-byte text messages from interop.benchmarks.ws_client, a "
            "raw-socket client with every frame built before the clock starts and every "
            "echo checked byte for byte, time-bound like the rest. It spends less CPU per "
            "message than any server here (it prints its CPU use; 0.7 of multiplex's at one "
            "message in flight, where each message is a read and a write system call on "
            "each side, a third pipelined), so the server's core fills first. One message "
            "in flight per connection, and 16 in flight (pipelined)."
        )
    lines += [
        "",
    ]
    lines += _table(results, scenarios, names, lambda cell: cell.median, with_unit=True)
    lines += [
        "",
        "Peak memory: the sum of the peak RSS (VmHWM) of the server's processes, MiB, "
        "median over rounds (lower is better; the ratio is to multiplex).",
        "",
    ]
    lines += _table(results, scenarios, names, lambda cell: cell.median_rss, with_unit=False)
    lines += [
        "",
        "Per server core: each figure divided by the CPU the server's processes used while "
        "the load ran (user + system from /proc, in cores, warm-up included), median over "
        "rounds. Where the load generator is the limit, two servers can tie in the first "
        "table and still differ here: this is the work done per core-second of CPU "
        "(higher is better; the ratio is to multiplex).",
        "",
    ]
    lines += _table(results, scenarios, names, lambda cell: cell.per_core, with_unit=True)
    lines += ["", "Servers as run:", ""]
    lines += [f"- {spec.name}: {spec.note}" for spec in servers if spec.note]
    errors = [
        f"- {scenario.key} / {name}: {error}"
        for scenario in scenarios
        for name, cell in results.get(scenario.key, {}).items()
        for error in cell.errors[:1]
    ]
    if errors:
        lines += ["", "Failures (first error of each cell):", "", *errors]
    return "\n".join(lines) + "\n"


def chart(
    results: Results,
    scenarios: list[Scenario],
    servers: list[ServerSpec],
    info: dict[str, str],
    path: Path,
) -> bool:
    """A horizontal grouped bar chart of each server's ratio to multiplex; False if
    matplotlib is not installed (the `bench` extra)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [spec.name for spec in servers]
    rows = [s for s in scenarios if s.key in results]
    height = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.25 * len(rows) * max(3, len(names))))
    colors = plt.get_cmap("tab10")
    widest = 1.0
    for index, name in enumerate(names):
        ys: list[float] = []
        xs: list[float] = []
        labels: list[str] = []
        for position, scenario in enumerate(rows):
            row = results[scenario.key]
            cell, base = row.get(name), row.get(BASELINE)
            if cell is None or base is None or cell.median is None or not base.median:
                continue
            ys.append(position + (index - (len(names) - 1) / 2) * height)
            xs.append(cell.median / base.median)
            labels.append(f"{xs[-1]:.2f}{TIMES}")
        widest = max([widest, *xs])
        bars = ax.barh(ys, xs, height=height, label=name, color=colors(index % 10))
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{s.title}\n({s.unit})" for s in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("throughput relative to multiplex (higher is faster; missing bar = not run)")
    ax.set_title(
        f"multiplex and its peers, medians — {info['date']}\n"
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}",
        fontsize=10,
    )
    ax.set_xlim(0, max(1.1, widest) * 1.12)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def dump_json(results: Results, info: dict[str, str], path: Path) -> None:
    data = {
        "machine": info,
        "results": {
            key: {name: asdict(cell) for name, cell in row.items()} for key, row in results.items()
        },
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
