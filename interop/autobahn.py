"""Run the Autobahn WebSocket test cases against multiplex, with `kosoku` as the fuzzing
client (it drives the Autobahn TestSuite's case files on Python 3).

    python -m interop.autobahn            # all 517 cases (a few minutes)
    python -m interop.autobahn --quick    # everything outside sections 9, 12 and 13

Starts multiplex with a WebSocket echo app on a free loopback port, once with
permessage-deflate and once without, runs kosoku against each, reads the per-case JSON
reports and prints the count per verdict. OK, NON-STRICT and INFORMATIONAL count as
passed; the last line is `N passed, M failed` and the exit status is 1 on any failure.
Without permessage-deflate, sections 12 and 13 (which test only that extension) are left
out. kosoku does not read an Autobahn spec file (`--spec` is "not implemented yet" in
0.1.0), so the selection is given with its --include/--exclude options.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

PASSED = frozenset(["OK", "NON-STRICT", "INFORMATIONAL"])
QUICK_EXCLUDES = ["9.*", "12.*", "13.*"]
DEFLATE_SECTIONS = ["12.*", "13.*"]


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo every WebSocket message back as it came (text or bytes)."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send(
            {"type": "websocket.send", **{k: message[k] for k in ("text", "bytes") if k in message}}
        )


class EchoServer:
    """multiplex serving `echo` on 127.0.0.1, on its own event loop in a thread."""

    def __init__(self, **config: Any) -> None:
        from multiplex.config import Config

        self.config = Config(
            bind=["127.0.0.1:0"],
            lifespan="off",
            access_log=False,
            ws_ping_interval=0,  # Autobahn checks frames exactly; keepalive is not its topic
            **config,
        )
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        from multiplex.server import Server

        server = Server(self.config, echo)
        await server.start()
        self.port = server.addresses[0][1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    def __enter__(self) -> EchoServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        self.loop.close()


def kosoku_command() -> str | None:
    beside = Path(sys.executable).with_name("kosoku")
    if beside.exists():
        return str(beside)
    return shutil.which("kosoku")


def run_cases(
    kosoku: str, port: int, excludes: list[str], parallelism: int, outdir: Path
) -> dict[str, dict[str, Any]]:
    """Run kosoku against ws://127.0.0.1:port/ and return {case: index entry}."""
    command = [kosoku, "-m", "fuzzingclient", f"ws://127.0.0.1:{port}/", "-p", str(parallelism)]
    command += ["-o", str(outdir)]
    for pattern in excludes:
        command += ["-x", pattern]
    # kosoku exits 1 when a case fails; the reports say which, so the status is not used.
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index = outdir / "index.json"
    if not index.exists():
        raise RuntimeError(f"kosoku wrote no report ({' '.join(command)})")
    cases: dict[str, dict[str, Any]] = {}
    for agent_cases in json.loads(index.read_text()).values():
        cases.update(agent_cases)
    return cases


def verdict(entry: dict[str, Any]) -> str:
    """The case's behavior, unless its closing behavior failed."""
    behavior = str(entry.get("behavior"))
    close = str(entry.get("behaviorClose", "OK"))
    if behavior in PASSED and close not in PASSED:
        return f"{behavior} (close {close})"
    return behavior


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out sections 9, 12, 13")
    parser.add_argument(
        "-p",
        "--parallelism",
        type=int,
        default=2,
        help="cases at once (more than the CPU count makes slow cases miss their deadline)",
    )
    parser.add_argument("-o", "--outdir", help="keep the reports here (default: a temp dir)")
    args = parser.parse_args(argv)

    kosoku = kosoku_command()
    if kosoku is None:
        print("kosoku is not installed (pip install kosoku)", file=sys.stderr)
        return 2
    base_excludes = QUICK_EXCLUDES if args.quick else []
    runs = [
        ("permessage-deflate on", True, base_excludes),
        ("permessage-deflate off", False, sorted(set(base_excludes) | set(DEFLATE_SECTIONS))),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.outdir) if args.outdir else Path(tmp)
        passed = failed = 0
        for label, deflate, excludes in runs:
            outdir = root / ("deflate" if deflate else "plain")
            with EchoServer(ws_per_message_deflate=deflate) as server:
                cases = run_cases(kosoku, server.port, excludes, args.parallelism, outdir)
            counts = collections.Counter(verdict(entry) for entry in cases.values())
            print(
                f"{label}: {len(cases)} cases: "
                + ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
            )
            for case, entry in sorted(cases.items(), key=lambda kv: _case_key(kv[0])):
                if verdict(entry) not in PASSED:
                    failed += 1
                    report = outdir / str(entry.get("reportfile"))
                    print(f"  FAILED {case}: {verdict(entry)} ({report})")
                else:
                    passed += 1
        print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split(".") if part.isdigit())


if __name__ == "__main__":
    sys.exit(main())
