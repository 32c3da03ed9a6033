"""The QUIC interop runner server endpoint: multiplex serving a directory over QUIC.

    ROLE=server TESTCASE=transfer python -m interop.endpoint

The environment is the runner's contract (see interop/quic-interop-runner/):

- ROLE: `server` (a `client` role exits 127: multiplex is a server).
- TESTCASE: the test case as the runner names it for the server. Unsupported ones exit
  127, as the runner asks, so they show as "unsupported" rather than failed.
- WWW (default /www): the files to serve. CERTS (default /certs): `cert.pem` (the chain)
  and `priv.key`. PORT (default 443). HOST (default `::`, all addresses, IPv4 too).
- QLOGDIR: one qlog file per connection. SSLKEYLOGFILE: TLS secrets (NSS key log).
- LOGS (default /logs): `server.log`, the server's log (also on stderr).

Files go out over HTTP/0.9 (ALPN `hq-interop`, interop/hq.py) for most test cases, and
over multiplex's own HTTP/3 (ALPN `h3`) for `http3`; a connection gets whichever its
client offers. The same port serves TLS over TCP too (HTTP/2 and HTTP/1.1, the same
files), which the local matrix uses for nghttp and curl.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_UNSUPPORTED = 127

# What each test case asks of the server. The runner passes some cases under another
# name (multiplexing, keyupdate, blackhole, amplificationlimit and transferloss arrive
# as `transfer`; longrtt as `handshake`; handshakeloss as `multiconnect`); both
# spellings are accepted.
PLAIN: dict[str, Any] = {}
TESTCASES: dict[str, dict[str, Any]] = {
    "handshake": PLAIN,
    "transfer": PLAIN,
    "multiplexing": PLAIN,
    "longrtt": PLAIN,
    "chacha20": {"chacha20": True},
    "retry": {"quic_retry": True},
    "resumption": PLAIN,  # tickets are always issued
    "zerortt": {"quic_0rtt": True},
    "http3": PLAIN,
    "multiconnect": PLAIN,
    "v2": {"v2": True},
    "keyupdate": PLAIN,  # aioquic follows a client's key update
    "amplificationlimit": PLAIN,  # aioquic keeps to 3x before address validation
    "handshakeloss": PLAIN,
    "transferloss": PLAIN,
    "handshakecorruption": PLAIN,
    "transfercorruption": PLAIN,
    "blackhole": PLAIN,
    "goodput": PLAIN,
    "crosstraffic": PLAIN,
}
# Why the others are not supported, for the log.
UNSUPPORTED: dict[str, str] = {
    "ecn": "aioquic neither marks packets ECT(0)/ECT(1) nor sends ACK_ECN frames",
    "versionnegotiation": "disabled in the runner; Version Negotiation works (tested)",
    "connectionmigration": "aioquic servers cannot offer a preferred address",
}

ALPN = ["h3", "hq-interop"]
logger = logging.getLogger("interop.endpoint")


class Unsupported(Exception):
    """The role or test case is not ours: exit 127."""


def testcase_settings(testcase: str) -> dict[str, Any]:
    if testcase not in TESTCASES:
        why = UNSUPPORTED.get(testcase, "unknown test case")
        raise Unsupported(f"test case {testcase!r} is not supported: {why}")
    return dict(TESTCASES[testcase])


def build_config(env: Mapping[str, str]) -> tuple[Any, dict[str, Any]]:
    """multiplex's Config for this environment, and the endpoint-level extras (v2,
    chacha20) that Config has no setting for."""
    from multiplex.config import Config

    role = env.get("ROLE", "server")
    if role != "server":
        raise Unsupported(f"ROLE={role!r}: this endpoint is a server only")
    extras = testcase_settings(env.get("TESTCASE", ""))
    certs = Path(env.get("CERTS", "/certs"))
    host = env.get("HOST", "::")
    port = int(env.get("PORT", "443"))
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # A UDP socket on :: takes IPv4 too; asyncio makes TCP ones on :: IPv6-only.
    tcp = [where, f"0.0.0.0:{port}"] if host == "::" else [where]
    fields: dict[str, Any] = {
        "bind": tcp,
        "quic_bind": [where],
        "certfile": str(certs / "cert.pem"),
        "keyfile": str(certs / "priv.key"),
        "quic_alpn_protocols": list(ALPN),
        "lifespan": "off",
        "log_level": env.get("LOG_LEVEL", "info"),
        # The multiplexing case opens ~2000 streams; the runner wants an initial limit of
        # at most 1000, raised as streams finish (aioquic does).
        "quic_max_streams": 100,
        "graceful_timeout": 5.0,
    }
    if env.get("QLOGDIR"):
        fields["quic_qlog_dir"] = env["QLOGDIR"]
    if env.get("SSLKEYLOGFILE"):
        fields["keylog_file"] = env["SSLKEYLOGFILE"]
    for key in ("quic_retry", "quic_0rtt"):
        if extras.pop(key, False):
            fields[key] = True
    return Config(**fields), extras


def tune_endpoints(server: Any, extras: dict[str, Any], www: Path) -> None:
    """What Config has no setting for, applied to the QUIC endpoints before any client
    arrives: hq-interop beside HTTP/3, QUIC versions, cipher suites."""
    from aioquic.quic.packet import QuicProtocolVersion
    from aioquic.tls import CipherSuite

    from interop.hq import AlpnSwitch

    for endpoint in server.quic_endpoints:
        endpoint._protocol_class = functools.partial(AlpnSwitch, www=www)
        configuration = endpoint.configuration
        if extras.get("v2"):
            # Compatible version negotiation (RFC 9368): a v1 Initial that lists v2 in
            # its version_information is answered in v2.
            configuration.supported_versions = [
                QuicProtocolVersion.VERSION_1,
                QuicProtocolVersion.VERSION_2,
            ]
        else:
            # The runner expects v1 in every other case, even from a client offering v2.
            configuration.supported_versions = [QuicProtocolVersion.VERSION_1]
        if extras.get("chacha20"):
            configuration.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]


def setup_logging(logs: Path | None, level: str) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logs is not None:
        with contextlib.suppress(OSError):
            logs.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(logs / "server.log"))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )


async def serve(config: Any, extras: dict[str, Any], www: Path) -> None:
    from interop.static_app import StaticFiles
    from multiplex.server import Server

    server = Server(config, StaticFiles(www))
    await server.start()
    tune_endpoints(server, extras, www)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, server.should_exit.set)
    logger.info("interop endpoint ready: TESTCASE=%s, serving %s", os.environ.get("TESTCASE"), www)
    await server.serve()


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        config, extras = build_config(env)
    except Unsupported as exc:
        print(f"interop endpoint: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    logs = env.get("LOGS", "/logs")
    setup_logging(Path(logs) if logs else None, config.log_level)
    www = Path(env.get("WWW", "/www"))
    from multiplex.errors import ConfigError, StartupError

    try:
        asyncio.run(serve(config, extras, www))
    except (ConfigError, StartupError) as exc:
        print(f"interop endpoint: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
