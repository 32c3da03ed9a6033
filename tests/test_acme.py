"""Automatic HTTPS against a real ACME CA on loopback: Debian's Pebble (Let's Encrypt's
test CA) with pebble-challtestsrv as its DNS server, answering 127.0.0.1 for every
name. Pebble's validation authority connects to our server's own ports (its httpPort
and tlsPort are set to them), and curl verifies the result against Pebble's root."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from multiplex.acme import parse_client_hello
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
