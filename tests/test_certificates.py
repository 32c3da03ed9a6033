"""Several certificates chosen by SNI, reloads (SIGHUP, files changing on disk), and the
start-up checks of key/certificate pairs: real handshakes over loopback with Python's
ssl client, curl and an HTTP/3 client, certificates from a CA made here."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from multiplex import devcerts
from multiplex.config import Config
from multiplex.errors import ConfigError
from multiplex.tls import create_ssl_context
from tests.apps import hello
from tests.conftest import require_tool
from tests.protocols.h3client import client_configuration, h3_connect
from tests.test_cli_serve import free_port, start


class CA:
    """A CA made for one test, issuing leaves for any names."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = devcerts._make_ca(devcerts._now())
        self.path = directory / "ca.crt"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, *names: str, serial: int | None = None) -> tuple[bytes, bytes]:
        """(chain PEM: leaf then CA, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(
            serialization.Encoding.PEM
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return chain, key_pem

    def write(self, cert_path: Path, key_path: Path, *names: str, serial: int | None = None) -> int:
        chain, key = self.leaf(*names, serial=serial)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        # Replace by rename, as certbot does: a reader never sees half a file.
        for path, data in ((key_path, key), (cert_path, chain)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return x509.load_pem_x509_certificate(chain).serial_number


def served(port: int, server_name: str | None, ca: Path | None) -> x509.Certificate:
    """The certificate the server presents to a client sending `server_name` (verified
    against `ca` when given)."""
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def sites(tmp_path: Path) -> dict[str, Any]:
    """A default certificate and a sni_certs_dir with both layouts: a.localhost as a.crt/a.key,
    b.localhost (and *.b.localhost) as b/fullchain.pem + b/privkey.pem."""
    ca = CA(tmp_path)
    ca.write(tmp_path / "default.crt", tmp_path / "default.key", "default.localhost")
    certs = tmp_path / "certs"
    ca.write(certs / "a.crt", certs / "a.key", "a.localhost")
    ca.write(
        certs / "b" / "fullchain.pem", certs / "b" / "privkey.pem", "b.localhost", "*.b.localhost"
    )
    return {
        "ca": ca,
        "dir": certs,
        "config": {
            "certfile": str(tmp_path / "default.crt"),
            "keyfile": str(tmp_path / "default.key"),
            "sni_certs_dir": str(certs),
        },
    }


def test_each_name_gets_its_certificate(run_server: Any, sites: dict[str, Any]) -> None:
    server = run_server(hello, **sites["config"])
    ca = sites["ca"].path
    assert common_name(served(server.port, "a.localhost", ca)) == "a.localhost"
    assert common_name(served(server.port, "b.localhost", ca)) == "b.localhost"
    assert common_name(served(server.port, "www.b.localhost", ca)) == "b.localhost"
    assert common_name(served(server.port, "A.LOCALHOST", ca)) == "a.localhost"
    # Unknown names and clients that send no SNI get the default.
    assert common_name(served(server.port, "other.localhost", None)) == "default.localhost"
    assert common_name(served(server.port, None, None)) == "default.localhost"


def test_curl_h2_per_name(run_server: Any, sites: dict[str, Any]) -> None:
    curl = require_tool("curl")
    server = run_server(hello, **sites["config"])
    for name in ("a.localhost", "b.localhost", "default.localhost"):
        result = subprocess.run(
            [curl, "-sS", "--http2", "--cacert", str(sites["ca"].path),
             "--resolve", f"{name}:{server.port}:127.0.0.1",
             "-w", "%{http_version} %{response_code}", "-o", "/dev/null",
             f"https://{name}:{server.port}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.stdout == "2 200", (name, result.stderr)


def test_sni_certs_dir_alone_serves_its_first_certificate_by_default(
    run_server: Any, sites: dict[str, Any]
) -> None:
    server = run_server(hello, sni_certs_dir=sites["config"]["sni_certs_dir"])
    assert common_name(served(server.port, "b.localhost", sites["ca"].path)) == "b.localhost"
    assert common_name(served(server.port, "nobody.localhost", None)) == "a.localhost"


def test_quic_chooses_by_sni(run_server: Any, sites: dict[str, Any]) -> None:
    server = run_server(hello, quic_bind=["127.0.0.1:0"], **sites["config"])

    async def leaf_for(name: str) -> str:
        configuration = client_configuration(str(sites["ca"].path))
        configuration.server_name = name
        async with h3_connect(server.quic_port, configuration=configuration) as client:
            response = await client.request("/")
            assert response.status == 200
            cert = client.quic.tls._peer_certificate
            assert cert is not None
            return common_name(cert)

    assert asyncio.run(leaf_for("a.localhost")) == "a.localhost"
    assert asyncio.run(leaf_for("b.localhost")) == "b.localhost"
    assert asyncio.run(leaf_for("default.localhost")) == "default.localhost"


def wait_for_serial(port: int, name: str, ca: Path, serial: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served(port, name, ca).serial_number == serial:
            return
        time.sleep(0.1)
    pytest.fail(f"{name} still not served with the new certificate after {timeout} s")


def test_changed_files_are_picked_up_by_new_handshakes(
    run_server: Any, sites: dict[str, Any]
) -> None:
    server = run_server(hello, cert_reload_interval=0.2, **sites["config"])
    ca: CA = sites["ca"]
    sni = {"sni_hostname": "a.localhost"}
    before = served(server.port, "a.localhost", ca.path).serial_number
    with httpx.Client(http2=True, verify=ssl.create_default_context(cafile=str(ca.path))) as h2:
        # An HTTP/2 connection opened before the reload...
        first = h2.get(server.url, extensions=sni)
        assert first.status_code == 200 and first.http_version == "HTTP/2"
        local = first.extensions["network_stream"].get_extra_info("client_addr")
        serial = ca.write(sites["dir"] / "a.crt", sites["dir"] / "a.key", "a.localhost")
        assert serial != before
        wait_for_serial(server.port, "a.localhost", ca.path, serial)
        # ...keeps working, on the same connection, after it.
        again = h2.get(server.url, extensions=sni)
        assert again.status_code == 200 and again.http_version == "HTTP/2"
        assert again.extensions["network_stream"].get_extra_info("client_addr") == local


def test_a_broken_file_keeps_the_old_certificate(
    run_server: Any, sites: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = run_server(hello, cert_reload_interval=0, **sites["config"])
    ca: CA = sites["ca"]
    before = served(server.port, "a.localhost", ca.path).serial_number
    other = CA(sites["dir"].parent / "other")
    (sites["dir"] / "a.key").write_bytes(other.leaf("a.localhost")[1])  # key of another cert
    assert server.call(server.server.reload_certificates) is False
    assert "does not match" in caplog.text
    assert served(server.port, "a.localhost", ca.path).serial_number == before


def test_sighup_reloads_a_single_process_server(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    ca.write(cert, key, "site.localhost")
    port = free_port()
    process = start(
        "tests.apps:hello", "--bind", f"127.0.0.1:{port}", "--certfile", str(cert),
        "--keyfile", str(key), "--cert-reload-interval", "0", "--no-access-log",
    )  # fmt: skip
    try:
        from tests.test_cli_serve import wait_for_accept

        wait_for_accept(process, port)
        serial = ca.write(cert, key, "site.localhost")
        assert served(port, "site.localhost", ca.path).serial_number != serial  # no polling
        process.send_signal(signal.SIGHUP)
        wait_for_serial(port, "site.localhost", ca.path, serial)
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert "Certificates reloaded" in stderr


# --- start-up checks -------------------------------------------------------------------


def test_key_that_does_not_match(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    ca.write(tmp_path / "a.crt", tmp_path / "a.key", "a.localhost")
    ca.write(tmp_path / "b.crt", tmp_path / "b.key", "b.localhost")
    config = Config(certfile=str(tmp_path / "a.crt"), keyfile=str(tmp_path / "b.key"))
    with pytest.raises(ConfigError, match="does not match the certificate"):
        create_ssl_context(config)


def test_chain_in_the_wrong_order(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    chain, key = ca.leaf("a.localhost")
    certs = x509.load_pem_x509_certificates(chain)
    # The CA first, then the leaf: the key matches neither order check but the chain.
    (tmp_path / "a.key").write_bytes(key)
    swapped = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[::-1])
    (tmp_path / "a.crt").write_bytes(swapped)
    config = Config(certfile=str(tmp_path / "a.crt"), keyfile=str(tmp_path / "a.key"))
    with pytest.raises(ConfigError, match="does not match"):
        create_ssl_context(config)  # the first certificate must be the key's
    # Leaf first, but an unrelated certificate where its issuer should be.
    stranger = CA(tmp_path / "x")
    (tmp_path / "a.crt").write_bytes(
        certs[0].public_bytes(serialization.Encoding.PEM)
        + stranger.cert.public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(ConfigError, match="chain in the wrong order: certificate 2"):
        create_ssl_context(config)


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    ca.write(tmp_path / "a.crt", tmp_path / "a.key", "a.localhost")
    certs = tmp_path / "certs"
    ca.write(certs / "b.crt", certs / "b.key", "b.localhost")
    ca.write(certs / "c.crt", certs / "c.key", "c.localhost")
    os.replace(certs / "c.key", certs / "b.key")  # b.crt now has c's key
    process = start(
        "tests.apps:hello", "--bind", f"127.0.0.1:{free_port()}",
        "--certfile", str(tmp_path / "a.crt"), "--keyfile", str(tmp_path / "a.key"),
        "--sni-certs-dir", str(certs),
    )  # fmt: skip
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "b.key does not match the certificate in" in lines[0], stderr
