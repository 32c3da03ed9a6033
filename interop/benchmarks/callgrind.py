"""Instructions per request of an in-memory benchmark module (h1cost, h3cost), counted
under callgrind: deterministic where wall-clock figures on a shared machine are not.

A run's total includes the interpreter's start and the module's warm-up, so the module
runs twice, with N and N/2 requests, and the difference is divided by N/2.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable


def total_instructions(module: str, args: list[str]) -> int:
    """Instructions of one whole `python -m module *args` under callgrind."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            module,
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(out.stderr[-2000:])
    return int(match.group(1))


def per_request(module: str, args_for: Callable[[int], list[str]], requests: int) -> float:
    """(run(requests) - run(requests / 2)) / (requests / 2), where `args_for(n)` gives
    the module's arguments for a run of n requests."""
    half = requests // 2
    low = total_instructions(module, args_for(half))
    high = total_instructions(module, args_for(requests))
    return (high - low) / (requests - half)
