"""Real TLS handshakes over loopback against contexts from `create_ssl_context`."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from multiplex import devcerts
from multiplex.config import Config
from multiplex.errors import ConfigError
from multiplex.tls import create_ssl_context, tls_extension_info


@pytest.fixture
def certs(tmp_path: Path) -> devcerts.DevCerts:
    return devcerts.ensure(tmp_path / "certs")


def _config(certs: devcerts.DevCerts, **changes: Any) -> Config:
    return Config(certfile=str(certs.cert), keyfile=str(certs.key), **changes)


def _client_cert(certs: devcerts.DevCerts, directory: Path) -> tuple[Path, Path]:
    """A client certificate (clientAuth) issued by the dev CA."""
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "test client"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multiplex tests"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _client_context(
    certs: devcerts.DevCerts, alpn: list[str] | None = None, cert: tuple[Path, Path] | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.set_alpn_protocols(alpn or ["h2", "http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    """Connect once over loopback; return what each side saw of the TLS session."""
    seen: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.set_result(
            {"alpn": ssl_object.selected_alpn_protocol(), "info": tls_extension_info(ssl_object)}
        )
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        try:
            # Reading matters: with TLS 1.3 a rejected client certificate only shows
            # up as an alert after the client thinks the handshake is done.
            data = await asyncio.wait_for(reader.read(), 5)
            if not data:  # the server always says hello once its handshake succeeded
                raise ConnectionError("the server closed the connection during the handshake")
            client_alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        finally:
            writer.close()
        result = await asyncio.wait_for(seen, 5)
        result.update(data=data, client_alpn=client_alpn)
        return result
    finally:
        server.close()
        await server.wait_closed()


def test_alpn_selects_h2(certs: devcerts.DevCerts) -> None:
    result = asyncio.run(_handshake(create_ssl_context(_config(certs)), _client_context(certs)))
    assert result["alpn"] == "h2"
    assert result["client_alpn"] == "h2"
    assert result["data"] == b"hello"


def test_alpn_follows_config(certs: devcerts.DevCerts) -> None:
    ctx = create_ssl_context(_config(certs, alpn_protocols=["http/1.1"]))
    result = asyncio.run(_handshake(ctx, _client_context(certs)))
    assert result["client_alpn"] == "http/1.1"


def test_context_settings(certs: devcerts.DevCerts) -> None:
    ctx = create_ssl_context(_config(certs))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_NO_TICKET
    assert ctx.verify_mode == ssl.CERT_NONE
    for cipher in ctx.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["kea"] == "kx-ecdhe", cipher["name"]
            assert cipher["aead"], cipher["name"]


def test_tls12_uses_an_ecdhe_aead_suite(certs: devcerts.DevCerts) -> None:
    client = _client_context(certs)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    result = asyncio.run(_handshake(create_ssl_context(_config(certs)), client))
    info = result["info"]
    assert info["tls_version"] == 0x0303
    # ECDHE-ECDSA with AES-GCM or ChaCha20-Poly1305 (the leaf's key is EC).
    assert info["cipher_suite"] in {0xC02B, 0xC02C, 0xCCA9}


def test_tls12_client_with_only_cbc_suites_is_refused(certs: devcerts.DevCerts) -> None:
    client = _client_context(certs)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(_handshake(create_ssl_context(_config(certs)), client))


def test_tls_extension_info_without_client_cert(certs: devcerts.DevCerts) -> None:
    result = asyncio.run(_handshake(create_ssl_context(_config(certs)), _client_context(certs)))
    info = result["info"]
    assert set(info) == {
        "server_cert",
        "client_cert_chain",
        "client_cert_name",
        "client_cert_error",
        "tls_version",
        "cipher_suite",
    }
    assert info["tls_version"] == 0x0304
    assert info["cipher_suite"] in {0x1301, 0x1302, 0x1303}
    leaf = x509.load_pem_x509_certificates(certs.cert.read_bytes())[0]
    assert info["server_cert"] == leaf.public_bytes(serialization.Encoding.PEM).decode()
    assert list(info["client_cert_chain"]) == []
    assert info["client_cert_name"] is None
    assert info["client_cert_error"] is None


def test_tls_extension_info_with_client_cert(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    client_cert = _client_cert(certs, tmp_path)
    server = create_ssl_context(_config(certs, ca_certs=str(certs.ca_cert), verify_client=True))
    result = asyncio.run(_handshake(server, _client_context(certs, cert=client_cert)))
    info = result["info"]
    assert info["tls_version"] == 0x0304
    chain = list(info["client_cert_chain"])
    assert chain
    sent = x509.load_pem_x509_certificate(client_cert[0].read_bytes())
    assert x509.load_pem_x509_certificate(chain[0].encode()) == sent
    assert info["client_cert_name"] == "O=multiplex tests,CN=test client"
    assert info["client_cert_error"] is None


def test_optional_client_cert_with_only_ca_certs(certs: devcerts.DevCerts) -> None:
    server = create_ssl_context(_config(certs, ca_certs=str(certs.ca_cert)))
    assert server.verify_mode == ssl.CERT_OPTIONAL
    result = asyncio.run(_handshake(server, _client_context(certs)))
    assert result["data"] == b"hello"
    assert list(result["info"]["client_cert_chain"]) == []


def test_verify_client_rejects_client_without_cert(certs: devcerts.DevCerts) -> None:
    server = create_ssl_context(_config(certs, ca_certs=str(certs.ca_cert), verify_client=True))
    assert server.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(_handshake(server, _client_context(certs)))


def test_verify_client_rejects_cert_from_another_ca(
    certs: devcerts.DevCerts, tmp_path: Path
) -> None:
    other = devcerts.ensure(tmp_path / "other")
    client_cert = _client_cert(other, tmp_path)
    server = create_ssl_context(_config(certs, ca_certs=str(certs.ca_cert), verify_client=True))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        asyncio.run(_handshake(server, _client_context(certs, cert=client_cert)))


def test_verify_client_needs_ca_certs(certs: devcerts.DevCerts) -> None:
    with pytest.raises(ConfigError, match="ca_certs"):
        create_ssl_context(_config(certs, verify_client=True))


def test_missing_certfile(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError) as info:
        create_ssl_context(Config(certfile=str(missing), keyfile=str(certs.key)))
    message = str(info.value)
    assert str(missing) in message and "certfile" in message
    assert "\n" not in message


def test_missing_keyfile(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match="keyfile") as info:
        create_ssl_context(Config(certfile=str(certs.cert), keyfile=str(missing)))
    assert str(missing) in str(info.value)


def test_certfile_without_certificate(certs: devcerts.DevCerts) -> None:
    with pytest.raises(ConfigError, match="certfile") as info:
        create_ssl_context(Config(certfile=str(certs.key), keyfile=str(certs.key)))
    assert str(certs.key) in str(info.value)


def test_mismatched_key(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    other = devcerts.ensure(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not match") as info:
        create_ssl_context(Config(certfile=str(certs.cert), keyfile=str(other.key)))
    assert str(other.key) in str(info.value)


def test_encrypted_key(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="encrypted"):
        create_ssl_context(Config(certfile=str(certs.cert), keyfile=str(encrypted)))


def test_key_inside_certfile(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    ctx = create_ssl_context(Config(certfile=str(combined)))
    result = asyncio.run(_handshake(ctx, _client_context(certs)))
    assert result["alpn"] == "h2"


def test_keylog_file(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    ctx = create_ssl_context(_config(certs, keylog_file=str(keylog)))
    asyncio.run(_handshake(ctx, _client_context(certs)))
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()


def test_keylog_file_unwritable(certs: devcerts.DevCerts, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keylog_file"):
        create_ssl_context(_config(certs, keylog_file=str(tmp_path / "no" / "such" / "dir")))


def test_tls_extension_info_without_ssl_object() -> None:
    info = tls_extension_info(None)
    assert info["tls_version"] is None and info["server_cert"] is None
