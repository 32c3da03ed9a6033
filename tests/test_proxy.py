"""`--proxy-headers`: client address and scheme from Forwarded / X-Forwarded-* sent by
trusted peers only, over HTTP/1.1, HTTP/2, HTTP/3 and WebSocket."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from multiplex.config import Config
from multiplex.proxy import TrustedPeers, apply_proxy_headers, parse_forwarded
from multiplex.settings import ConfigError, validate
from tests.conftest import RunningServer
from tests.test_frameworks import fetch, serve

Start = Callable[..., RunningServer]


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the server put in the scope: client, scheme, headers."""
    if scope["type"] == "lifespan":
        return
    info = json.dumps(
        {
            "client": scope["client"],
            "scheme": scope["scheme"],
            "headers": sorted(k.decode() for k, _ in scope["headers"]),
        }
    )
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": info})
        await send({"type": "websocket.close"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": info.encode()})


def seen(server: RunningServer, headers: dict[str, str]) -> dict[str, Any]:
    reply = httpx.get(f"{server.url}/", headers=headers, timeout=10)
    assert reply.status_code == 200
    result: dict[str, Any] = reply.json()
    return result


# --- over the wire ------------------------------------------------------------------------


def test_x_forwarded_from_trusted_peer(run_server: Start) -> None:
    server = run_server(echo_app, proxy_headers=True)
    info = seen(server, {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"})
    assert info["client"] == ["203.0.113.7", 0]
    assert info["scheme"] == "https"


def test_access_log_names_the_forwarded_client(
    run_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    access = logging.getLogger("multiplex.access")
    caplog.set_level(logging.INFO, logger="multiplex.access")
    access.addHandler(caplog.handler)  # whatever propagation another test left behind
    try:
        server = run_server(echo_app, proxy_headers=True, access_log=True)
        seen(server, {"x-forwarded-for": "203.0.113.7"})
        deadline = time.monotonic() + 10
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)  # the line is written once the app task has finished
    finally:
        access.removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if r.name == "multiplex.access"]
    assert lines and lines[0].startswith("203.0.113.7:0 "), lines


def test_forwarded_wins_over_x_forwarded(run_server: Start) -> None:
    server = run_server(echo_app, proxy_headers=True)
    info = seen(
        server,
        {
            "forwarded": 'for="[2001:db8::17]:4711";proto=https',
            "x-forwarded-for": "203.0.113.7",
            "x-forwarded-proto": "http",
        },
    )
    assert info["client"] == ["2001:db8::17", 4711]
    assert info["scheme"] == "https"


def test_untrusted_peer_changes_nothing(run_server: Start) -> None:
    # 127.0.0.1 (the test's own address) is not in the list: the headers are just headers.
    server = run_server(echo_app, proxy_headers=True, forwarded_allow_ips=["10.0.0.0/8"])
    info = seen(server, {"forwarded": "for=203.0.113.7;proto=https", "x-forwarded-for": "1.2.3.4"})
    assert info["client"][0] == "127.0.0.1"
    assert info["client"][1] != 0
    assert info["scheme"] == "http"
    assert {"forwarded", "x-forwarded-for"} <= set(info["headers"])


def test_off_by_default(run_server: Start) -> None:
    server = run_server(echo_app)
    info = seen(server, {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"})
    assert info["client"][0] == "127.0.0.1"
    assert info["scheme"] == "http"


def test_cidr_and_star_trust(run_server: Start) -> None:
    for allowed in (["127.0.0.0/8"], ["*"]):
        server = run_server(echo_app, proxy_headers=True, forwarded_allow_ips=allowed)
        info = seen(server, {"x-forwarded-for": "198.51.100.1"})
        assert info["client"] == ["198.51.100.1", 0], allowed


def test_websocket_scheme_becomes_wss(run_server: Start) -> None:
    server = run_server(echo_app, proxy_headers=True)
    with ws_connect(
        f"ws://127.0.0.1:{server.port}/",
        additional_headers={"x-forwarded-proto": "https", "x-forwarded-for": "192.0.2.9"},
    ) as ws:
        info = json.loads(ws.recv(timeout=10))
    assert info["scheme"] == "wss"
    assert info["client"] == ["192.0.2.9", 0]


@pytest.mark.parametrize("protocol", ["h1", "h2", "h3"])
def test_every_protocol(
    run_server: Start, tls_config: dict[str, Any], dev_certs: Any, protocol: str
) -> None:
    """Applied where the scope is built, so h1, h2 and h3 all get it (here https -> http:
    the proxy ended TLS and spoke to us over another one)."""
    server = serve(run_server, tls_config, echo_app, proxy_headers=True)
    reply = fetch(
        server,
        dev_certs,
        protocol,
        "/",
        headers={"x-forwarded-for": "192.0.2.44", "x-forwarded-proto": "http"},
    )
    info = reply.json()
    assert info["client"] == ["192.0.2.44", 0]
    assert info["scheme"] == "http"


def test_config_rejects_bad_entries() -> None:
    with pytest.raises(ConfigError, match="forwarded-allow-ips"):
        validate(Config(forwarded_allow_ips=["10.0.0.0/8", "not-an-ip"]))
    validate(Config(forwarded_allow_ips=["*", "10.0.0.0/8", "::1", "192.168.1.1"]))


# --- the choice of client, on scopes directly ----------------------------------------------


def scope_after(
    headers: list[tuple[bytes, bytes]],
    peer: tuple[str, int] | None = ("127.0.0.1", 5000),
    allow: list[str] | None = None,
    kind: str = "http",
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": kind,
        "client": peer,
        "scheme": "ws" if kind == "websocket" else "http",
        "headers": headers,
    }
    config = Config(proxy_headers=True, forwarded_allow_ips=allow or ["127.0.0.1", "10.0.0.0/8"])
    apply_proxy_headers(scope, config)
    return scope


def test_rightmost_untrusted_is_the_client() -> None:
    # The client claims 6.6.6.6 itself; 198.51.100.5 is who connected to our first proxy
    # (10.0.0.2), which handed on to 10.0.0.1, which connected to us.
    scope = scope_after([(b"x-forwarded-for", b"6.6.6.6, 198.51.100.5, 10.0.0.2")])
    assert scope["client"] == ("198.51.100.5", 0)
    scope = scope_after(
        [(b"forwarded", b"for=6.6.6.6, for=198.51.100.5;proto=https, for=10.0.0.2;proto=http")]
    )
    assert scope["client"] == ("198.51.100.5", 0)
    assert scope["scheme"] == "https"  # the proto of the hop the client came in by


def test_all_trusted_takes_the_leftmost() -> None:
    scope = scope_after([(b"x-forwarded-for", b"10.1.1.1, 10.0.0.2")])
    assert scope["client"] == ("10.1.1.1", 0)


def test_repeated_header_lines_are_one_list() -> None:
    scope = scope_after([(b"x-forwarded-for", b"198.51.100.5"), (b"x-forwarded-for", b"10.0.0.2")])
    assert scope["client"] == ("198.51.100.5", 0)


def test_forwarded_unknown_and_obfuscated() -> None:
    assert scope_after([(b"forwarded", b"for=unknown")])["client"] is None
    assert scope_after([(b"forwarded", b'for="_hidden:_port"')])["client"] == ("_hidden", 0)


def test_proto_only() -> None:
    scope = scope_after([(b"x-forwarded-proto", b"https")])
    assert scope["client"] == ("127.0.0.1", 5000)
    assert scope["scheme"] == "https"
    scope = scope_after([(b"forwarded", b"proto=https")], kind="websocket")
    assert scope["scheme"] == "wss"
    scope = scope_after([(b"x-forwarded-proto", b"gopher")])
    assert scope["scheme"] == "http"


def test_unix_socket_peer_is_trusted() -> None:
    scope = scope_after([(b"x-forwarded-for", b"198.51.100.5")], peer=None)
    assert scope["client"] == ("198.51.100.5", 0)


def test_untrusted_scope_untouched() -> None:
    headers = [(b"x-forwarded-for", b"198.51.100.5"), (b"x-forwarded-proto", b"https")]
    scope = scope_after(headers, peer=("192.0.2.1", 4000))
    assert scope["client"] == ("192.0.2.1", 4000)
    assert scope["scheme"] == "http"


def test_parse_forwarded_quoting() -> None:
    elements = parse_forwarded('for="[2001:db8::1]:80";proto=https;by="a,b", For=192.0.2.1')
    assert elements == [
        {"for": "[2001:db8::1]:80", "proto": "https", "by": "a,b"},
        {"for": "192.0.2.1"},
    ]


def test_trusted_peers() -> None:
    peers = TrustedPeers(("127.0.0.1", "10.0.0.0/8", "::1"))
    assert "10.200.3.4" in peers
    assert "::1" in peers
    assert "11.0.0.1" not in peers
    assert "not-an-ip" not in peers
    assert None not in peers
