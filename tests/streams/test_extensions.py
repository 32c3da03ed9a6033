"""The asgiref HTTP extensions (trailers, early hints, pathsend, tls) over HTTP/1.1,
HTTP/2 and HTTP/3, each seen by a real client on a real socket: h11 on a raw socket,
the h2 library (tests/protocols/rawh2.py) and aioquic (tests/protocols/h3client.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h2.events
import h11
import httpx
import pytest

from tests.conftest import RunningServer, require_tool
from tests.protocols.h3client import h3_connect
from tests.protocols.rawh2 import H2Client

RunServer = Callable[..., RunningServer]
Scope = dict[str, Any]
Headers = list[tuple[bytes, bytes]]
PROTOCOLS = ["h1", "h2", "h3"]
LINKS = [b"</style.css>; rel=preload; as=style", b"</app.js>; rel=preload; as=script"]


# --- the app ------------------------------------------------------------------------------


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    start = {"type": "http.response.start", "status": 200, "headers": []}
    if path == "/extensions":
        extensions = scope["extensions"]
        body = {"names": sorted(extensions), "tls": extensions.get("tls")}
        await send(start)
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
    elif path == "/hints":
        await send({"type": "http.response.early_hint", "links": LINKS})
        await send(start)
        await send({"type": "http.response.body", "body": b"hinted"})
    elif path == "/late-hint":
        await send(start)
        await send({"type": "http.response.early_hint", "links": LINKS})
    elif path == "/bad-hint":
        await send({"type": "http.response.early_hint", "links": ["</x>; rel=preload"]})
    elif path == "/trailers":
        await send({**start, "trailers": True})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two"})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0")],
                "more_trailers": True,
            }
        )
        await send({"type": "http.response.trailers", "headers": [(b"Server-Timing", b"db;dur=5")]})
    elif path == "/bad-trailers":
        await send({**start, "trailers": True})
        await send({"type": "http.response.body", "body": b"some body", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": [(b"content-length", b"9")]})
    elif path == "/early-trailers":
        await send({**start, "trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"1")]})
    elif path == "/file":
        await send({**start, "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.pathsend", "path": query})
    elif path == "/zerocopy":
        # `?PATH:OFFSET:COUNT`, sent in two messages: the range, then the rest of the file
        # from the position the first left (offset and count omitted).
        name, offset, count = query.rsplit(":", 2)
        with open(name, "rb") as file:
            await send(start)
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file,
                    "offset": int(offset),
                    "count": int(count),
                    "more_body": True,
                }
            )
            await send({"type": "http.response.zerocopysend", "file": file})
    elif path == "/zerocopy-bad":
        await send(start)
        await send({"type": "http.response.zerocopysend", "file": io.BytesIO(b"no fd")})
    elif path == "/file-trailers":
        await send({**start, "trailers": True})
        await send({"type": "http.response.pathsend", "path": query})
        await send({"type": "http.response.trailers", "headers": [(b"x-sent", b"file")]})
    else:
        await send(start)
        await send({"type": "http.response.body", "body": b"hello"})


# --- clients ------------------------------------------------------------------------------


class Result:
    def __init__(self) -> None:
        self.informational: list[tuple[int, Headers]] = []
        self.status = 0
        self.headers: Headers = []
        self.body = b""
        self.trailers: Headers = []
        self.reset = False  # the response was cut off (RST_STREAM, RESET_STREAM, EOF)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


def h1_fetch(
    port: int,
    target: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    http10: bool = False,
    slow: bool = False,
) -> Result:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    conn = h11.Connection(h11.CLIENT)
    fields = [(b"host", b"localhost"), *headers]
    request = h11.Request(method="GET", target=target, headers=fields)
    head = conn.send(request) + conn.send(h11.EndOfMessage())
    if http10:
        # h11 only sends HTTP/1.1; it parses the answer all the same.
        lines = [f"GET {target} HTTP/1.0".encode()] + [n + b": " + v for n, v in fields]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
    sock.sendall(head)
    result = Result()
    body = bytearray()
    try:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                result.reset = True
                break
            if event is h11.NEED_DATA:
                data = sock.recv(16384 if slow else 1 << 20)
                if slow:
                    time.sleep(0.0005)
                conn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                result.informational.append((event.status_code, list(event.headers)))
            elif isinstance(event, h11.Response):
                result.status = event.status_code
                result.headers = list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                result.trailers = list(event.headers)
                break
            elif isinstance(event, h11.ConnectionClosed):
                result.reset = True
                break
    finally:
        sock.close()
    result.body = bytes(body)
    return result


def h2_fetch(port: int, target: str, window: int | None = None) -> Result:
    with H2Client(port, window=window) as client:
        stream_id = client.request(target)
        response = client.responses[stream_id]
        client.until(lambda: response.done)
        result = Result()
        for event in client.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h2.events.InformationalResponseReceived):
                fields = list(event.headers)
                result.informational.append((int(dict(fields)[b":status"]), fields[1:]))
            elif isinstance(event, h2.events.TrailersReceived):
                result.trailers = list(event.headers)
        result.reset = response.reset_code is not None
        if response.headers:
            result.status = response.status
            result.headers = [(n, v) for n, v in response.headers if not n.startswith(b":")]
        result.body = bytes(response.body)
        return result


def h3_fetch(port: int, ca_cert: str, target: str, slow: bool = False) -> Result:
    async def scenario() -> Result:
        async with h3_connect(port, ca_cert, slow_reader=slow) as h3:
            if slow:
                h3.hold_credit(True)
            started = h3.start(target)
            if slow:
                await asyncio.sleep(0.3)
                h3.hold_credit(False)
            response = await asyncio.wait_for(started.done, 30)
            result = Result()
            for fields in response.informational:
                result.informational.append((int(dict(fields)[b":status"]), fields[1:]))
            result.status = response.status
            result.headers = [(n, v) for n, v in response.headers if not n.startswith(b":")]
            result.body = response.body
            result.trailers = list(response.trailers)
            result.reset = response.reset_code is not None
            return result

    return asyncio.run(asyncio.wait_for(scenario(), 60))


@pytest.fixture
def servers(run_server: RunServer, tls_config: dict[str, Any]) -> tuple[int, int]:
    """A cleartext server (HTTP/1.1 and HTTP/2 with prior knowledge) and a QUIC one."""
    plain = run_server(app, h2c=True)
    quic = run_server(app, quic_bind=["127.0.0.1:0"], **tls_config)
    return plain.port, quic.quic_port


def fetch(
    protocol: str,
    servers: tuple[int, int],
    dev_certs: Any,
    target: str,
    h1_headers: Iterable[tuple[bytes, bytes]] = ((b"te", b"trailers"),),
    slow: bool = False,
) -> Result:
    if protocol == "h1":
        return h1_fetch(servers[0], target, h1_headers, slow=slow)
    if protocol == "h2":
        return h2_fetch(servers[0], target, window=16384 if slow else None)
    return h3_fetch(servers[1], str(dev_certs.ca_cert), target, slow=slow)


# --- scope --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_extensions_listed(protocol: str, servers: tuple[int, int], dev_certs: Any) -> None:
    result = fetch(protocol, servers, dev_certs, "/extensions")
    names = json.loads(result.body)["names"]
    for name in ("http.response.early_hint", "http.response.pathsend", "http.response.trailers"):
        assert name in names
    # sendfile(2) on cleartext HTTP/1.1 only (these servers run on asyncio's loop).
    assert ("http.response.zerocopysend" in names) == (protocol == "h1")
    assert ("tls" in names) == (protocol == "h3")  # h1/h2 here are cleartext


def test_h1_lists_only_what_reaches_the_client(servers: tuple[int, int]) -> None:
    # No `TE: trailers`: the client did not say it keeps trailers.
    names = json.loads(h1_fetch(servers[0], "/extensions").body)["names"]
    assert "http.response.trailers" not in names
    assert "http.response.early_hint" in names
    # HTTP/1.0: neither trailers (no chunked coding) nor 1xx responses.
    names = json.loads(h1_fetch(servers[0], "/extensions", http10=True).body)["names"]
    assert "http.response.trailers" not in names
    assert "http.response.early_hint" not in names
    assert "http.response.pathsend" in names


def test_tls_extension_over_http3(servers: tuple[int, int], dev_certs: Any) -> None:
    tls = json.loads(fetch("h3", servers, dev_certs, "/extensions").body)["tls"]
    assert tls["tls_version"] == 0x0304
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["client_cert_chain"] == [] and tls["client_cert_name"] is None


# --- early hints --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_early_hints(protocol: str, servers: tuple[int, int], dev_certs: Any) -> None:
    result = fetch(protocol, servers, dev_certs, "/hints")
    assert result.informational == [(103, [(b"link", link) for link in LINKS])]
    assert (result.status, result.body) == (200, b"hinted")


def test_early_hints_not_sent_to_http10(servers: tuple[int, int]) -> None:
    result = h1_fetch(servers[0], "/hints", http10=True)
    assert result.informational == []
    assert (result.status, result.body) == (200, b"hinted")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_early_hint_errors(
    protocol: str, servers: tuple[int, int], dev_certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="multiplex"):
        late = fetch(protocol, servers, dev_certs, "/late-hint")
        bad = fetch(protocol, servers, dev_certs, "/bad-hint")
    assert late.status == 500 and late.informational == []
    assert bad.status == 500 and bad.informational == []
    assert "early_hint" in caplog.text and "out of order" in caplog.text
    assert fetch(protocol, servers, dev_certs, "/").body == b"hello"


# --- trailers -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trailers(protocol: str, servers: tuple[int, int], dev_certs: Any) -> None:
    result = fetch(protocol, servers, dev_certs, "/trailers")
    assert (result.status, result.body) == (200, b"part one, part two")
    assert result.trailers == [(b"grpc-status", b"0"), (b"server-timing", b"db;dur=5")]
    assert result.header(b"content-length") is None
    if protocol == "h1":
        assert result.header(b"transfer-encoding") == b"chunked"


def test_h1_trailers_dropped_without_te(servers: tuple[int, int]) -> None:
    result = h1_fetch(servers[0], "/trailers")
    assert (result.status, result.body, result.trailers) == (200, b"part one, part two", [])
    result = h1_fetch(servers[0], "/trailers", http10=True)
    assert (result.status, result.body, result.trailers) == (200, b"part one, part two", [])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invalid_trailers(
    protocol: str, servers: tuple[int, int], dev_certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="multiplex"):
        bad = fetch(protocol, servers, dev_certs, "/bad-trailers")
        early = fetch(protocol, servers, dev_certs, "/early-trailers")
    # The body had started: the stream is cut off (RST_STREAM / RESET_STREAM / close).
    assert bad.reset and bad.trailers == []
    assert "content-length may not be a trailer" in caplog.text
    # Trailers before the body: nothing went out yet, so a clean 500.
    assert early.status == 500
    assert "out of order" in caplog.text
    assert fetch(protocol, servers, dev_certs, "/").body == b"hello"


# --- pathsend -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pathsend(protocol: str, servers: tuple[int, int], dev_certs: Any, tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_bytes(b"a small file\n")
    result = fetch(protocol, servers, dev_certs, f"/file?{small}")
    assert (result.status, result.body) == (200, b"a small file\n")
    assert result.header(b"content-length") == b"13"
    assert result.header(b"content-type") == b"application/octet-stream"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = fetch(protocol, servers, dev_certs, f"/file?{empty}")
    assert (result.status, result.body, result.header(b"content-length")) == (200, b"", b"0")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pathsend_large_file_slow_reader(
    protocol: str, servers: tuple[int, int], dev_certs: Any, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(5 * 1024 * 1024 + 17)
    big.write_bytes(data)
    result = fetch(protocol, servers, dev_certs, f"/file?{big}", slow=True)
    assert result.status == 200 and not result.reset
    assert result.header(b"content-length") == str(len(data)).encode()
    assert result.body == data


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pathsend_with_trailers(
    protocol: str, servers: tuple[int, int], dev_certs: Any, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 200_000)
    result = fetch(protocol, servers, dev_certs, f"/file-trailers?{path}")
    assert (result.status, result.body) == (200, b"x" * 200_000)
    assert result.trailers == [(b"x-sent", b"file")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pathsend_errors(
    protocol: str,
    servers: tuple[int, int],
    dev_certs: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="multiplex"):
        missing = fetch(protocol, servers, dev_certs, f"/file?{tmp_path / 'missing'}")
        relative = fetch(protocol, servers, dev_certs, "/file?relative/path")
        directory = fetch(protocol, servers, dev_certs, f"/file?{tmp_path}")
    assert missing.status == 500 and missing.body == b"Internal Server Error"
    assert relative.status == 500 and directory.status == 500
    assert "FileNotFoundError" in caplog.text
    assert "absolute" in caplog.text
    assert fetch(protocol, servers, dev_certs, "/").body == b"hello"


@pytest.mark.parametrize("http2", [False, True])
def test_tls_extension_over_tcp(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any, http2: bool
) -> None:
    running = run_server(app, **tls_config)
    with httpx.Client(verify=str(dev_certs.ca_cert), http2=http2, http1=not http2) as client:
        response = client.get(f"{running.url}/extensions")
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    body = response.json()
    assert "http.response.pathsend" in body["names"]
    assert "http.response.early_hint" in body["names"]
    tls = body["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["cipher_suite"] is not None


@pytest.mark.parametrize("protocol", ["h1", "h2"])
def test_pathsend_head(protocol: str, servers: tuple[int, int], tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"y" * 1000)
    if protocol == "h1":
        sock = socket.create_connection(("127.0.0.1", servers[0]), timeout=10)
        with sock:
            sock.sendall(f"HEAD /file?{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.3)
            head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"content-length: 1000\r\n" in head
        assert head.endswith(b"\r\n\r\n")
    else:
        with H2Client(servers[0]) as client:
            response = client.get(f"/file?{path}", method="HEAD")
        assert response.status == 200 and bytes(response.body) == b""
        assert dict(response.headers)[b"content-length"] == b"1000"


def test_zerocopysend_on_cleartext_http1(servers: tuple[int, int], tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 5)
    path.write_bytes(data)
    result = h1_fetch(servers[0], f"/zerocopy?{path}:100:2000000")
    assert result.status == 200 and not result.reset
    assert result.header(b"transfer-encoding") == b"chunked"  # more_body: length unknown
    # 2,000,000 bytes from offset 100, then the rest from where sendfile left the file.
    assert result.body == data[100:2_000_100] + data[2_000_100:]


def test_zerocopysend_without_a_file_descriptor_fails_the_response(
    servers: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="multiplex"):
        result = h1_fetch(servers[0], "/zerocopy-bad")
    assert result.status == 500
    assert "zerocopysend" in caplog.text


def test_early_hints_seen_by_curl_over_http2(servers: tuple[int, int]) -> None:
    require_tool("curl")
    result = subprocess.run(
        ["curl", "-sS", "-v", "--http2-prior-knowledge", f"http://127.0.0.1:{servers[0]}/hints"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "< HTTP/2 103" in result.stderr
    for link in LINKS:
        assert f"< link: {link.decode()}" in result.stderr
    assert "< HTTP/2 200" in result.stderr
    assert result.stdout == "hinted"


def test_httpx_over_http2_gets_the_final_response_after_early_hints(
    servers: tuple[int, int],
) -> None:
    with httpx.Client(http1=False, http2=True) as client:
        response = client.get(f"http://127.0.0.1:{servers[0]}/hints")
    assert (response.http_version, response.status_code, response.text) == (
        "HTTP/2",
        200,
        "hinted",
    )
