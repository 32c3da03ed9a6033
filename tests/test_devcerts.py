from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import multiplex
from multiplex import devcerts


def _certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _snapshot(certs: devcerts.DevCerts) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (certs.ca_cert, certs.ca_key, certs.cert, certs.key)}


def test_first_call_creates_ca_and_leaf(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "certs"
    certs = devcerts.ensure(directory)

    assert certs.directory == directory
    assert certs.ca_cert == directory / "ca.pem"
    assert certs.cert == directory / "cert.pem"
    for path in (certs.ca_cert, certs.ca_key, certs.cert, certs.key):
        assert path.is_file()
    assert stat.S_IMODE(certs.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    # No temporary files left behind.
    assert not list(directory.glob("*.tmp"))


def test_ca_properties(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    (ca,) = _certs(certs.ca_cert)
    (cn,) = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == "multiplex development CA"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=3600) < lifetime <= datetime.timedelta(days=3660)
    ca.verify_directly_issued_by(ca)  # self-signed


def test_leaf_properties_and_signature(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    chain = _certs(certs.cert)
    (ca,) = _certs(certs.ca_cert)
    leaf = chain[0]
    # Leaf first, then the CA.
    assert len(chain) == 2 and chain[1] == ca

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=825)

    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    # The CA's signature over the leaf verifies with the CA's public key.
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert leaf.signature_hash_algorithm is not None
    ca_key.verify(
        leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
    )
    leaf.verify_directly_issued_by(ca)

    # The key file holds the leaf's private key.
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()


def test_python_ssl_trusts_the_leaf_through_the_ca(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.cert, certs.key)
    client = ssl.create_default_context(cafile=str(certs.ca_cert))
    for name in ("localhost", "127.0.0.1", "::1"):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_hostname=name)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # pump the in-memory handshake
            for obj in (c, s):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        assert c.version() is not None, name
        peer = c.getpeercert()
        assert peer and peer["subject"]


def test_second_call_reuses_files(tmp_path: Path) -> None:
    first = _snapshot(devcerts.ensure(tmp_path))
    second = _snapshot(devcerts.ensure(tmp_path))
    assert first == second


def test_regenerate_replaces_everything(tmp_path: Path) -> None:
    first = _snapshot(devcerts.ensure(tmp_path))
    second = _snapshot(devcerts.ensure(tmp_path, regenerate=True))
    assert all(first[name] != second[name] for name in first)


def _write_leaf(certs: devcerts.DevCerts, not_after: datetime.datetime) -> None:
    """Replace the leaf with one (properly signed by the CA) that ends at `not_after`."""
    (ca,) = _certs(certs.ca_cert)
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=800))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certs.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_leaf_expiring_soon_is_reissued_keeping_the_ca(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    _write_leaf(certs, now + datetime.timedelta(days=10))
    before = _snapshot(certs)

    devcerts.ensure(tmp_path)
    after = _snapshot(certs)
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["cert.pem"] != before["cert.pem"] and after["key.pem"] != before["key.pem"]
    leaf = _certs(certs.cert)[0]
    assert leaf.not_valid_after_utc > now + datetime.timedelta(days=800)
    leaf.verify_directly_issued_by(_certs(certs.ca_cert)[0])


def test_leaf_valid_for_long_enough_is_kept(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    _write_leaf(certs, datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=90))
    before = _snapshot(certs)
    devcerts.ensure(tmp_path)
    assert _snapshot(certs) == before


@pytest.mark.parametrize("damage", ["garbage", "missing", "other_key"])
def test_broken_leaf_is_reissued(tmp_path: Path, damage: str) -> None:
    certs = devcerts.ensure(tmp_path)
    ca_before = certs.ca_cert.read_bytes()
    if damage == "garbage":
        certs.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    elif damage == "missing":
        certs.key.unlink()
    else:
        certs.key.write_bytes(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    devcerts.ensure(tmp_path)
    assert certs.ca_cert.read_bytes() == ca_before
    leaf = _certs(certs.cert)[0]
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    assert key.public_key() == leaf.public_key()
    leaf.verify_directly_issued_by(_certs(certs.ca_cert)[0])


@pytest.mark.parametrize("damage", ["missing_cert", "missing_key", "garbage"])
def test_broken_ca_regenerates_everything(tmp_path: Path, damage: str) -> None:
    certs = devcerts.ensure(tmp_path)
    before = _snapshot(certs)
    if damage == "missing_cert":
        certs.ca_cert.unlink()
    elif damage == "missing_key":
        certs.ca_key.unlink()
    else:
        certs.ca_cert.write_text("nonsense")
    devcerts.ensure(tmp_path)
    after = _snapshot(certs)
    assert after["ca.key"] != before["ca.key"]
    assert after["cert.pem"] != before["cert.pem"]
    _certs(certs.cert)[0].verify_directly_issued_by(_certs(certs.ca_cert)[0])


def test_leaf_from_another_ca_is_reissued(tmp_path: Path) -> None:
    a = devcerts.ensure(tmp_path / "a")
    b = devcerts.ensure(tmp_path / "b")
    b.cert.write_bytes(a.cert.read_bytes())
    b.key.write_bytes(a.key.read_bytes())
    devcerts.ensure(tmp_path / "b")
    _certs(b.cert)[0].verify_directly_issued_by(_certs(b.ca_cert)[0])


def test_describe_mentions_paths_and_spki(tmp_path: Path) -> None:
    certs = devcerts.ensure(tmp_path)
    text = devcerts.describe(certs)
    for path in (certs.ca_cert, certs.cert, certs.key):
        assert str(path) in text
    assert f"curl --cacert {certs.ca_cert} https://localhost:8443/" in text
    assert "ssl.create_default_context(cafile=" in text
    assert "verify=" in text
    spki = devcerts.spki_hash(certs.cert)
    assert f"--ignore-certificate-errors-spki-list={spki}" in text
    assert len(spki) == 44  # base64 of a sha256
    assert "production" in text


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Pretend the package is installed under tmp_path/site: no certs/ next to it.
    package = tmp_path / "site" / "multiplex"
    package.mkdir(parents=True)
    monkeypatch.setattr(multiplex, "__file__", str(package / "__init__.py"))
    monkeypatch.delenv("MULTIPLEX_CERTS_DIR", raising=False)

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert devcerts.default_dir() == tmp_path / "data" / "multiplex" / "certs"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert devcerts.default_dir() == Path.home() / ".local/share/multiplex/certs"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert devcerts.default_dir() == Path.home() / ".local/share/multiplex/certs"

    # A source checkout: the repository's certs/ folder.
    (tmp_path / "site" / "certs").mkdir()
    assert devcerts.default_dir() == tmp_path / "site" / "certs"

    monkeypatch.setenv("MULTIPLEX_CERTS_DIR", str(tmp_path / "override"))
    assert devcerts.default_dir() == tmp_path / "override"
