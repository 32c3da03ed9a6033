"""`--proxy-protocol`: PROXY v1 and v2 headers from raw sockets, before cleartext HTTP and
before TLS, naming the client the app sees; malformed headers close the connection."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest

from multiplex.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2
from tests.conftest import RunningServer

Start = Callable[..., RunningServer]
REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


async def client_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = json.dumps({"client": scope["client"], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def v1(source: str, port: int, destination: str = "", dport: int = 443) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = destination or ("::1" if family == "TCP6" else "127.0.0.1")
    return f"PROXY {family} {source} {destination} {port} {dport}\r\n".encode()


def v2(
    source: str | None,
    port: int = 0,
    *,
    command: int = 1,
    tlvs: bytes = b"",
    signature: bytes = V2_SIGNATURE,
) -> bytes:
    if source is None:  # UNSPEC
        family, addresses = 0x00, b""
    elif ":" in source:
        family = 0x21  # AF_INET6, STREAM
        addresses = (
            ipaddress.IPv6Address(source).packed
            + ipaddress.IPv6Address("::1").packed
            + struct.pack("!HH", port, 443)
        )
    else:
        family = 0x11  # AF_INET, STREAM
        addresses = (
            ipaddress.IPv4Address(source).packed
            + ipaddress.IPv4Address("127.0.0.1").packed
            + struct.pack("!HH", port, 443)
        )
    body = addresses + tlvs
    return signature + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_without_response(sock: socket.socket) -> bool:
    """The server closed: EOF, or a reset (closing with our bytes unread sends RST)."""
    try:
        return read_all(sock) == b""
    except ConnectionResetError:
        return True


def exchange(server: RunningServer, *pieces: bytes, tls: ssl.SSLContext | None = None) -> Any:
    """Send the PROXY header (in `pieces`, separately), then a request, over TLS when
    given; the scope the app saw."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        for piece in pieces[:-1]:
            raw.sendall(piece)
            time.sleep(0.05)  # lets the pieces arrive as separate reads (not asserted)
        if tls is None:
            raw.sendall(pieces[-1] + REQUEST)  # header and request in one segment
            response = read_all(raw)
        else:
            raw.sendall(pieces[-1])
            with tls.wrap_socket(raw, server_hostname="localhost") as secure:
                secure.sendall(REQUEST)
                response = read_all(secure)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response
    return json.loads(body)


def tls_client(dev_certs: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    context.set_alpn_protocols(["http/1.1"])
    return context


@pytest.fixture
def cleartext(run_server: Start) -> RunningServer:
    return run_server(client_app, proxy_protocol=True, proxy_protocol_timeout=2.0)


# --- accepted headers --------------------------------------------------------------------------


def test_v1_tcp4_and_tcp6(cleartext: RunningServer) -> None:
    assert exchange(cleartext, v1("192.0.2.1", 56324))["client"] == ["192.0.2.1", 56324]
    assert exchange(cleartext, v1("2001:db8::5", 4000))["client"] == ["2001:db8::5", 4000]


def test_v1_unknown_keeps_the_peer(cleartext: RunningServer) -> None:
    client = exchange(cleartext, b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")["client"]
    assert client[0] == "127.0.0.1"


def test_v1_in_pieces(cleartext: RunningServer) -> None:
    header = v1("198.51.100.20", 1234)
    info = exchange(cleartext, header[:3], header[3:17], header[17:])
    assert info["client"] == ["198.51.100.20", 1234]


def test_v2_tcp4_tcp6_with_tlvs(cleartext: RunningServer) -> None:
    assert exchange(cleartext, v2("192.0.2.7", 5555))["client"] == ["192.0.2.7", 5555]
    # PP2_TYPE_AUTHORITY and PP2_TYPE_NOOP TLVs: skipped.
    tlvs = b"\x02" + struct.pack("!H", 7) + b"example" + b"\x04" + struct.pack("!H", 3) + b"\0\0\0"
    info = exchange(cleartext, v2("2001:db8::9", 6000, tlvs=tlvs))
    assert info["client"] == ["2001:db8::9", 6000]


def test_v2_local_and_unspec_keep_the_peer(cleartext: RunningServer) -> None:
    assert exchange(cleartext, v2("192.0.2.7", 5555, command=0))["client"][0] == "127.0.0.1"
    assert exchange(cleartext, v2(None))["client"][0] == "127.0.0.1"


def test_v2_in_pieces(cleartext: RunningServer) -> None:
    header = v2("192.0.2.8", 7777)
    info = exchange(cleartext, header[:4], header[4:14], header[14:20], header[20:])
    assert info["client"] == ["192.0.2.8", 7777]


def test_over_tls(run_server: Start, tls_config: dict[str, Any], dev_certs: Any) -> None:
    server = run_server(client_app, proxy_protocol=True, **tls_config)
    tls = tls_client(dev_certs)
    info = exchange(server, v1("192.0.2.30", 1111), tls=tls)
    assert info == {"client": ["192.0.2.30", 1111], "scheme": "https"}
    info = exchange(server, v2("2001:db8::30", 2222), tls=tls)
    assert info == {"client": ["2001:db8::30", 2222], "scheme": "https"}


def test_off_by_default(run_server: Start) -> None:
    """Without --proxy-protocol the header is not consumed: HTTP/1.1 sees a bad request."""
    server = run_server(client_app)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(v1("192.0.2.1", 1) + REQUEST)
        assert read_all(sock).startswith(b"HTTP/1.1 400")


# --- rejected headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(v2("192.0.2.1", 1, signature=b"\r\n\r\n\x00\r\nQUIX\n"), id="bad-signature"),
        pytest.param(v2("192.0.2.1", 1, command=3), id="v2-unknown-command"),
        pytest.param(b"PROXY " + b"A" * 120, id="v1-too-long"),
        pytest.param(b"PROXY TCP5 1.1.1.1 2.2.2.2 1 2\r\n", id="v1-unknown-protocol"),
        pytest.param(b"PROXY TCP4 1.1.1.1 ::1 1 2\r\n", id="v1-mixed-families"),
        pytest.param(b"PROXY TCP4 1.1.1.1 2.2.2.2 1 99999\r\n", id="v1-bad-port"),
        pytest.param(REQUEST, id="no-header"),
    ],
)
def test_malformed_header_closes(
    cleartext: RunningServer, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    with caplog.at_level(logging.WARNING, logger="multiplex"):
        with socket.create_connection(("127.0.0.1", cleartext.port), timeout=10) as sock:
            sock.sendall(header + REQUEST)
            assert closed_without_response(sock)
    assert any("PROXY protocol" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("header", [v1("192.0.2.1", 1)[:20], v2("192.0.2.1", 1)[:20]])
def test_truncated_header_closes(cleartext: RunningServer, header: bytes) -> None:
    with socket.create_connection(("127.0.0.1", cleartext.port), timeout=10) as sock:
        sock.sendall(header)
        sock.shutdown(socket.SHUT_WR)
        assert closed_without_response(sock)


def test_silent_connection_times_out(run_server: Start) -> None:
    server = run_server(client_app, proxy_protocol=True, proxy_protocol_timeout=0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert closed_without_response(sock)  # the server gave up on the header


# --- the parsers alone --------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 80 443\r\n") == ("192.0.2.1", 80)
    assert parse_v1(b"PROXY UNKNOWN\r\n") is None
    with pytest.raises(ProxyHeaderError):
        parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 080 443\r\n")  # leading zero
    with pytest.raises(ProxyHeaderError):
        parse_v1(b"PROXY TCP4 192.0.2.1 192.0.2.2 80\r\n")
    header = v2("192.0.2.1", 80)
    assert parse_v2(header[:16], header[16:]) == ("192.0.2.1", 80)
    with pytest.raises(ProxyHeaderError, match="too short"):
        parse_v2(header[:16], header[16:20])
    with pytest.raises(ProxyHeaderError, match="version"):
        parse_v2(header[:12] + b"\x11" + header[13:16], header[16:])
