"""Run the benchmark: `python -m interop.benchmarks [--smoke] [--rounds 3] [--scenarios ...]
[--servers ...] [--output results/latest.md]`.

For each round, for each scenario, each server that can serve it is started (pinned to
core 0), warmed up, measured by the load generator (pinned to core 1), and stopped; the
order of the servers rotates from round to round. Medians go into a Markdown table with
each peer's ratio to multiplex, beside a PNG chart and the raw samples (JSON).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from interop.benchmarks import h2ceiling, report, scenarios, servers
from interop.benchmarks.apps import UPLOAD_SIZE
from interop.benchmarks.report import Cell, Results

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SERVERS = "multiplex,hypercorn,bare-aioquic,uvicorn,granian,daphne,nghttpd"


def measure(
    spec: servers.ServerSpec,
    scenario: scenarios.Scenario,
    target: scenarios.Target,
    certs: tuple[str, str],
    logs: Path,
) -> tuple[float, float, float]:
    """One run: (the scenario's figure, the server's peak RSS in MiB, the cores' worth
    of CPU the server used while the load ran, warm-up included)."""
    listen = servers.Listen(target.port, scenario.tls, scenario.quic, certs[0], certs[1])
    running = servers.start(spec, listen, logs / f"{spec.name}.{scenario.key}.log")
    try:
        running.wait_ready()
        cpu, started = running.cpu_seconds(), time.monotonic()
        try:
            value = scenario.run(target)
        except scenarios.LoadError as exc:
            raise scenarios.LoadError(f"{exc}\n--- server log ---\n{running.log_tail()}") from exc
        busy = (running.cpu_seconds() - cpu) / (time.monotonic() - started)
        return value, running.peak_rss_mib(), busy
    finally:
        running.stop()


CEILING_TRIES = 5


def measure_ceiling(smoke: bool) -> dict[str, float] | None:
    """The in-memory HTTP/2 ceiling, run on the servers' core like a server; None if
    it failed (the table still stands without its footnote)."""
    cmd = [sys.executable, "-m", "interop.benchmarks.h2ceiling"]
    tries = 1 if smoke else CEILING_TRIES
    cmd += ["--requests", "2000" if smoke else "10000", "--tries", str(tries)]
    try:
        out = subprocess.run(
            servers.pinned(0, cmd),
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"h2 ceiling not measured: {exc}", file=sys.stderr)
        return None
    rates = {}
    for line in out.splitlines():
        match = re.match(r"(\S+)\s+([\d,]+) req/s", line)
        if match:
            rates[match.group(1)] = float(match.group(2).replace(",", ""))
    return rates if set(rates) >= set(h2ceiling.RUNNERS) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interop.benchmarks", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--smoke", action="store_true", help="one short round (CI)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated keys or prefixes (h1, h2c, h2, h3, ws); default: all: "
        + ", ".join(s.key for s in scenarios.SCENARIOS),
    )
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated; 'hypercorn' means both worker classes (default {DEFAULT_SERVERS})",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--output", type=Path, help="Markdown file (default results/latest.md, smoke.md)"
    )
    args = parser.parse_args(argv)
    # A shell starts a background job with SIGINT ignored, and an ignored signal stays
    # ignored across exec: the servers would then not stop on SIGINT. Catch it here, so
    # that they start with the default disposition (and Ctrl-C stops this run).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rounds = 1 if args.smoke else max(1, args.rounds)
    output: Path = args.output or RESULTS / ("smoke.md" if args.smoke else "latest.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    logs = output.parent / "logs"

    wanted = servers.resolve(args.servers)
    chosen = scenarios.resolve(args.scenarios)
    specs = [spec for spec in wanted if spec.installed()]
    for spec in wanted:
        if spec not in specs:
            print(f"{spec.name}: not installed, left out", file=sys.stderr)
    if not any(spec.name == report.BASELINE for spec in specs):
        print("multiplex must be among the servers (it is the baseline)", file=sys.stderr)
        return 2

    from multiplex import devcerts

    dev = devcerts.ensure()
    upload = output.parent / "upload-256k.bin"
    upload.write_bytes(bytes(range(256)) * (UPLOAD_SIZE // 256))
    certs = (str(dev.cert), str(dev.key))

    results: Results = {s.key: {} for s in chosen}
    for scenario in chosen:
        tool = scenarios.missing_tool(scenario)
        for spec in specs:
            cell = results[scenario.key][spec.name] = Cell()
            if scenario.needs not in spec.can:
                cell.skipped = spec.cannot.get(scenario.needs, f"no {scenario.needs}")
            elif spec.only is not None and scenario.key not in spec.only:
                cell.skipped = spec.only_why
            elif tool:
                cell.skipped = f"{tool} not installed"

    started = time.monotonic()
    for round_no in range(rounds):
        order = specs[round_no % len(specs) :] + specs[: round_no % len(specs)]
        for scenario in chosen:
            for spec in order:
                cell = results[scenario.key][spec.name]
                if cell.skipped:
                    continue
                target = scenarios.Target(
                    port=servers.free_port(),
                    ca_file=str(dev.ca_cert),
                    upload_file=upload,
                    smoke=args.smoke,
                    duration=args.duration,
                )
                try:
                    value, rss, busy = measure(spec, scenario, target, certs, logs)
                except (scenarios.LoadError, RuntimeError) as exc:
                    cell.errors.append(str(exc).strip().splitlines()[0][:300])
                    print(f"[round {round_no + 1}] {scenario.key:17s} {spec.name:18s} FAILED")
                    print(f"    {exc}", file=sys.stderr)
                    continue
                cell.values.append(value)
                cell.rss_mib.append(rss)
                cell.busy.append(busy)
                print(
                    f"[round {round_no + 1}] {scenario.key:17s} {spec.name:18s} "
                    f"{value:12.1f} {scenario.unit:6s} peak RSS {rss:6.1f} MiB "
                    f"server CPU {busy:4.2f} cores",
                    flush=True,
                )

    info = report.machine(specs)
    text = report.markdown(results, chosen, specs, info, rounds, args.smoke)
    hello = {
        s.title: cell.median
        for s in chosen
        if s.key.startswith("h2") and "hello" in s.key
        for cell in [results[s.key].get(report.BASELINE)]
        if cell is not None and cell.median is not None
    }
    if hello:
        rates = measure_ceiling(args.smoke)
        if rates is not None:
            print(f"h2 ceiling: {rates}")
            tries = 1 if args.smoke else CEILING_TRIES
            text += "\n" + h2ceiling.footnote(rates, hello, tries) + "\n"
    output.write_text(text)
    report.dump_json(results, info, output.with_suffix(".json"))
    png = output.with_suffix(".png")
    drew = report.chart(results, chosen, specs, info, png)
    print()
    print(text)
    print(f"written: {output}" + (f", {png}" if drew else " (no chart: matplotlib missing)"))
    print(f"took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
