"""The QUIC endpoint itself: what happens to datagrams for connections it does not know."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Any

from tests import apps
from tests.conftest import require_tool


class Counting:
    """hello, counting the requests served."""

    def __init__(self) -> None:
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await apps.hello(scope, receive, send)
        self.served += 1


def test_stateless_reset_for_a_forgotten_connection(run_server: Any, tls_config: Any) -> None:
    """RFC 9000 section 10.3: a 1-RTT packet for a connection the server no longer has
    (as after a restart) gets a stateless reset, which the client (ngtcp2) recognises
    by the token it was given for that connection ID."""
    gtlsclient = require_tool("gtlsclient")
    app = Counting()
    running = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)
    port = running.quic_port
    endpoint = running.server.quic_endpoints[0]

    def handshake_done() -> bool:
        return bool(endpoint.connections) and not endpoint.handshaking

    def forget_after_handshake() -> None:
        deadline = time.monotonic() + 20
        while not running.call(handshake_done) and time.monotonic() < deadline:
            time.sleep(0.01)
        running.call(endpoint.connections.clear)

    # The client holds its request back for a second after the handshake; by then the
    # server has forgotten the connection.
    forgetter = threading.Thread(target=forget_after_handshake)
    forgetter.start()
    result = subprocess.run(
        [
            gtlsclient,
            "--exit-on-all-streams-close",
            "-n",
            "2",
            "--delay-stream=1s",
            "--timeout=5s",
            "127.0.0.1",
            str(port),
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    forgetter.join()
    output = result.stdout.decode("latin-1") + result.stderr.decode("latin-1")
    assert app.served == 0
    # ngtcp2 logs the reset it verified ("SR token=...") and stops the connection.
    assert " SR token=" in output, output[-2000:]
    assert "ERR_DRAINING" in output, output[-2000:]


def test_datagrams_for_no_connection_are_dropped(run_server: Any, tls_config: Any) -> None:
    """Junk, short-header packets too short to reset, and non-Initial long headers for
    unknown connections get no answer, and the endpoint goes on serving."""
    running = run_server(apps.hello, quic_bind=["127.0.0.1:0"], **tls_config)
    port = running.quic_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        for junk in (b"", b"\x00", b"\x40" + b"\x01" * 8, b"\xc0\x00\x00\x00\x01" + b"\x00" * 30):
            sock.sendto(junk, ("127.0.0.1", port))
        try:
            answer = sock.recv(2048)
        except TimeoutError:
            answer = b""
    assert answer == b""
    assert running.call(lambda: len(running.server.quic_endpoints[0].connections)) == 0
