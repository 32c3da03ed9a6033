"""Automatic HTTPS: certificates from an ACME CA (RFC 8555), kept renewed.

The protocol is certbot's `acme` library; keys and CSRs are made with `cryptography`.
The library is blocking (requests), so every call to the CA runs in a thread; the
event loop only installs results.

Challenges:
- tls-alpn-01 (RFC 8737), answered on the TLS listeners themselves. Python's ssl has
  no ALPN callback that could switch certificates, so while a challenge is pending
  the listener peeks (MSG_PEEK, nothing consumed) at each ClientHello: one offering
  only `acme-tls/1` for a name with a pending challenge gets the challenge
  certificate, every other connection the normal context. With nothing pending no
  connection is peeked at.
- http-01: a cleartext listener on `acme_http_bind` answers
  /.well-known/acme-challenge/TOKEN and redirects everything else to https (308).

Life cycle: a cached certificate that is still valid is served at once (the CA is not
asked for a certificate); otherwise normal TLS clients wait (their connections are held
before the handshake) until the first certificate arrives. Renewal is scheduled by the
CA's ACME Renewal Information (RFC 9773) when its directory offers `renewalInfo`: a
random time inside the suggested window, the window asked for again after the CA's
Retry-After (bounded by `acme_ari_min_interval` and `acme_ari_max_interval`). Without
it, or when the request fails, renewal is due at two thirds of the lifetime. A failed
order is retried with exponential backoff and logged, while the certificate in use
keeps serving. A new certificate takes effect for new TCP and QUIC handshakes at once;
open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from multiplex.certificates import Certificate, CertStore, dns_names
from multiplex.config import Config
from multiplex.devcerts import self_signed
from multiplex.errors import ConfigError
from multiplex.settings import parse_bind

logger = logging.getLogger("multiplex")

DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
ACME_TLS_ALPN = "acme-tls/1"
# RFC 8737 section 3: id-pe-acmeIdentifier, holding SHA-256(key authorization).
ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
ORDER_TIMEOUT = 180.0  # seconds an order may take from challenge to certificate
RENEW_AT = 2 / 3  # of the certificate's lifetime
TLS_HANDSHAKE = 22
CLIENT_HELLO = 1
MAX_RECORD = 16384 + 5

T = TypeVar("T")


@dataclass(frozen=True)
class RenewalPlan:
    """When to order the current certificate's replacement, and when to ask the CA's
    renewal information again (which may move it)."""

    due: datetime.datetime
    poll: datetime.datetime
    by_ari: bool  # due comes from the CA's renewal information
    why: str  # for the log

    def when(self, now: datetime.datetime) -> str:
        return "now" if self.due <= now else f"at {_iso(self.due)}"


def two_thirds(not_before: datetime.datetime, not_after: datetime.datetime) -> datetime.datetime:
    return not_before + (not_after - not_before) * RENEW_AT


def plan_renewal(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    now: datetime.datetime,
    suggested: datetime.datetime | None,
    next_poll: datetime.datetime,
    config: Config,
) -> RenewalPlan:
    """The schedule from one renewal-information answer: `suggested` is the time the
    acme library picked inside the CA's suggestedWindow (None: the CA offers no ARI),
    `next_poll` when the CA's Retry-After says to ask again.

    A suggested time already past means renew now (RFC 9773 section 4.2: a window in
    the past asks for immediate renewal). One at or after expiry is not believed (it
    would let the certificate lapse), nor is a Retry-After outside the configured
    bounds (RFC 9773 section 4.3.2 asks clients to bound the interval; under a minute
    and over a day are its examples of unreasonable)."""
    poll = min(
        max(next_poll, now + datetime.timedelta(seconds=config.acme_ari_min_interval)),
        now + datetime.timedelta(seconds=config.acme_ari_max_interval),
    )
    fallback = two_thirds(not_before, not_after)
    if suggested is None:
        why = "(the CA offers no renewal information)"
        return RenewalPlan(fallback, poll, False, f"at two thirds of the lifetime {why}")
    if suggested >= not_after:
        why = f"(the CA's renewal information suggests {_iso(suggested)}, after expiry)"
        return RenewalPlan(fallback, poll, False, f"at two thirds of the lifetime {why}")
    return RenewalPlan(suggested, poll, True, "per the CA's renewal information")


class AcmeManager:
    def __init__(self, config: Config, store: CertStore) -> None:
        try:
            import acme.client  # noqa: F401
        except ImportError:
            raise ConfigError(
                "acme_domain needs the `acme` package: pip install 'multiplex[acme]'"
            ) from None
        self.config = config
        self.store = store
        self.domains = [d.lower() for d in config.acme_domain]
        self.directory_url = DIRECTORIES.get(config.acme_directory, config.acme_directory)
        self.cache = Path(config.acme_cache) / _slug(self.directory_url)
        self.certfile = self.cache / f"{_slug(self.domains[0])}.crt"
        self.keyfile = self.cache / f"{_slug(self.domains[0])}.key"
        self.https_port = 443
        # Pending challenges: http-01 path -> key authorization; tls-alpn-01 contexts
        # live in store.challenges (the listener looks there).
        self.http_tokens: dict[str, str] = {}
        self.ready = asyncio.Event()
        self.failures = 0
        self.ari_failures = 0
        # For the certificate in use; None: ask the CA's renewal information first.
        self.plan: RenewalPlan | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: asyncio.AbstractServer | None = None

    # --- start and stop -----------------------------------------------------------------

    def load_cached(self) -> bool:
        """Serve a cached certificate for these names if it is still valid."""
        if not self.certfile.is_file() or not self.keyfile.is_file():
            return False
        try:
            cert = x509.load_pem_x509_certificates(self.certfile.read_bytes())[0]
        except (OSError, ValueError) as exc:
            logger.warning(
                "ACME: ignoring unreadable cached certificate %s: %s", self.certfile, exc
            )
            return False
        if not set(self.domains) <= set(dns_names(cert)):
            return False  # the names changed since: order a new one
        if _not_after(cert) <= _now():
            return False
        try:
            self.store.set_managed(str(self.certfile), str(self.keyfile))
        except ConfigError as exc:
            logger.warning("ACME: ignoring cached certificate: %s", exc)
            return False
        self.plan = None
        self.ready.set()
        logger.info(
            "ACME: using the cached certificate for %s (valid until %s)",
            ", ".join(self.domains),
            _iso(_not_after(cert)),
        )
        return True

    async def start(self, addresses: list[Any]) -> None:
        self.loop = asyncio.get_running_loop()
        ports = [a[1] for a in addresses if isinstance(a, tuple)]
        if ports:
            self.https_port = ports[0]
        if self.config.acme_http_bind:
            self._http = await self._listen_http(self.config.acme_http_bind)
        if not self.ready.is_set():
            logger.info(
                "ACME: waiting for a certificate for %s from %s",
                ", ".join(self.domains),
                self.directory_url,
            )
        self._task = self.loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
            self._http = None

    # --- renewal loop -----------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            cert = self.store.managed
            if cert is not None:
                if self.plan is None or self.plan.poll <= _now():
                    self.plan = await self._replan(cert, self.plan)
                now = _now()
                if self.plan.due > now:
                    # Wake for whichever comes first: the renewal, or asking the CA's
                    # renewal information again (it may move the renewal earlier).
                    wake = min(self.plan.due, self.plan.poll)
                    await asyncio.sleep((wake - now).total_seconds())
                    continue
                logger.info(
                    "ACME: renewing the certificate for %s, due %s %s",
                    ", ".join(self.domains),
                    _iso(self.plan.due),
                    self.plan.why,
                )
            try:
                await asyncio.to_thread(self._obtain)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                delay = min(
                    self.config.acme_retry_delay * 2 ** (self.failures - 1),
                    self.config.acme_retry_max_delay,
                )
                logger.error(
                    "ACME: could not get a certificate for %s from %s: %s; %s; retrying in %.0f s",
                    ", ".join(self.domains),
                    self.directory_url,
                    _describe(exc),
                    "the current certificate keeps serving"
                    if self.store.managed is not None
                    else "still waiting",
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.failures = 0

    async def _replan(self, cert: Certificate, previous: RenewalPlan | None) -> RenewalPlan:
        """Ask the CA's renewal information (in a thread) when to renew `cert`."""
        now = _now()
        names = ", ".join(self.domains)
        if cert.not_after <= now:
            # RFC 9773 section 4.3: no renewal information for an expired certificate.
            poll = now + datetime.timedelta(seconds=self.config.acme_ari_max_interval)
            return RenewalPlan(now, poll, False, "(the certificate has expired)")
        try:
            suggested, next_poll = await asyncio.to_thread(self._renewal_info, cert.certfile)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.ari_failures += 1
            backoff = min(
                self.config.acme_ari_min_interval * 2 ** (self.ari_failures - 1),
                self.config.acme_ari_max_interval,
            )
            poll = now + datetime.timedelta(seconds=backoff)
            failed = _describe_ari(exc)
            if previous is not None and previous.by_ari:
                # The CA's last answer for this certificate still stands: falling back
                # to two thirds could put off a renewal the CA asked for.
                why = f"per the CA's earlier renewal information (asking again failed: {failed})"
                plan = RenewalPlan(previous.due, poll, True, why)
            else:
                due = two_thirds(cert.not_before, cert.not_after)
                why = "at two thirds of the lifetime"
                why += f" (asking the CA for renewal information failed: {failed})"
                plan = RenewalPlan(due, poll, False, why)
            logger.warning(
                "ACME: renewal of %s %s %s; asking again in %.0f s",
                names,
                plan.when(now),
                plan.why,
                backoff,
            )
            return plan
        self.ari_failures = 0
        plan = plan_renewal(cert.not_before, cert.not_after, now, suggested, next_poll, self.config)
        # Said once per certificate and whenever the source changes; the CA's window is
        # asked for again every Retry-After and each answer re-picks a random time, which
        # would otherwise fill the log.
        changed = previous is None or previous.why != plan.why
        logger.log(
            logging.INFO if changed else logging.DEBUG,
            "ACME: renewal of %s %s %s; asking the CA again at %s",
            names,
            plan.when(now),
            plan.why,
            _iso(plan.poll),
        )
        return plan

    def _install(self) -> None:
        """On the loop: serve the certificate just written to the cache."""
        self.store.set_managed(str(self.certfile), str(self.keyfile))
        self.plan = None  # the renewal loop asks the CA's renewal information next
        self.ready.set()
        cert = self.store.managed
        assert cert is not None
        logger.info(
            "ACME: new certificate for %s, valid until %s",
            ", ".join(self.domains),
            _iso(cert.not_after),
        )

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """From the ACME thread: run `fn` on the event loop and wait for it."""
        assert self.loop is not None

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=60)

    # --- talking to the CA (in a thread) ---------------------------------------------

    def _client(self) -> tuple[Any, Any]:
        """(acme ClientV2 with the CA's directory, account key)."""
        import josepy as jose
        from acme import client

        self.cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        account_key = jose.jwk.JWKRSA(key=self._account_key())
        # requests takes a CA bundle path where acme's annotation says bool.
        verify = cast(bool, self.config.acme_ca_certs or True)
        net = client.ClientNetwork(account_key, user_agent="multiplex", verify_ssl=verify)
        directory = client.ClientV2.get_directory(self.directory_url, net)
        return client.ClientV2(directory, net), account_key

    def _renewal_info(self, certfile: str) -> tuple[datetime.datetime | None, datetime.datetime]:
        """(a random time inside the CA's suggested renewal window, or None when the
        directory has no renewalInfo; when to ask again). The acme library does the
        request (an unauthenticated GET of renewalInfo/<AKI>.<serial>), the random pick
        and the Retry-After."""
        acme, _ = self._client()
        leaf = x509.load_pem_x509_certificates(Path(certfile).read_bytes())[0]
        suggested, next_poll = acme.renewal_time(leaf.public_bytes(serialization.Encoding.PEM))
        if next_poll.tzinfo is None:
            # acme gives naive local time here (datetime.now() + Retry-After seconds);
            # a Retry-After in HTTP-date form comes back as naive UTC instead, off by
            # the UTC offset, which plan_renewal's bounds keep sane.
            next_poll = next_poll.astimezone(datetime.timezone.utc)
        if suggested is not None:
            suggested = suggested.astimezone(datetime.timezone.utc)
        return suggested, next_poll

    def _obtain(self) -> None:
        from acme import messages

        _register_tls_alpn01()
        acme, account_key = self._client()
        acme.net.account = self._account(acme)

        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.domains[0])]))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(d) for d in self.domains]),
                critical=False,
            )
            .sign(cert_key, hashes.SHA256())
        )
        order = acme.new_order(csr.public_bytes(serialization.Encoding.PEM))
        names: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation
                domain = authz.body.identifier.value
                wanted = self.config.acme_challenge
                challb = next((c for c in authz.body.challenges if c.chall.typ == wanted), None)
                if challb is None:
                    offered = ", ".join(
                        str(c.chall.to_partial_json().get("type")) for c in authz.body.challenges
                    )
                    raise RuntimeError(f"the CA offers no {wanted} for {domain} (only {offered})")
                response = challb.chall.response(account_key)
                key_authorization: str = response.key_authorization
                names.append(domain)
                self._on_loop(partial(self._set_challenge, challb.chall, domain, key_authorization))
                acme.answer_challenge(challb, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            self._on_loop(lambda: self._clear_challenges(names))
        key_pem = cert_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first: a reader that sees the new certificate must find its key.
        _write_private(self.keyfile, key_pem)
        _write_private(self.certfile, order.fullchain_pem.encode("ascii"))
        self._on_loop(self._install)

    def _account_key(self) -> rsa.RSAPrivateKey:
        path = self.cache / "account.key"
        if path.is_file():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, rsa.RSAPrivateKey):
                return key
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return key

    def _account(self, acme: Any) -> Any:
        from acme import errors, messages

        path = self.cache / "account.json"
        if path.is_file():
            return messages.RegistrationResource.json_loads(path.read_text())
        new = messages.NewRegistration.from_data(
            email=self.config.acme_email, terms_of_service_agreed=True
        )
        try:
            regr = acme.new_account(new)
        except errors.ConflictError as exc:
            # The key has an account already (account.json was lost): its URL is enough.
            regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
        _write_private(path, json.dumps(regr.to_json()).encode())
        logger.info("ACME: account %s", regr.uri)
        return regr

    # --- challenges (on the loop) -------------------------------------------------------

    def _set_challenge(self, chall: Any, domain: str, key_authorization: str) -> None:
        if self.config.acme_challenge == "http-01":
            self.http_tokens[chall.path] = key_authorization
        else:
            self.store.challenges[domain] = self._challenge_context(domain, key_authorization)

    def _clear_challenges(self, domains: list[str]) -> None:
        self.http_tokens.clear()
        for domain in domains:
            self.store.challenges.pop(domain, None)

    def _challenge_context(self, domain: str, key_authorization: str) -> ssl.SSLContext:
        """RFC 8737 section 3: a self-signed certificate for `domain` whose critical
        acmeIdentifier extension holds SHA-256 of the key authorization, served only
        with ALPN acme-tls/1."""
        digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
        cert, key = self_signed(
            domain,
            datetime.timedelta(days=7),
            [
                (x509.SubjectAlternativeName([x509.DNSName(domain)]), False),
                # The extension's value is the DER OCTET STRING of the digest.
                (x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), True),
            ],
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols([ACME_TLS_ALPN])
        # load_cert_chain reads files only: a private temporary file, removed at once.
        with tempfile.NamedTemporaryFile(dir=self.cache, suffix=".pem") as tmp:
            tmp.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                + cert.public_bytes(serialization.Encoding.PEM)
            )
            tmp.flush()
            ctx.load_cert_chain(tmp.name)
        return ctx

    # --- the TLS listener's hook ------------------------------------------------------

    async def choose_tls(
        self, sock: socket.socket
    ) -> tuple[ssl.SSLContext, Callable[[], asyncio.BaseProtocol] | None] | None:
        """Called by the listener for each new connection before TLS starts."""
        store = self.store
        if store.challenges:
            loop = asyncio.get_running_loop()
            server_name, alpn = parse_client_hello(await peek_client_hello(loop, sock))
            if alpn == [ACME_TLS_ALPN]:
                context = store.challenges.get((server_name or "").lower())
                if context is None:
                    return None  # a validation for a name we have no challenge for
                return context, _ChallengeConnection
        if not self.ready.is_set():
            # No certificate yet: hold the client until there is one (the listener's
            # handshake timeout bounds the wait).
            await self.ready.wait()
        return store.base, None

    # --- http-01 and the redirect ---------------------------------------------------

    async def _listen_http(self, bind: str) -> asyncio.AbstractServer:
        from multiplex.errors import StartupError

        where = parse_bind(bind)
        try:
            return await asyncio.start_server(self._http_connection, where.host, where.port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from None

    async def _http_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            OSError,
            asyncio.TimeoutError,  # before 3.11 not the builtin TimeoutError
        ):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) == 3 else "/"
        host = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "host":
                host = value.strip()
        key_authorization = self.http_tokens.get(target)
        if key_authorization is not None:
            body = key_authorization.encode("ascii")
            status = "200 OK"
            extra = "content-type: application/octet-stream\r\n"
        else:
            hostname = re.sub(r":\d+$", "", host) or self.domains[0]
            if not _HOST.match(hostname):
                hostname = self.domains[0]
            port = "" if self.https_port == 443 else f":{self.https_port}"
            path = target if target.startswith("/") else "/"
            body = b""
            status = "308 Permanent Redirect"
            extra = f"location: https://{hostname}{port}{path}\r\n"
        writer.write(
            f"HTTP/1.1 {status}\r\n{extra}content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode("latin-1")
            + body
        )
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()


_HOST = re.compile(r"^[A-Za-z0-9.-]+$|^\[[0-9A-Fa-f:.]+\]$")


class _ChallengeConnection(asyncio.Protocol):
    """A tls-alpn-01 validation: the handshake showed the certificate; nothing more."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _register_tls_alpn01() -> None:
    """Teach the acme library tls-alpn-01 again: its 5.x releases dropped the type (with
    its pyOpenSSL certificate helper), so a CA's tls-alpn-01 challenge would parse as
    unrecognized. Only the key authorization and the `{}` answer are needed; the
    certificate is made here with `cryptography`."""
    from acme import challenges

    if "tls-alpn-01" in challenges.Challenge.TYPES:
        return

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = "tls-alpn-01"

        def validation(self, account_key: Any, **kwargs: Any) -> Any:
            return None  # the certificate is built by AcmeManager._challenge_context


# --- peeking at the ClientHello ----------------------------------------------------------


async def peek_client_hello(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first TLS record, read with MSG_PEEK so TLS still gets every byte."""
    need = 5
    while True:
        await _readable(loop, sock)
        try:
            data = sock.recv(need, socket.MSG_PEEK)
        except BlockingIOError:
            continue
        if not data:
            raise ConnectionResetError("closed before the ClientHello")
        if len(data) >= 5:
            if data[0] != TLS_HANDSHAKE:
                return data  # not TLS: the handshake will fail on its own
            need = min(5 + int.from_bytes(data[3:5], "big"), MAX_RECORD)
        if len(data) >= need:
            return data
        # Part of the record is here: the socket stays readable, so wait a moment for
        # the rest rather than spinning (large ClientHellos span two TCP segments).
        await asyncio.sleep(0.002)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await future
    finally:
        loop.remove_reader(fd)


def parse_client_hello(record: bytes) -> tuple[str | None, list[str]]:
    """(SNI host name, ALPN protocols) from a TLS record holding a ClientHello; what
    cannot be parsed counts as absent."""
    server_name: str | None = None
    alpn: list[str] = []
    try:
        if record[0] != TLS_HANDSHAKE or record[5] != CLIENT_HELLO:
            return None, []
        end = min(len(record), 9 + int.from_bytes(record[6:9], "big"))
        pos = 9 + 2 + 32  # handshake header, client_version, random
        pos += 1 + record[pos]  # session id
        pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
        pos += 1 + record[pos]  # compression methods
        ext_end = min(end, pos + 2 + int.from_bytes(record[pos : pos + 2], "big"))
        pos += 2
        while pos + 4 <= ext_end:
            kind = int.from_bytes(record[pos : pos + 2], "big")
            size = int.from_bytes(record[pos + 2 : pos + 4], "big")
            body = record[pos + 4 : pos + 4 + size]
            pos += 4 + size
            if kind == 0 and len(body) >= 5 and body[2] == 0:  # server_name, host_name
                length = int.from_bytes(body[3:5], "big")
                server_name = body[5 : 5 + length].decode("ascii", "replace")
            elif kind == 16:  # application_layer_protocol_negotiation
                at = 2
                while at < len(body):
                    length = body[at]
                    alpn.append(body[at + 1 : at + 1 + length].decode("ascii", "replace"))
                    at += 1 + length
    except IndexError:
        pass
    return server_name, alpn


# --- helpers -----------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write by rename, mode 0600 from the start: keys are never world-readable, and a
    reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _slug(text: str) -> str:
    parts = urlsplit(text)
    if parts.netloc:
        text = parts.netloc + parts.path
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "acme"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(when: datetime.datetime) -> str:
    return when.isoformat(timespec="seconds")


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    value: datetime.datetime | None = getattr(cert, "not_valid_after_utc", None)
    if value is None:
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value


def _describe_ari(exc: BaseException) -> str:
    """acme's ARIError is (message, retry time) with the CA's answer as its cause:
    say the message and the cause."""
    from acme import errors

    if not isinstance(exc, errors.ARIError) or not exc.args:
        return _describe(exc)
    cause = exc.__cause__
    if cause is None:
        return _describe(Exception(exc.args[0]))
    # A bare HTTP error arrives as ClientError(response), which prints as <Response [404]>.
    status = getattr(cause.args[0] if cause.args else None, "status_code", None)
    said = f"HTTP {status}" if isinstance(status, int) else _describe(cause)
    return _describe(Exception(f"{exc.args[0]}: {said}"))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."
