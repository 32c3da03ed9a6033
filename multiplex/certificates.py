"""Every certificate a TLS server serves, chosen per connection by SNI, and reloaded
without a restart.

Where certificates come from:
- `certfile`/`keyfile`: the default, for clients that name no host or an unknown one;
- `sni_certs_dir`: more pairs, `NAME.crt` + `NAME.key` or certbot's `NAME/fullchain.pem` +
  `NAME/privkey.pem`; each serves the DNS names of its subjectAltName (the file name
  is only a label);
- ACME (`multiplex.acme`): a managed certificate installed with `set_managed`.

TCP: the listeners use one base context whose `sni_callback` swaps each connection's
`ssl_object.context` to the chosen certificate's context. A reload builds new contexts
and swaps the lookup table in one assignment: handshakes from then on get the new
certificate, connections already open keep the one they negotiated.

QUIC: aioquic copies one certificate from its configuration into each connection; our
connection class asks `quic_select(server_name)` instead once the ClientHello is read,
so QUIC gets the same per-name choice and the same reloads.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections.abc import Callable

from cryptography import x509

from multiplex.config import Config
from multiplex.devcerts import self_signed
from multiplex.errors import ConfigError
from multiplex.tls import PrivateKey, ServerSSLContext, check_pair, load_certificate

logger = logging.getLogger("multiplex")

# What aioquic needs of a certificate: leaf, the rest of the chain, the key.
QuicCertificate = tuple[x509.Certificate, list[x509.Certificate], PrivateKey]


class Certificate:
    """One loaded chain: its TLS context for TCP and its parsed parts for QUIC."""

    __slots__ = ("certfile", "context", "keyfile", "names", "not_after", "not_before", "quic")

    def __init__(self, config: Config, certfile: str, keyfile: str) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self.context: ServerSSLContext = load_certificate(config, certfile, keyfile)
        chain, key = check_pair(certfile, keyfile)
        self.quic: QuicCertificate = (chain[0], chain[1:], key)
        self.names = dns_names(chain[0])
        self.not_before = _utc(chain[0], "not_valid_before")
        self.not_after = _utc(chain[0], "not_valid_after")


class CertStore:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.default: Certificate | None = None
        self.by_name: dict[str, Certificate] = {}  # exact names and `*.suffix` wildcards
        self.managed: Certificate | None = None  # from ACME
        self.managed_files: tuple[str, str] | None = None
        # tls-alpn-01 challenge contexts by name (RFC 8737), set by the ACME client.
        self.challenges: dict[str, ssl.SSLContext] = {}
        self.mtimes: dict[str, float] = {}
        self.reloaded: list[Callable[[], None]] = []  # called after each reload
        self.base = ServerSSLContext(ssl.PROTOCOL_TLS_SERVER)  # replaced by load()
        self._watcher: asyncio.Task[None] | None = None

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        """Read every certificate file; `ConfigError` (one line) for the first bad one.
        Nothing changes unless all of them load."""
        config = self.config
        default = None
        if config.certfile is not None:
            default = Certificate(config, config.certfile, config.keyfile or config.certfile)
        extra = [Certificate(config, c, k) for c, k in self._dir_pairs()]
        managed = self.managed
        if self.managed_files is not None:
            managed = Certificate(config, *self.managed_files)
        by_name: dict[str, Certificate] = {}
        for cert in extra:
            for name in cert.names:
                by_name.setdefault(name, cert)
        if managed is not None:
            for name in managed.names:
                by_name[name] = managed
        if default is None:
            default = managed or (extra[0] if extra else None)
        self.mtimes = self._stat()
        if self.base.sni_callback is None:
            from multiplex.tls import new_server_context

            self.base = new_server_context(config)
            self.base.sni_callback = self._sni
        # One assignment each, in this order: a handshake in between sees a consistent
        # pair (the loop is single-threaded; the ACME thread only calls via the loop).
        self.managed = managed
        self.by_name, self.default = by_name, default

    def reload(self) -> bool:
        """Re-read the files (SIGHUP, a change on disk). A bad file is logged and the
        certificates in use stay: a typo must not take the site down."""
        try:
            self.load()
        except ConfigError as exc:
            logger.error("Certificate reload failed, keeping the current certificates: %s", exc)
            self.mtimes = self._stat()  # do not retry the same broken files every poll
            return False
        logger.info("Certificates reloaded: %s", ", ".join(self.describe()) or "none")
        for callback in self.reloaded:
            callback()
        return True

    def set_managed(self, certfile: str, keyfile: str) -> None:
        """Serve the ACME certificate in these files from now on (raises ConfigError)."""
        self.managed_files = (certfile, keyfile)
        self.managed = Certificate(self.config, certfile, keyfile)
        self.load()

    def describe(self) -> list[str]:
        seen: list[Certificate] = []
        for cert in [self.default, *self.by_name.values()]:
            if cert is not None and cert not in seen:
                seen.append(cert)
        return [f"{c.certfile} ({', '.join(c.names) or 'no DNS names'})" for c in seen]

    @property
    def ready(self) -> bool:
        return self.default is not None

    def _dir_pairs(self) -> list[tuple[str, str]]:
        directory = self.config.sni_certs_dir
        if directory is None:
            return []
        pairs = []
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise ConfigError(f"sni_certs_dir {directory}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.is_dir():
                chain = os.path.join(entry.path, "fullchain.pem")
                key = os.path.join(entry.path, "privkey.pem")
                if os.path.isfile(chain):
                    pairs.append((chain, key))
            elif entry.name.endswith(".crt"):
                pairs.append((entry.path, entry.path[: -len(".crt")] + ".key"))
        if not pairs:
            raise ConfigError(
                f"sni_certs_dir {directory}: no NAME.crt or NAME/fullchain.pem certificate in it"
            )
        return pairs

    # --- choosing ---------------------------------------------------------------------

    def select(self, server_name: str | None) -> Certificate | None:
        if server_name:
            name = server_name.lower().rstrip(".")
            cert = self.by_name.get(name)
            if cert is None and "." in name:
                cert = self.by_name.get("*." + name.split(".", 1)[1])
            if cert is not None:
                return cert
        return self.default

    def _sni(self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        # OpenSSL calls this for every ClientHello, with or without SNI (then None).
        cert = self.select(server_name)
        if cert is not None:
            ssl_object.context = cert.context

    def quic_select(self, server_name: str | None) -> QuicCertificate | None:
        cert = self.select(server_name)
        return cert.quic if cert is not None else None

    # --- watching ---------------------------------------------------------------------

    def files(self) -> list[str]:
        paths = []
        if self.config.certfile:
            paths += [self.config.certfile, self.config.keyfile or self.config.certfile]
        if self.config.sni_certs_dir:
            paths.append(self.config.sni_certs_dir)
            try:
                for c, k in self._dir_pairs():
                    paths += [c, k, os.path.dirname(c)]
            except ConfigError:
                pass
        return paths

    def _stat(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for path in self.files():
            try:
                found[path] = os.stat(path).st_mtime_ns
            except OSError:
                found[path] = -1
        return found

    def changed(self) -> bool:
        return self._stat() != self.mtimes

    def start_watching(self) -> None:
        interval = self.config.cert_reload_interval
        if interval > 0 and self.files():
            self._watcher = asyncio.get_running_loop().create_task(self._watch(interval))

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self, interval: float) -> None:
        # Polling a handful of stat() calls every few seconds costs nothing and needs
        # no inotify dependency; certbot and friends replace files by rename, which
        # changes the mtime we see.
        while True:
            await asyncio.sleep(interval)
            if self.changed():
                self.reload()


def dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def placeholder_quic_certificate() -> QuicCertificate:
    """A throwaway self-signed certificate: aioquic insists on one in its configuration
    even when every connection gets its certificate from `quic_select`."""
    cert, key = self_signed("multiplex placeholder", datetime.timedelta(days=1))
    return cert, [], key


def _utc(cert: x509.Certificate, field: str) -> datetime.datetime:
    # cryptography 42 added the *_utc properties; the plain ones are naive UTC.
    value: datetime.datetime | None = getattr(cert, field + "_utc", None)
    if value is None:
        value = getattr(cert, field).replace(tzinfo=datetime.timezone.utc)
    return value
