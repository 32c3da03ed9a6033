"""The Autobahn WebSocket cases outside sections 9, 12 and 13, driven by kosoku against
the echo app, with and without permessage-deflate (`interop/autobahn.py --quick`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from interop.autobahn import kosoku_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    kosoku_command() is None, reason="kosoku (PyPI, the Autobahn cases on Python 3) not installed"
)
def test_autobahn_quick_has_no_failures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "interop.autobahn", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert summary is not None, result.stdout + result.stderr
    assert int(summary[2]) == 0, result.stdout
    assert int(summary[1]) >= 400, result.stdout  # both runs of the ~247 quick cases
    assert result.returncode == 0
