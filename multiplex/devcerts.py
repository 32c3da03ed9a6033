"""Development certificates: a private CA and a `localhost` leaf it signs.

Browsers only speak HTTP/2 (and HTTP/3) over TLS, so trying multiplex locally needs a
certificate. A self-signed leaf would do for curl -k, but a small CA is friendlier: the
user trusts the CA once and we can reissue the short-lived leaf without asking again.

Every file is written to a temporary name and moved into place with `os.replace`, and
every file is validated when read back, so an interrupted run never leaves a state that
is silently used; at worst the next run regenerates.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import multiplex

CA_NAME = "multiplex development CA"
CA_LIFETIME = datetime.timedelta(days=3650)
# Apple platforms reject TLS server certificates valid for more than 825 days, even
# under a user-installed root; stay at the limit so the leaf works everywhere.
LEAF_LIFETIME = datetime.timedelta(days=825)
# Reissue the leaf (and the CA) this long before they expire, so a server started today
# never serves a certificate that dies during the session.
RENEW_BEFORE = datetime.timedelta(days=30)
# Backdate notBefore a little: a client whose clock is slightly behind would otherwise
# reject a certificate minted a second ago as "not yet valid".
BACKDATE = datetime.timedelta(hours=1)

LEAF_DNS = ("localhost",)
LEAF_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True)
class DevCerts:
    directory: Path
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    @classmethod
    def at(cls, directory: Path) -> DevCerts:
        return cls(
            directory=directory,
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca.key",
            cert=directory / "cert.pem",
            key=directory / "key.pem",
        )


def default_dir() -> Path:
    """Where `multiplex certs` and `multiplex demo` keep the development certificates."""
    override = os.environ.get("MULTIPLEX_CERTS_DIR")
    if override:
        return Path(override).expanduser()
    # In a source checkout, keep them next to the code (certs/ is git-ignored) so that
    # deleting the checkout removes them too.
    checkout = Path(multiplex.__file__).resolve().parent.parent / "certs"
    if checkout.is_dir():
        return checkout
    # The XDG spec says relative values are invalid and must be ignored.
    xdg = os.environ.get("XDG_DATA_HOME", "")
    data_home = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local/share"
    return data_home / "multiplex" / "certs"


def ensure(directory: Path | None = None, *, regenerate: bool = False) -> DevCerts:
    """Return usable development certificates in `directory`, creating what is missing.

    The CA is kept as long as it is valid, so a browser that trusts it keeps trusting
    the reissued leaf. `regenerate=True` replaces everything, CA included.
    """
    certs = DevCerts.at(default_dir() if directory is None else directory)
    certs.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(certs.directory):
        now = _now()
        ca = None if regenerate else _load_ca(certs, now)
        if ca is None:
            ca = _make_ca(now)
            # The key goes first: should we die between the two writes, the old
            # certificate no longer matches the new key and the CA is rebuilt next time.
            _write(certs.ca_key, _key_pem(ca[1]), private=True)
            _write(certs.ca_cert, _cert_pem(ca[0]), private=False)
            leaf_ok = False
        else:
            leaf_ok = _leaf_ok(certs, ca[0], now)
        if not leaf_ok:
            cert, key = _make_leaf(ca[0], ca[1], now)
            _write(certs.key, _key_pem(key), private=True)
            _write(certs.cert, _cert_pem(cert) + _cert_pem(ca[0]), private=False)
    return certs


def spki_hash(cert_path: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of the first certificate in `cert_path`,
    the form Chrome's `--ignore-certificate-errors-spki-list` and HPKP use."""
    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def describe(certs: DevCerts, *, url: str = "https://localhost:8443/") -> str:
    """What `multiplex certs` prints: the files and how to make clients trust them."""
    leaf = x509.load_pem_x509_certificates(certs.cert.read_bytes())[0]
    expires = leaf.not_valid_after_utc.date().isoformat()
    ca = str(certs.ca_cert)
    spki = spki_hash(certs.cert)
    return f"""\
multiplex development certificates in {certs.directory}
  CA certificate   {certs.ca_cert}   (trust this one)
  CA private key   {certs.ca_key}
  server cert      {certs.cert}   (localhost, 127.0.0.1, ::1; until {expires})
  server key       {certs.key}

Serve with them:
  multiplex demo
  multiplex app:main --bind localhost:8443 --certfile {certs.cert} --keyfile {certs.key}

Trust the CA:
  curl      curl --cacert {ca} {url}
  Python    ssl.create_default_context(cafile="{ca}")
  httpx     httpx.Client(verify=ssl.create_default_context(cafile="{ca}"), http2=True)
  Node      NODE_EXTRA_CA_CERTS={ca} node ...
  browsers  import {ca} as a certificate authority in the trust store
            (Firefox: Settings > Privacy & Security > Certificates > View Certificates
            > Authorities > Import; Chrome/Edge use the system store: macOS Keychain
            Access; Windows: certutil -user -addstore Root {ca}; Linux:
            certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n multiplex-dev -i {ca}),
            or, without installing anything, start Chrome with
            --ignore-certificate-errors-spki-list={spki}
            (that trusts this one leaf key only; rerun `multiplex certs` after it is
            regenerated)

WARNING: these are for development on this machine only. Anyone holding ca.key can
impersonate localhost to every client that trusts the CA: never use them in production,
never copy ca.key anywhere, and untrust the CA when you are done
(`multiplex certs --regenerate` replaces it; delete {certs.directory} to remove it).
"""


# --- generation ---------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def self_signed(
    common_name: str,
    lifetime: datetime.timedelta,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed P-256 certificate valid from five minutes ago (clock skew)
    for `lifetime`, with `extensions` as (extension, critical) pairs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()), key


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multiplex development"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + CA_LIFETIME)
        # pathlen 0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Limit the damage if ca.key leaks: clients that enforce name constraints
        # (OpenSSL, current browsers) refuse anything it signs for a real domain.
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    san: list[x509.GeneralName] = [x509.DNSName(name) for name in LEAF_DNS]
    san += [x509.IPAddress(ip) for ip in LEAF_IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multiplex development"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now - BACKDATE + LEAF_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- validation of what is on disk ----------------------------------------------------


def _load_ca(
    certs: DevCerts, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA on disk if it is whole, matches its key and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not constraints.ca:
        return None
    if key.public_key() != cert.public_key():
        return None
    if cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return None
    return cert, key


def _leaf_ok(certs: DevCerts, ca_cert: x509.Certificate, now: datetime.datetime) -> bool:
    """Whether cert.pem/key.pem are a matching pair, signed by this CA, not expiring."""
    try:
        leaf = x509.load_pem_x509_certificates(certs.cert.read_bytes())[0]
        key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
        leaf.verify_directly_issued_by(ca_cert)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    if key.public_key() != leaf.public_key():
        return False
    # A leaf from an older multiplex with other names is reissued, not served.
    names = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    if names != set(LEAF_DNS) or ips != set(LEAF_IPS):
        return False
    return leaf.not_valid_after_utc - RENEW_BEFORE > now


# --- files ------------------------------------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Atomically replace `path`: readers see the old file or the new one, never half."""
    # mkstemp creates the file 0600, so a private key is never readable by others,
    # not even for the moment between creation and chmod.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600 if private else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize concurrent `ensure` calls (several workers starting at once) so they do
    not each mint a CA and end up with a leaf signed by the other's."""
    if sys.platform == "win32":  # no flock; a race there only costs a regeneration
        yield
        return
    import fcntl

    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
