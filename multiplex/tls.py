"""TLS for the TCP listeners: the server `SSLContext` and the ASGI `tls` scope extension.

The context follows RFC 9113 section 9.2: TLS 1.2 or newer, no compression, no
renegotiation, and on TLS 1.2 only ephemeral ECDHE key exchange with AEAD ciphers (the
others are on the HTTP/2 blocklist, and a client may answer them with
INADEQUATE_SECURITY). TLS 1.3 suites are all acceptable, so they are left alone.
"""

from __future__ import annotations

import os
import ssl
from itertools import pairwise
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from multiplex.config import Config
from multiplex.errors import ConfigError

# The private keys both TLS stacks (OpenSSL for TCP, aioquic for QUIC) can sign with.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are configured separately and are
# all AEAD). No CBC, no static RSA, no finite-field DHE: all blocklisted for HTTP/2.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

# What `SSLObject.version()` returns, as the wire numbers the ASGI spec asks for.
_TLS_VERSIONS = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class ServerSSLContext(ssl.SSLContext):
    """An `SSLContext` that remembers the certificate it serves.

    Python's ssl module cannot give back a server's own certificate from a connection,
    yet the ASGI `tls` extension reports it; each connection reaches its context through
    `ssl_object.context`, so the PEM is kept there.
    """

    server_cert_pem: str | None = None


def create_ssl_context(config: Config) -> ssl.SSLContext:
    """The context every TLS listener uses, serving `certfile`. Problems with the files
    raise `ConfigError` with one line naming the file, so the CLI can report them before
    binding anything."""
    if config.certfile is None:
        raise ConfigError("TLS needs a certificate: set certfile")
    return load_certificate(config, config.certfile, config.keyfile or config.certfile)


def new_server_context(config: Config) -> ServerSSLContext:
    """A server context with every setting but the certificate: protocol versions,
    ciphers, ALPN, client certificates, key logging."""
    ctx = ServerSSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # CRIME-style attacks on compressed TLS; renegotiation is forbidden by RFC 9113 and
    # an easy CPU DoS on HTTP/1.1. Session tickets stay enabled so clients can resume.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION

    if config.alpn_protocols:
        ctx.set_alpn_protocols(config.alpn_protocols)

    if config.verify_client and not config.ca_certs:
        raise ConfigError(
            "verify_client needs ca_certs: the CA bundle client certificates chain to"
        )
    if config.ca_certs:
        _readable(config.ca_certs, "ca_certs")
        try:
            ctx.load_verify_locations(cafile=config.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"ca_certs {config.ca_certs}: cannot load: {_reason(exc)}") from None
        # Only ca_certs: ask for a certificate and verify any that is offered, but let
        # clients without one in, so the app can decide (the tls extension tells it).
        ctx.verify_mode = ssl.CERT_REQUIRED if config.verify_client else ssl.CERT_OPTIONAL

    # SSLKEYLOGFILE is honoured the way browsers and curl do (create_default_context
    # does it for clients; a server context has to ask), for TCP and QUIC alike.
    keylog = config.keylog_file or os.environ.get("SSLKEYLOGFILE")
    if keylog:
        try:
            ctx.keylog_filename = keylog
        except OSError as exc:
            raise ConfigError(f"keylog_file {keylog}: {_reason(exc)}") from None
    return ctx


def load_certificate(config: Config, certfile: str, keyfile: str) -> ServerSSLContext:
    """A server context (see `new_server_context`) serving one certificate chain, checked
    first: `ConfigError` for a key that does not match or a chain out of order."""
    ctx = new_server_context(config)
    chain, _ = check_pair(certfile, keyfile)
    ctx.server_cert_pem = chain[0].public_bytes(serialization.Encoding.PEM).decode("ascii")
    try:
        ctx.load_cert_chain(certfile, keyfile, password=_no_password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"certfile {certfile}: cannot load: {_reason(exc)}") from None
    return ctx


def tls_extension_info(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any]:
    """The `scope["extensions"]["tls"]` dict of the asgiref TLS extension (version 0.2)
    for one established connection."""
    info: dict[str, Any] = {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        # The handshake fails when a client certificate does not verify, so a connection
        # that exists never carries a verification error.
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
    if ssl_object is None:
        return info
    context = ssl_object.context
    if isinstance(context, ServerSSLContext):
        info["server_cert"] = context.server_cert_pem
    version = ssl_object.version()
    info["tls_version"] = _TLS_VERSIONS.get(version) if version else None
    cipher = ssl_object.cipher()
    if cipher is not None:
        info["cipher_suite"] = _cipher_id(context, cipher[0])
    chain = _client_chain(ssl_object)
    if chain:
        info["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der) for der in chain]
        info["client_cert_name"] = x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string()
    return info


# --- helpers ------------------------------------------------------------------------------


def _readable(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting} {path}: {_reason(exc)}") from None


def check_pair(certfile: str, keyfile: str) -> tuple[list[x509.Certificate], PrivateKey]:
    """Parse both files ourselves first: OpenSSL's errors ("[SSL] PEM lib") do not say
    which file is wrong, it accepts a chain in any order (clients then fail to verify),
    and an encrypted key would make it prompt on the terminal. Returns the chain, leaf
    first, and the key."""
    cert_pem = _readable(certfile, "certfile")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(f"certfile {certfile}: no PEM certificate in it") from None
    key_pem = _readable(keyfile, "keyfile")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        msg = f"keyfile {keyfile}: the key is encrypted; give an unencrypted key"
        raise ConfigError(msg) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"keyfile {keyfile}: no usable PEM private key in it") from None
    if key.public_key() != chain[0].public_key():
        raise ConfigError(f"keyfile {keyfile} does not match the certificate in {certfile}")
    for position, (cert, issuer) in enumerate(pairwise(chain), start=1):
        if not _issued_by(cert, issuer):
            raise ConfigError(
                f"certfile {certfile}: chain in the wrong order: certificate {position + 1}"
                f" ({issuer.subject.rfc4514_string()}) did not issue certificate {position}"
                f" ({cert.subject.rfc4514_string()}); put the leaf first, then each issuer"
            )
    if not isinstance(key, PrivateKey):
        raise ConfigError(f"keyfile {keyfile}: unsupported key type; use RSA, EC or Ed25519")
    return chain, key


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _no_password() -> bytes:
    # Reached only if OpenSSL finds an encrypted key that cryptography did not; raising
    # beats OpenSSL's default of prompting on the server's terminal.
    raise ConfigError("the private key is encrypted; give an unencrypted key")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


_cipher_ids: dict[str, int] = {}


def _cipher_id(context: ssl.SSLContext, name: str) -> int | None:
    # Python only gives the cipher's OpenSSL name; the context's cipher list maps names
    # to OpenSSL ids, 0x0300XXXX where XXXX is the IANA number the ASGI spec wants.
    if name not in _cipher_ids:
        for cipher in context.get_ciphers():
            _cipher_ids[cipher["name"]] = int(cipher["id"]) & 0xFFFF
    return _cipher_ids.get(name)


def _client_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """DER certificates the client sent, its own first."""
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return []
    # Python 3.13 exposes the whole chain the peer sent; before that only the leaf.
    get_chain = getattr(ssl_object, "get_unverified_chain", None)
    if get_chain is None:
        return [leaf]
    # Its Certificate objects default to PEM; converting back keeps one code path.
    chain = [ssl.PEM_cert_to_DER_cert(c.public_bytes()) for c in get_chain() or []]
    # On the server side OpenSSL's peer chain may leave the leaf out.
    if not chain or chain[0] != leaf:
        chain.insert(0, leaf)
    return chain
