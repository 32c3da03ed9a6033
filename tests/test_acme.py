"""Automatic HTTPS against a real ACME CA on loopback: Debian's Pebble (Let's Encrypt's
test CA) with pebble-challtestsrv as its DNS server, answering 127.0.0.1 for every
name. Pebble's validation authority connects to our server's own ports (its httpPort
and tlsPort are set to them), and curl verifies the result against Pebble's root.

Pebble 2.4.0 has no ACME Renewal Information (its directory lacks `renewalInfo`), so
the ARI tests put AriFront before it: a thin HTTPS server that adds `renewalInfo` to
Pebble's directory and answers it with windows the test chooses."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from multiplex.acme import AcmeManager, parse_client_hello, plan_renewal
from multiplex.certificates import Certificate, CertStore
from multiplex.config import Config
from tests.apps import hello
from tests.conftest import require_tool
from tests.protocols.h3client import client_configuration, h3_connect
from tests.test_certificates import CA
from tests.test_cli_serve import free_port, wait_for_accept

pytest.importorskip("acme", reason="the acme extra is not installed")

DOMAIN = "site.multiplex.example"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Pebble:
    """Pebble and its DNS server, on free loopback ports; `https_port` and `http_port`
    are where its validation authority connects (our server's binds)."""

    def __init__(self, directory: Path, validity: int | None = None) -> None:
        self.pebble_bin = require_tool("pebble")
        self.dns_bin = require_tool("pebble-challtestsrv")
        self.directory = directory
        self.ca = CA(directory / "pebble-tls")  # for Pebble's own HTTPS API
        self.ca.write(directory / "pebble.crt", directory / "pebble.key", "localhost")
        self.https_port = free_port()
        self.http_port = free_port()
        self.acme_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_udp_port()
        self.dns_management_port = free_port()
        self.validity = validity
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log = directory / "pebble.log"

    @property
    def directory_url(self) -> str:
        return f"https://localhost:{self.acme_port}/dir"

    def start(self) -> None:
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.directory / "pebble.crt"),
            "privateKey": str(self.directory / "pebble.key"),
            "httpPort": self.http_port,
            "tlsPort": self.https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        path = self.directory / "pebble-config.json"
        path.write_text(json.dumps({"pebble": config}))
        log = open(self.log, "ab")
        if not self.processes:
            dns = subprocess.Popen(
                [self.dns_bin, "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "",
                 "-https01", "", "-tlsalpn01", "",
                 "-management", f"127.0.0.1:{self.dns_management_port}", "-defaultIPv6", ""],
                stdout=log, stderr=log,
            )  # fmt: skip
            self.processes.append(dns)
            wait_for_accept(dns, self.dns_management_port)
        env = dict(os.environ)
        # No sleeping before validations, no random nonce rejections, no reused
        # authorizations (so renewals are validated again, as with real CAs).
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        pebble = subprocess.Popen(
            [self.pebble_bin, "-config", str(path), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=log, stderr=log, env=env, cwd=self.directory,
        )  # fmt: skip
        self.processes.append(pebble)
        wait_for_accept(pebble, self.acme_port)
        root = httpx.get(
            f"https://localhost:{self.management_port}/roots/0",
            verify=ssl.create_default_context(cafile=str(self.ca.path)),
        )
        root.raise_for_status()
        self.root = self.directory / "pebble-root.pem"
        self.root.write_text(root.text)

    def stop_ca(self) -> None:
        """Stop Pebble itself (the CA becomes unreachable); its DNS server stays."""
        pebble = self.processes.pop()
        pebble.terminate()
        pebble.wait(timeout=10)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def server_config(self, cache: Path, challenge: str = "tls-alpn-01") -> dict[str, Any]:
        config: dict[str, Any] = {
            "bind": [f"127.0.0.1:{self.https_port}"],
            "acme_domain": [DOMAIN],
            "acme_email": "ops@multiplex.example",
            "acme_directory": self.directory_url,
            "acme_ca_certs": str(self.ca.path),
            "acme_cache": str(cache),
            "acme_challenge": challenge,
            "acme_retry_delay": 1.0,
        }
        if challenge == "http-01":
            config["acme_http_bind"] = f"127.0.0.1:{self.http_port}"
        return config


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    started: list[Pebble] = []

    def start(validity: int | None = None) -> Pebble:
        ca = Pebble(tmp_path, validity)
        started.append(ca)
        ca.start()
        return ca

    yield start
    for ca in started:
        ca.close()


Answer = tuple[int, bytes, dict[str, str]]  # status, body, headers


class AriFront:
    """HTTPS on loopback before Pebble: GET /dir is Pebble's directory plus
    `renewalInfo` pointing here, GET /renewal-info/<certID> is answered by `answer`
    (each certID asked for is recorded in `asked`), and any other request is forwarded
    to Pebble unchanged. The directory's other URLs stay Pebble's own, so the ACME
    client signs for and talks to Pebble itself. Without `pebble`, /dir is a minimal
    directory of this front's own (enough for renewal information alone)."""

    def __init__(self, certfile: Path, keyfile: Path, ca: Path, pebble: Pebble | None) -> None:
        self.pebble = pebble
        self.verify = ssl.create_default_context(cafile=str(ca))
        self.asked: list[str] = []
        self.answer: Callable[[str], Answer] = lambda cert_id: (404, b"", {})
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                front.handle(self)

            do_POST = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def directory_url(self) -> str:
        return f"{self.url}/dir"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?")[0]
        if path == "/dir" and request.command == "GET":
            if self.pebble is not None:
                directory = httpx.get(self.pebble.directory_url, verify=self.verify).json()
            else:
                directory = {"newNonce": f"{self.url}/nonce", "newOrder": f"{self.url}/order"}
            directory["renewalInfo"] = f"{self.url}/renewal-info"
            answer: Answer = (
                200, json.dumps(directory).encode(), {"content-type": "application/json"}
            )  # fmt: skip
        elif path.startswith("/renewal-info/") and request.command == "GET":
            cert_id = path.removeprefix("/renewal-info/")
            self.asked.append(cert_id)
            answer = self.answer(cert_id)
        else:
            answer = self.forward(request)
        status, body, headers = answer
        request.send_response(status)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)

    def forward(self, request: BaseHTTPRequestHandler) -> Answer:
        if self.pebble is None:
            return 404, b"", {}
        length = int(request.headers.get("content-length") or 0)
        skip = {"host", "content-length", "connection", "transfer-encoding"}
        response = httpx.request(
            request.command,
            f"https://localhost:{self.pebble.acme_port}{request.path}",
            content=request.rfile.read(length),
            headers={k: v for k, v in request.headers.items() if k.lower() not in skip},
            verify=self.verify,
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() not in skip}
        headers.pop("content-encoding", None)  # httpx hands over the decoded body
        return response.status_code, response.content, headers

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def ari_front() -> Iterator[Callable[..., AriFront]]:
    started: list[AriFront] = []

    def start(certfile: Path, keyfile: Path, ca: Path, pebble: Pebble | None) -> AriFront:
        front = AriFront(certfile, keyfile, ca, pebble)
        started.append(front)
        return front

    yield start
    for front in started:
        front.close()


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def window(
    start: datetime.datetime, end: datetime.datetime, retry_after: int | None = None
) -> Answer:
    """A renewalInfo answer (RFC 9773 section 4.2)."""
    body = {
        "suggestedWindow": {
            "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    }
    headers = {"content-type": "application/json"}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    return 200, json.dumps(body).encode(), headers


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(DER serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    # The content octets of the DER INTEGER: minimal two's complement, big-endian.
    der = serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(der)}"


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"never logged within {timeout} s: {text}"
        time.sleep(0.1)


def logged_time(caplog: pytest.LogCaptureFixture, pattern: str) -> datetime.datetime:
    """The time in the first log line matching `pattern`, whose group 1 is an
    isoformat time."""
    match = re.search(pattern, caplog.text)
    assert match, f"no log line matches {pattern!r}:\n{caplog.text}"
    return datetime.datetime.fromisoformat(match.group(1))


def curl_h2(port: int, root: Path, timeout: float = 60, tries: int = 1000) -> tuple[str, float]:
    """Retry curl until it gets a verified HTTP/2 200; returns curl's "version status"
    and when it succeeded."""
    curl = require_tool("curl")
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline and tries > 0:
        tries -= 1
        result = subprocess.run(
            [curl, "-sS", "--http2", "--cacert", str(root), "--max-time", "20",
             "--resolve", f"{DOMAIN}:{port}:127.0.0.1",
             "-w", "%{http_version} %{response_code}", "-o", "/dev/null",
             f"https://{DOMAIN}:{port}/"],
            capture_output=True, text=True,
        )  # fmt: skip
        if result.returncode == 0:
            return result.stdout, time.monotonic()
        time.sleep(0.2)
    assert result is not None
    pytest.fail(f"curl never succeeded: {result.stderr}")


def served(port: int, root: Path | None) -> x509.Certificate:
    if root is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "http-01"])
def test_first_certificate(
    run_server: Any,
    pebble: Callable[..., Pebble],
    tmp_path: Path,
    challenge: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="multiplex")
    ca = pebble()
    cache = tmp_path / "acme"
    began = time.monotonic()
    server = run_server(hello, quic_bind=["127.0.0.1:0"], **ca.server_config(cache, challenge))
    # One try: the server holds a client that comes before the certificate until it
    # is there (within tls_handshake_timeout), rather than failing its handshake.
    outcome, done = curl_h2(ca.https_port, ca.root, tries=1)
    assert outcome == "2 200"
    print(f"{challenge}: first verified HTTPS request {done - began:.2f} s after start")
    assert "waiting for a certificate" in caplog.text
    # Pebble 2.4.0 offers no renewal information: two thirds of the lifetime.
    wait_for_log(caplog, "at two thirds of the lifetime (the CA offers no renewal information)")
    # Cached with private modes.
    files = list(cache.rglob("*"))
    assert any(f.suffix == ".key" for f in files)
    for f in files:
        if f.is_file():
            assert f.stat().st_mode & 0o777 == 0o600, f

    # HTTP/3 gets the same certificate, verified against Pebble's root.
    async def h3() -> int:
        configuration = client_configuration(str(ca.root))
        configuration.server_name = DOMAIN
        async with h3_connect(server.quic_port, configuration=configuration) as client:
            return (await client.request("/")).status

    assert asyncio.run(h3()) == 200

    if challenge == "http-01":
        # Everything else on the http listener is redirected to https.
        response = httpx.get(
            f"http://127.0.0.1:{ca.http_port}/some/path?q=1", headers={"host": DOMAIN}
        )
        assert response.status_code == 308
        assert response.headers["location"] == f"https://{DOMAIN}:{ca.https_port}/some/path?q=1"


def test_cached_certificate_is_served_without_the_ca(
    run_server: Any, pebble: Callable[..., Pebble], tmp_path: Path
) -> None:
    ca = pebble()
    cache = tmp_path / "acme"
    config = ca.server_config(cache)
    first = run_server(hello, **config)
    curl_h2(ca.https_port, ca.root)
    serial = served(ca.https_port, ca.root).serial_number
    first.shutdown()
    ca.stop_ca()  # no CA from here on
    run_server(hello, **config)
    outcome, _ = curl_h2(ca.https_port, ca.root, timeout=10)
    assert outcome == "2 200"
    assert served(ca.https_port, ca.root).serial_number == serial


def test_renewal_keeps_open_connections(
    run_server: Any, pebble: Callable[..., Pebble], tmp_path: Path
) -> None:
    ca = pebble(validity=15)  # renewal due after 10 s
    server = run_server(hello, **ca.server_config(tmp_path / "acme"))
    curl_h2(ca.https_port, ca.root)
    cert = served(ca.https_port, ca.root)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.total_seconds() <= 16, lifetime
    ctx = ssl.create_default_context(cafile=str(ca.root))
    sni = {"sni_hostname": DOMAIN}
    # httpx drops idle pooled connections after 5 s by default; keep this one.
    limits = httpx.Limits(keepalive_expiry=300)
    with httpx.Client(http2=True, verify=ctx, limits=limits) as h2:
        url = f"https://127.0.0.1:{ca.https_port}/"
        before = h2.get(url, extensions=sni)
        assert before.status_code == 200 and before.http_version == "HTTP/2"
        local = before.extensions["network_stream"].get_extra_info("client_addr")
        deadline = time.monotonic() + 40
        while served(ca.https_port, ca.root).serial_number == cert.serial_number:
            assert time.monotonic() < deadline, "not renewed within 40 s"
            time.sleep(0.5)
        after = h2.get(url, extensions=sni)
        assert after.status_code == 200 and after.http_version == "HTTP/2"
        assert after.extensions["network_stream"].get_extra_info("client_addr") == local
    del server


def test_unreachable_ca_at_renewal(
    run_server: Any,
    pebble: Callable[..., Pebble],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = pebble(validity=15)
    run_server(hello, **ca.server_config(tmp_path / "acme"))
    curl_h2(ca.https_port, ca.root)
    serial = served(ca.https_port, ca.root).serial_number
    ca.stop_ca()
    deadline = time.monotonic() + 40
    while caplog.text.count("ACME: could not get a certificate") < 2:
        assert time.monotonic() < deadline, "no failed renewal and retry logged within 40 s"
        time.sleep(0.2)
    assert "keeps serving" in caplog.text
    assert served(ca.https_port, None).serial_number == serial


def test_parse_client_hello_from_a_real_client() -> None:
    """The ClientHello parser against what Python's ssl (OpenSSL) sends."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["acme-tls/1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="Example.ORG")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    assert parse_client_hello(outgoing.read()) == ("Example.ORG", ["acme-tls/1"])
    assert parse_client_hello(b"GET / HTTP/1.1\r\n\r\n") == (None, [])
    assert parse_client_hello(b"\x16\x03\x01\x02\x00\x01\x00") == (None, [])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 2}, "--acme-domain needs --workers 1"),
        ({"acme_challenge": "http-01"}, "needs --acme-http-bind"),
        ({"acme_domain": ["bad_name.example"]}, "is not a DNS name"),
    ],
)
def test_acme_settings_are_checked(overrides: dict[str, Any], message: str) -> None:
    from multiplex.config import Config
    from multiplex.errors import ConfigError
    from multiplex.settings import validate

    config = Config(**{"acme_domain": [DOMAIN], **overrides})
    with pytest.raises(ConfigError, match=message):
        validate(config)


# --- ACME Renewal Information (RFC 9773), through AriFront ---------------------------


def test_ari_window_drives_renewal(
    run_server: Any,
    pebble: Callable[..., Pebble],
    ari_front: Callable[..., AriFront],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A certificate with Pebble's default five-year lifetime, renewed within seconds
    because the CA's window says so: first a window 300 days off with Retry-After 1,
    then, on the second look, a window a few seconds from now."""
    caplog.set_level(logging.INFO, logger="multiplex")
    ca = pebble()
    front = ari_front(ca.directory / "pebble.crt", ca.directory / "pebble.key", ca.ca.path, ca)
    far = (utcnow() + datetime.timedelta(days=300), utcnow() + datetime.timedelta(days=301))
    near: list[tuple[datetime.datetime, datetime.datetime]] = []

    def answer(asked: str) -> Answer:
        if asked != front.asked[0]:
            return window(*far, retry_after=3600)  # the replacement: nothing more to do
        if front.asked.count(asked) == 1:
            return window(*far, retry_after=1)
        now = utcnow()
        near.append((now + datetime.timedelta(seconds=2), now + datetime.timedelta(seconds=4)))
        return window(*near[-1], retry_after=3600)

    front.answer = answer
    config = ca.server_config(tmp_path / "acme")
    config.update(acme_directory=front.directory_url, acme_ari_min_interval=1.0)
    run_server(hello, **config)
    curl_h2(ca.https_port, ca.root)
    first = served(ca.https_port, ca.root)
    assert first.not_valid_after_utc - first.not_valid_before_utc > datetime.timedelta(days=365)

    deadline = time.monotonic() + 60
    while (second := served(ca.https_port, ca.root)).serial_number == first.serial_number:
        assert time.monotonic() < deadline, f"not renewed within 60 s:\n{caplog.text}"
        time.sleep(0.2)
    # The CA was asked about the served certificate by its RFC 9773 certID.
    assert front.asked[0] == cert_id(first)
    # First answer: renewal planned inside the far window.
    planned = logged_time(
        caplog, rf"renewal of {DOMAIN} at (\S+) per the CA's renewal information; asking"
    )
    assert far[0] <= planned <= far[1]
    # The second look (after the Retry-After) moved it into the near window.
    renewed = logged_time(
        caplog, rf"renewing the certificate for {DOMAIN}, due (\S+) per the CA's renewal"
    )
    assert near and near[0][0] <= renewed <= near[0][1]
    # Far before two thirds of a five-year lifetime: ARI drove it.
    assert renewed < first.not_valid_before_utc + datetime.timedelta(days=365)
    # The replacement's renewal information is asked for in turn.
    deadline = time.monotonic() + 30
    while cert_id(second) not in front.asked:
        assert time.monotonic() < deadline, "the new certificate's ARI was never asked for"
        time.sleep(0.1)


@pytest.mark.parametrize("status", [404, 500])
def test_ari_failure_falls_back_to_two_thirds(
    run_server: Any,
    pebble: Callable[..., Pebble],
    ari_front: Callable[..., AriFront],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.INFO, logger="multiplex")
    ca = pebble()
    front = ari_front(ca.directory / "pebble.crt", ca.directory / "pebble.key", ca.ca.path, ca)
    if status == 404:
        front.answer = lambda asked: (404, b"no such certificate", {"content-type": "text/plain"})
    else:
        problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "ARI is down"}
        front.answer = lambda asked: (
            500, json.dumps(problem).encode(), {"content-type": "application/problem+json"}
        )  # fmt: skip
    config = ca.server_config(tmp_path / "acme")
    config.update(acme_directory=front.directory_url, acme_ari_min_interval=1.0)
    run_server(hello, **config)
    curl_h2(ca.https_port, ca.root)
    cert = served(ca.https_port, ca.root)
    wait_for_log(caplog, "two thirds of the lifetime (asking the CA for renewal information failed")
    planned = logged_time(caplog, rf"renewal of {DOMAIN} at (\S+) at two thirds of the lifetime")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    expected = cert.not_valid_before_utc + lifetime * 2 / 3
    assert abs(planned - expected) <= datetime.timedelta(seconds=1)
    if status == 500:
        assert "ARI is down" in caplog.text
    # The failed request is asked again (after acme_ari_min_interval, doubling).
    deadline = time.monotonic() + 30
    while front.asked.count(cert_id(cert)) < 2:
        assert time.monotonic() < deadline, "the renewal information was not asked again"
        time.sleep(0.1)
    assert served(ca.https_port, ca.root).serial_number == cert.serial_number


def leaf_with_aki(ca: CA, path: Path, keyfile: Path) -> x509.Certificate:
    """A leaf with the Authority Key Identifier that an ARI certID is made from."""
    chain, key = ca.leaf(DOMAIN)
    keyfile.write_bytes(key)
    plain = x509.load_pem_x509_certificate(chain)
    builder = (
        x509.CertificateBuilder()
        .subject_name(plain.subject)
        .issuer_name(plain.issuer)
        .public_key(plain.public_key())
        .serial_number(plain.serial_number)
        .not_valid_before(plain.not_valid_before_utc)
        .not_valid_after(plain.not_valid_after_utc)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    cert = builder.sign(ca.key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_renewal_time_is_picked_inside_the_window(
    ari_front: Callable[..., AriFront], tmp_path: Path
) -> None:
    """The acme library's request and random pick, through AcmeManager, against
    windows the front chooses; then the plan from them."""
    ca = CA(tmp_path / "ca")
    ca.write(tmp_path / "front.crt", tmp_path / "front.key", "localhost")
    front = ari_front(tmp_path / "front.crt", tmp_path / "front.key", ca.path, None)
    config = Config(
        acme_domain=[DOMAIN],
        acme_directory=front.directory_url,
        acme_ca_certs=str(ca.path),
        acme_cache=str(tmp_path / "acme"),
    )
    manager = AcmeManager(config, CertStore(config))
    certfile, keyfile = tmp_path / "leaf.crt", tmp_path / "leaf.key"
    cert = leaf_with_aki(ca, certfile, keyfile)
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc

    start, end = utcnow() + datetime.timedelta(hours=1), utcnow() + datetime.timedelta(hours=2)
    front.answer = lambda asked: window(start, end, retry_after=120)
    picks = []
    for _ in range(20):
        before = utcnow()
        suggested, next_poll = manager._renewal_info(str(certfile))
        assert suggested is not None and start <= suggested <= end
        # Retry-After 120 s, within the default bounds (1 min, 1 day).
        assert before + datetime.timedelta(seconds=119) <= next_poll
        assert next_poll <= utcnow() + datetime.timedelta(seconds=121)
        picks.append(suggested)
        plan = plan_renewal(not_before, not_after, utcnow(), suggested, next_poll, config)
        assert plan.by_ari and plan.due == suggested
    assert len(set(picks)) > 1, "the same time every time: not random"
    assert front.asked[0] == cert_id(cert)

    # A window already past: renew now.
    front.answer = lambda asked: window(
        utcnow() - datetime.timedelta(days=2), utcnow() - datetime.timedelta(days=1)
    )
    suggested, next_poll = manager._renewal_info(str(certfile))
    now = datetime.datetime.now(datetime.timezone.utc)
    plan = plan_renewal(not_before, not_after, now, suggested, next_poll, config)
    assert plan.by_ari and plan.due <= now and plan.when(now) == "now"
    # No Retry-After: the library's six hours, within the bounds.
    assert plan.poll - now > datetime.timedelta(hours=5)

    # No renewalInfo in the directory: two thirds of the lifetime.
    plan = plan_renewal(not_before, not_after, now, None, now, config)
    assert not plan.by_ari and plan.due == not_before + (not_after - not_before) * 2 / 3
    # A suggestion at or past expiry is not believed.
    plan = plan_renewal(not_before, not_after, now, not_after, now, config)
    assert not plan.by_ari and plan.due < not_after
    # Retry-After is bounded by acme_ari_min_interval and acme_ari_max_interval.
    low = plan_renewal(not_before, not_after, now, None, now, config)
    assert low.poll == now + datetime.timedelta(seconds=config.acme_ari_min_interval)
    high = plan_renewal(not_before, not_after, now, None, now + datetime.timedelta(days=30), config)
    assert high.poll == now + datetime.timedelta(seconds=config.acme_ari_max_interval)

    # The renewal information failing surfaces as an exception; AcmeManager then keeps
    # the CA's earlier answer for this certificate, or without one falls back to two
    # thirds, and asks again after acme_ari_min_interval (doubling).
    front.answer = lambda asked: (500, b"", {})
    with pytest.raises(Exception, match="renewal_info"):
        manager._renewal_info(str(certfile))
    served_cert = Certificate(config, str(certfile), str(keyfile))
    front.answer = lambda asked: window(start, end, retry_after=120)
    ari = asyncio.run(manager._replan(served_cert, None))
    assert ari.by_ari and start <= ari.due <= end
    front.answer = lambda asked: (500, b"", {})
    kept = asyncio.run(manager._replan(served_cert, ari))
    assert kept.by_ari and kept.due == ari.due and "asking again failed" in kept.why
    fallback = asyncio.run(manager._replan(served_cert, None))
    assert (
        not fallback.by_ari
        and fallback.due
        == served_cert.not_before + (served_cert.not_after - served_cert.not_before) * 2 / 3
    )
    assert manager.ari_failures == 2
    assert fallback.poll - kept.poll >= datetime.timedelta(seconds=config.acme_ari_min_interval)
