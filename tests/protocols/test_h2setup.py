"""The one h2 set-up: what a live server announces is what the builder configures, and
the in-memory ceiling runs the builder's h2, not a copy of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h2.connection
import pytest

from interop.benchmarks import h2ceiling
from multiplex.config import Config
from multiplex.protocols.h2setup import h2_configuration, new_h2_connection
from tests.apps import hello
from tests.conftest import RunningServer
from tests.protocols.h2raw import RawH2, request_headers

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., RunningServer]
# Not the defaults, so that a value the server took from anywhere else would show.
LIMITS: dict[str, Any] = {
    "h2_max_concurrent_streams": 7,
    "h2_initial_window_size": 100_000,
    "h2_max_frame_size": 32_768,
    "h2_max_header_list_size": 9_000,
}


def _configuration_fields(conn: h2.connection.H2Connection) -> dict[str, Any]:
    return {
        name: getattr(conn.config, name)
        for name in (
            "client_side",
            "header_encoding",
            "validate_outbound_headers",
            "normalize_outbound_headers",
            "validate_inbound_headers",
            "normalize_inbound_headers",
        )
    }


def test_the_server_announces_the_builders_settings(run_server: Serve) -> None:
    running = run_server(hello, h2c=True, **LIMITS)
    built = new_h2_connection(Config(**LIMITS), h2.connection.H2Connection)
    with RawH2(running.port) as client:
        announced = client.handshake()
        client.send_headers(1, request_headers())
        assert client.read_response(1).status == 200
    assert announced == dict(built.local_settings)


def test_the_ceiling_runs_the_servers_h2_configuration() -> None:
    conn = h2ceiling._h2_connection(checks=False)
    server = new_h2_connection(Config(), h2.connection.H2Connection)
    assert type(conn) is h2.connection.H2Connection  # h2's own: no overhead of ours
    assert _configuration_fields(conn) == _configuration_fields(server)
    assert dict(conn.local_settings) == dict(server.local_settings)
    assert conn.max_inbound_frame_size == server.max_inbound_frame_size
    assert h2_configuration().validate_inbound_headers is False
    # And it still answers every request it is fed.
    assert h2ceiling.run_h2(200) > 0


def test_a_connection_remembers_at_most_h2_max_closed_streams_finished_streams(
    run_server: Serve,
) -> None:
    """h2 would remember how each of the last 65,536 streams ended, about 7.5 MiB on a
    long-lived connection; ours keeps `h2_max_closed_streams`, the newest."""
    from multiplex.protocols.http2 import H2Protocol

    running = run_server(hello, h2c=True, h2_max_closed_streams=16)
    with RawH2(running.port) as client:
        client.handshake()
        for stream_id in range(1, 81, 2):
            client.send_headers(stream_id, request_headers())
            assert client.read_response(stream_id).status == 200

        def remembered() -> list[list[int]]:
            state = running.server.state
            assert state is not None
            return [
                list(c.h2._closed_streams) for c in state.connections if isinstance(c, H2Protocol)
            ]

        (closed,) = running.call(remembered)
    assert 0 < len(closed) <= 16
    assert closed == sorted(closed) and closed[-1] > 60  # the newest are kept
