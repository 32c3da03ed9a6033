"""The QUIC interop runner endpoint (interop/endpoint.py, interop/hq.py) and the local
interop matrix (`python -m interop.matrix --quick`)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interop import endpoint as interop_endpoint
from interop.matrix import CASES, Endpoint, make_certs, make_www
from interop.quicclient import Options, download

ROOT = Path(__file__).resolve().parents[2]
RUN_ENDPOINT = ROOT / "interop" / "quic-interop-runner" / "run_endpoint.sh"


def endpoint_env(**env: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LOGS": "", **env}


# --- the runner's contract: exit 127 for what we do not support ----------------------------


@pytest.mark.parametrize(
    "env",
    [{"ROLE": "client", "TESTCASE": "transfer"}, {"ROLE": "server", "TESTCASE": "no-such-case"}],
    ids=["client role", "unknown test case"],
)
def test_endpoint_exits_127_when_unsupported(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "interop.endpoint"],
        cwd=ROOT,
        env=endpoint_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 127, result.stderr
    assert "not supported" in result.stderr or "server only" in result.stderr


def test_ecn_is_refused_with_the_reason() -> None:
    """aioquic cannot do ECN: the endpoint says so rather than fail the runner's check."""
    assert interop_endpoint.main({"ROLE": "server", "TESTCASE": "ecn"}) == 127
    with pytest.raises(interop_endpoint.Unsupported, match="ECT"):
        interop_endpoint.build_config({"ROLE": "server", "TESTCASE": "ecn"})


def test_testcase_settings() -> None:
    """The cases that need the server to act differently get their setting, under the
    names the runner gives the server."""
    config, extras = interop_endpoint.build_config({"TESTCASE": "retry", "PORT": "4433"})
    assert config.quic_retry and not config.quic_0rtt
    assert config.quic_bind == ["[::]:4433"]
    assert set(config.quic_alpn_protocols) == {"h3", "hq-interop"}
    config, _ = interop_endpoint.build_config({"TESTCASE": "zerortt"})
    assert config.quic_0rtt and not config.quic_retry
    assert interop_endpoint.build_config({"TESTCASE": "v2"})[1] == {"v2": True}
    assert interop_endpoint.build_config({"TESTCASE": "chacha20"})[1] == {"chacha20": True}
    # The runner's aliases for the server side.
    for name in ("transfer", "handshake", "multiconnect"):
        config, extras = interop_endpoint.build_config({"TESTCASE": name})
        assert not config.quic_retry and not config.quic_0rtt and extras == {}


def test_run_endpoint_script_refuses_the_client_role() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    result = subprocess.run(
        [bash, str(RUN_ENDPOINT)],
        env=endpoint_env(ROLE="client", TESTCASE="handshake"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 127
    server = subprocess.run(
        [bash, str(RUN_ENDPOINT)],
        env=endpoint_env(ROLE="server", TESTCASE="ecn", PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server.returncode == 127, server.stderr
    assert "ECN" in server.stderr or "ECT" in server.stderr


# --- hq-interop: what must not be served --------------------------------------------------


def test_hq_interop_serves_files_and_nothing_else(tmp_path: Path) -> None:
    """Files under WWW come back whole over HTTP/0.9; a missing file, a path out of
    WWW, and a file reached through a symlink out of it get the stream reset."""
    case = CASES["handshake"]
    www = tmp_path / "www"
    names = make_www(www, [100_000, 0], 10, seed=1)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for you")
    (www / "link").symlink_to(secret)
    certs = make_certs(tmp_path / "certs")
    work = tmp_path / "work"
    work.mkdir()
    with Endpoint(case, www, certs, work) as running:

        async def fetch(path: str) -> list[str]:
            evidence = await download(
                "127.0.0.1",
                running.port,
                [path],
                tmp_path / "downloads",
                Options(alpn="hq-interop", timeout=20),
                str(certs / "ca.pem"),
            )
            return evidence.errors

        assert asyncio.run(fetch(f"/{names[0]}")) == []
        assert (tmp_path / "downloads" / names[0]).read_bytes() == (www / names[0]).read_bytes()
        assert asyncio.run(fetch(f"/{names[1]}")) == []  # an empty file is a FIN alone
        assert (tmp_path / "downloads" / names[1]).read_bytes() == b""
        for path in ("/missing", "/../secret", "/link"):
            errors = asyncio.run(fetch(path))
            assert errors and "reset" in errors[0], (path, errors)
    assert "hq-interop" in running.output.read_text()


# --- the matrix -------------------------------------------------------------------------


def test_quick_matrix_has_no_failures() -> None:
    """The CI set (handshake, transfer, http3, multiplexing, retry, resumption, chacha20,
    keyupdate, transferloss) with every client installed here: nothing fails, and every
    client that is installed passes what it can express."""
    result = subprocess.run(
        [sys.executable, "-m", "interop.matrix", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    summary = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert summary is not None, result.stdout[-3000:]
    assert int(summary[2]) == 0, result.stdout[-5000:]
    assert result.returncode == 0
    # aioquic: all 9 cases; gtlsclient: all 9; nghttp: handshake, transfer, http3,
    # multiplexing; curl: those and chacha20.
    expected = 9
    for tool, cases in (("gtlsclient", 9), ("nghttp", 4), ("curl", 5)):
        if shutil.which(tool):
            expected += cases
    assert int(summary[1]) >= expected, result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1] == ["retry"]}
    assert rows["retry"][0] == "pass"  # the aioquic column
