"""The one place every setting and limit of multiplex lives.

Each field carries its default and a one-line help text in its metadata. The CLI
flags, the TOML file (``--config``) and the ``MULTIPLEX_*`` environment variables all
produce a :class:`Config`; the table in README.md is generated from these fields
(``python -m multiplex.config``), and a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _list(help: str, **extra: Any) -> Any:
    return field(default_factory=list, metadata={"help": help, **extra})


KiB = 1024
MiB = 1024 * KiB


@dataclass
class Config:
    # --- what to serve -----------------------------------------------------------
    app: str | None = _opt(None, "The ASGI app as `module:attribute`.", positional=True)
    factory: bool = _opt(False, "Treat the app as a factory: call it with no arguments.")
    app_dir: str = _opt(".", "Directory put first on sys.path before importing the app.")
    lifespan: str = _opt(
        "auto",
        "Lifespan protocol: `auto` (use it if the app supports it), `on` (required), `off`.",
        choices=("auto", "on", "off"),
    )
    root_path: str = _opt("", "ASGI root_path: the prefix the app is mounted under.")
    interface: str = _opt(
        "auto",
        "What the app is: `auto` (detect: a callable taking `(environ, start_response)` is"
        " WSGI, one taking `(scope)` is ASGI 2, anything else ASGI 3), `asgi3`, `asgi2`, `wsgi`.",
        choices=("auto", "asgi3", "asgi2", "wsgi"),
    )
    wsgi_threads: int = _opt(
        10,
        "WSGI: threads running the app; a request holds one from the app's call until its"
        " response is sent, and further requests wait for a free one.",
    )

    # --- behind a load balancer or proxy --------------------------------------------------
    proxy_headers: bool = _opt(
        False,
        "Take the client address and scheme from `Forwarded` (or else `X-Forwarded-For` and"
        " `X-Forwarded-Proto`) on connections from `forwarded_allow_ips`.",
    )
    forwarded_allow_ips: list[str] = field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        metadata={
            "help": "Proxies trusted with `proxy_headers`, repeatable: IP addresses, CIDR"
            " networks, or `*` for every peer. Unix-socket peers are always trusted.",
            "repeat": True,
        },
    )
    proxy_protocol: bool = _opt(
        False,
        "Every connection on the TCP and unix binds starts with a PROXY protocol v1 or v2"
        " header (HAProxy `send-proxy`, `send-proxy-v2`) naming the client; connections"
        " without a valid one are closed.",
    )
    proxy_protocol_timeout: float = _opt(
        10.0, "Longest the PROXY protocol header of a new connection may take to arrive."
    )

    # --- where to listen ---------------------------------------------------------
    bind: list[str] = _list(
        "Address to listen on, repeatable: `host:port`, `[::]:port`, `unix:PATH`, `fd://N`."
        " Default 127.0.0.1:8000.",
        repeat=True,
    )
    backlog: int = _opt(2048, "Listen backlog of each TCP or unix socket.")
    max_connections: int = _opt(
        10000,
        "Open connections (TCP and QUIC together) one worker serves; beyond, new TCP"
        " connections are reset at once and new QUIC connections refused"
        " (CONNECTION_REFUSED).",
    )

    # --- TLS ---------------------------------------------------------------------
    certfile: str | None = _opt(None, "PEM certificate chain; enables TLS on every bind.")
    keyfile: str | None = _opt(None, "PEM private key for `certfile`.")
    ca_certs: str | None = _opt(None, "PEM CA bundle used to verify client certificates.")
    verify_client: bool = _opt(False, "Require a client certificate signed by `ca_certs`.")
    alpn_protocols: list[str] = field(
        default_factory=lambda: ["h2", "http/1.1"],
        metadata={"help": "ALPN protocols offered on TLS, in order of preference.", "repeat": True},
    )
    h2c: bool = _opt(
        False,
        "Cleartext HTTP/2 on non-TLS binds, by prior knowledge and by `Upgrade: h2c`.",
    )
    keylog_file: str | None = _opt(
        None, "Write TLS secrets here (NSS key log format), for Wireshark."
    )
    sni_certs_dir: str | None = _opt(
        None,
        "More certificates, chosen by SNI: a directory of `NAME.crt` + `NAME.key` pairs"
        " or certbot-style `NAME/fullchain.pem` + `NAME/privkey.pem`. Each serves the DNS"
        " names in its subjectAltName (wildcards too); unknown names get `certfile`.",
    )
    cert_reload_interval: float = _opt(
        5.0,
        "Seconds between looks at the certificate files' modification times; a change"
        " reloads them for new handshakes (so does SIGHUP). 0: only on SIGHUP.",
    )

    # --- automatic HTTPS (ACME) ------------------------------------------------------
    acme_domain: list[str] = _list(
        "Get and renew a certificate for this name from an ACME CA, repeatable (one"
        " certificate for all); enables TLS. Needs the `acme` extra.",
        repeat=True,
    )
    acme_email: str | None = _opt(None, "Contact address for the ACME account.")
    acme_directory: str = _opt(
        "letsencrypt",
        "ACME directory URL, or `letsencrypt` / `letsencrypt-staging`.",
    )
    acme_ca_certs: str | None = _opt(
        None, "PEM CA bundle to trust for the ACME server's own HTTPS (a private CA)."
    )
    acme_challenge: str = _opt(
        "tls-alpn-01",
        "How to prove control of the names: `tls-alpn-01` (answered on the TLS binds,"
        " which must be reachable on port 443) or `http-01` (on `acme_http_bind`).",
        choices=("tls-alpn-01", "http-01"),
    )
    acme_http_bind: str | None = _opt(
        None,
        "A cleartext `host:port` answering http-01 challenges and redirecting every"
        " other request to https (308). Required for `http-01`.",
    )
    acme_cache: str = _opt(
        "certs/acme",
        "Directory for the ACME account key, certificates and keys (files mode 0600).",
    )
    acme_retry_delay: float = _opt(
        60.0,
        "First wait before retrying a failed ACME order; doubles on each failure up to"
        " `acme_retry_max_delay`.",
    )
    acme_retry_max_delay: float = _opt(
        6 * 3600.0, "Longest wait between retries of a failed ACME order."
    )
    acme_ari_min_interval: float = _opt(
        60.0,
        "Shortest wait between two requests for a certificate's ACME Renewal Information"
        " (RFC 9773): a shorter Retry-After from the CA counts as this. A failed request"
        " is retried after this, doubling up to `acme_ari_max_interval`.",
    )
    acme_ari_max_interval: float = _opt(
        86400.0,
        "Longest wait between requests for a certificate's renewal information: a longer"
        " Retry-After counts as this, so a window the CA moves is seen at least this often.",
    )

    # --- process -----------------------------------------------------------------
    loop: str = _opt(
        "auto",
        "Event loop: `auto` (uvloop when installed), `asyncio`, `uvloop`.",
        choices=("auto", "asyncio", "uvloop"),
    )
    log_level: str = _opt(
        "info",
        "Log level of the `multiplex` loggers.",
        choices=("critical", "error", "warning", "info", "debug"),
    )
    access_log: bool = _opt(True, "Log one line per request to the `multiplex.access` logger.")
    server_header: str = _opt("multiplex", "Value of the `server` response header; empty to omit.")
    date_header: bool = _opt(True, "Add a `date` header to responses that lack one.")
    gc_young_threshold: int = _opt(
        20_000,
        "Net new container objects that start a collection of the garbage collector's"
        " youngest generation (CPython's default: 700), set by the serving process. Every"
        " request's objects die by reference counting; the collections CPython's 700"
        " starts under many concurrent streams only walk the streams of the current loop"
        " turn (about 17 objects each) and find nothing. 0 turns automatic collection off.",
    )

    # --- HTTP/2 and HTTP/3: priorities and push -----------------------------------------
    priorities: bool = _opt(
        True,
        "Send response data in RFC 9218 priority order (the client's `priority` header and"
        " PRIORITY_UPDATE frames, or the app's override); off: every response shares the"
        " default priority and streams send in stream order.",
    )
    push: bool = _opt(
        True,
        "Offer server push (`http.response.push`) on HTTP/2 and HTTP/3 connections whose"
        " client accepts pushes.",
    )
    max_pushes_per_request: int = _opt(
        16, "Most pushes one request's app may start; later `http.response.push` are dropped."
    )

    workers: int = _opt(
        1,
        "Worker processes. Above 1, a supervisor runs them on the same ports"
        " (SO_REUSEPORT), restarts one that dies, reloads them gracefully on SIGHUP and"
        " stops them all on SIGTERM.",
    )
    reload: bool = _opt(
        False,
        "Development: restart the server when a .py file under `app_dir` (or"
        " `reload_dirs`) changes.",
    )
    reload_dirs: list[str] = _list("Extra directories `reload` watches.", repeat=True)

    # --- timeouts (seconds) --------------------------------------------------------
    graceful_timeout: float = _opt(
        30.0, "On SIGTERM/SIGINT, how long in-flight requests may run before they are cancelled."
    )
    graceful_first_request_wait: float = _opt(
        1.0,
        "On SIGTERM/SIGINT (and so on a workers' reload), how long an HTTP/1.1 connection"
        " accepted just before, without its first request yet, may take to send it (it"
        " is served, with `connection: close`); 0 closes it at once.",
    )
    tls_handshake_timeout: float = _opt(10.0, "Longest a TLS handshake may take.")
    keep_alive_timeout: float = _opt(
        5.0, "An idle HTTP/1.1 connection (no request in progress) is closed after this."
    )
    h2_idle_timeout: float = _opt(
        300.0, "An HTTP/2 connection with no open stream for this long gets a GOAWAY and is closed."
    )
    lifespan_timeout: float = _opt(60.0, "Longest lifespan startup or shutdown may take.")
    body_timeout: float = _opt(
        60.0,
        "HTTP/1.1: a request body that stops arriving for this long while the server reads"
        " it closes the connection (the app sees `http.disconnect`).",
    )
    send_stall_timeout: float = _opt(
        60.0,
        "A response that has waited this long for the peer to read is dropped: an HTTP/2"
        " stream whose flow-control window stays at zero gets RST_STREAM CANCEL, a"
        " connection whose transport buffer stays above `write_buffer_high` is closed.",
    )
    http1_header_timeout: float = _opt(
        10.0,
        "HTTP/1.1: the request line and headers must arrive within this many seconds of"
        " the request's first byte (slowloris); 408 and close beyond.",
    )

    # --- buffers -------------------------------------------------------------------
    write_buffer_high: int = _opt(
        64 * KiB,
        "Bytes queued in a connection's transport before `send()` waits (backpressure).",
    )
    read_buffer_high: int = _opt(
        64 * KiB,
        "HTTP/1.1: request body bytes buffered for an app that is not reading, or"
        " pipelined requests waiting their turn, before the server stops reading the socket.",
    )

    max_body_size: int = _opt(
        1024 * MiB,
        "Largest request body, every protocol: a larger `content-length` gets 413 before"
        " the app runs; a body that grows past it mid-stream gets 413 (or a reset, if the"
        " response started) and the app sees http.disconnect.",
    )

    # --- HTTP/1.1 limits -------------------------------------------------------------
    http1_max_head_size: int = _opt(
        16 * KiB, "HTTP/1.1: longest request line plus headers, in bytes (431 beyond)."
    )
    http1_max_header_count: int = _opt(
        100,
        "HTTP/1.1: most header fields in one request (431 and close beyond); many tiny"
        " fields cost more per byte than a few long ones.",
    )

    # --- HTTP/2 limits and settings -----------------------------------------------------
    h2_max_concurrent_streams: int = _opt(
        100, "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: streams a client may have open at once."
    )
    h2_initial_window_size: int = _opt(
        256 * KiB,
        "HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE: request body bytes a stream may have in flight"
        " before the app reads them.",
    )
    h2_connection_window_size: int = _opt(
        1 * MiB, "HTTP/2 connection-level receive window (all streams together)."
    )
    h2_max_frame_size: int = _opt(
        16 * KiB, "HTTP/2 SETTINGS_MAX_FRAME_SIZE: largest frame payload we accept."
    )
    h2_max_header_list_size: int = _opt(
        64 * KiB, "HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE: largest decoded header list we accept."
    )
    h2_max_hpack_table_size: int = _opt(
        4 * KiB,
        "HTTP/2: largest HPACK dynamic table we keep to compress responses, whatever"
        " SETTINGS_HEADER_TABLE_SIZE the client offers (one offering 4 GiB would have us"
        " remember every response field sent on the connection).",
    )
    h2_max_header_block_size: int = _opt(
        128 * KiB,
        "HTTP/2: largest encoded header block (HEADERS plus its CONTINUATION frames);"
        " GOAWAY ENHANCE_YOUR_CALM beyond (CVE-2024-27316).",
    )
    h2_max_continuation_frames: int = _opt(
        32,
        "HTTP/2: CONTINUATION frames one header block may span;"
        " GOAWAY ENHANCE_YOUR_CALM beyond (CVE-2024-27316).",
    )
    h2_max_closed_streams: int = _opt(
        1024,
        "HTTP/2: finished streams a connection remembers (how each ended), to ignore"
        " frames still in flight after a reset and to tell a stream error from a"
        " connection error; older ones are forgotten. h2's own 65,536 cost a long-lived"
        " connection about 7.5 MiB.",
    )
    h2_rate_window: float = _opt(
        10.0, "HTTP/2: length in seconds of the window the `h2_max_*_per_window` limits count in."
    )
    h2_max_resets_per_window: int = _opt(
        200,
        "HTTP/2: stream resets per window, by the client (RST_STREAM, Rapid Reset"
        " CVE-2023-44487) or provoked from the server: by invalid frames or frames on"
        " finished streams (MadeYouReset CVE-2025-8671, reset flood CVE-2019-9514), by"
        " streams refused after a GOAWAY; GOAWAY ENHANCE_YOUR_CALM beyond.",
    )
    h2_max_control_frames_per_window: int = _opt(
        500,
        "HTTP/2: PING and SETTINGS frames (which we must acknowledge), RFC 7540 PRIORITY"
        " and PRIORITY_UPDATE frames, per window; GOAWAY ENHANCE_YOUR_CALM beyond"
        " (CVE-2019-9512, CVE-2019-9515, CVE-2019-9513).",
    )
    h2_max_tiny_frames_per_window: int = _opt(
        1000,
        "HTTP/2: DATA frames under 128 bytes that a peer's tiny flow-control window forced"
        " on us, per window; GOAWAY ENHANCE_YOUR_CALM beyond (data dribble, CVE-2019-9511).",
    )
    h2_max_empty_frames_per_window: int = _opt(
        500,
        "HTTP/2: DATA frames without payload or END_STREAM per window;"
        " GOAWAY ENHANCE_YOUR_CALM beyond (CVE-2019-9518).",
    )

    # --- HTTP/3 over QUIC -------------------------------------------------------------
    quic_bind: list[str] = _list(
        "UDP address for HTTP/3, repeatable (`host:port`, `[::]:port`); needs `certfile`."
        " TCP responses then advertise it with `alt-svc`.",
        repeat=True,
    )
    quic_retry: bool = _opt(
        False, "QUIC: validate client addresses with a Retry round trip before any work."
    )
    quic_retry_threshold: int = _opt(
        100,
        "QUIC: with this many connections still in their handshake, new clients must pass"
        " a Retry first (address validation under load, even without `quic_retry`).",
    )
    quic_alpn_protocols: list[str] = field(
        default_factory=lambda: ["h3"],
        metadata={"help": "ALPN protocols offered on QUIC.", "repeat": True},
    )
    quic_0rtt: bool = _opt(
        False,
        "QUIC: accept 0-RTT early data from resuming clients. Early requests carry"
        " `early-data: 1`; methods outside `quic_0rtt_methods` get 425 Too Early.",
    )
    quic_0rtt_methods: list[str] = field(
        default_factory=lambda: ["GET", "HEAD", "OPTIONS"],
        metadata={
            "help": "Methods served from 0-RTT early data (replayable: keep them idempotent).",
            "repeat": True,
        },
    )
    quic_idle_timeout: float = _opt(60.0, "QUIC: close a connection idle for this long.")
    quic_handshake_timeout: float = _opt(
        10.0, "QUIC: forget a connection whose handshake has not completed in this long."
    )
    quic_max_streams: int = _opt(
        100,
        "HTTP/3: request streams a client may have open at once (QUIC MAX_STREAMS). A"
        " stream's slot comes back when its app is done, not when the client resets it,"
        " so this also bounds the app tasks of a connection.",
    )
    quic_max_data: int = _opt(
        1 * MiB, "QUIC: request body bytes all streams of a connection may have unread."
    )
    quic_max_stream_data: int = _opt(
        256 * KiB, "QUIC: request body bytes one stream may have in flight before the app reads."
    )
    webtransport: bool = _opt(
        False,
        "HTTP/3: accept WebTransport sessions (extended CONNECT `:protocol webtransport`)"
        " and HTTP datagrams; announces SETTINGS_ENABLE_WEBTRANSPORT, H3_DATAGRAM and the"
        " max_datagram_frame_size transport parameter.",
    )
    webtransport_max_sessions: int = _opt(
        4, "WebTransport: sessions one HTTP/3 connection may have open at once."
    )
    webtransport_max_streams: int = _opt(
        100, "WebTransport: streams the client may have open in one session; more are refused."
    )
    webtransport_max_datagrams: int = _opt(
        128,
        "WebTransport: datagrams waiting for the app (per session) or for the wire (per"
        " connection); beyond, they are dropped and counted (datagrams are unreliable).",
    )
    quic_rate_window: float = _opt(
        10.0, "QUIC: length in seconds of the window `quic_max_resets_per_window` counts in."
    )
    quic_max_resets_per_window: int = _opt(
        200,
        "QUIC: request streams the client may reset (RESET_STREAM or STOP_SENDING) per"
        " window; the connection is closed with H3_EXCESSIVE_LOAD beyond (Rapid Reset).",
    )
    quic_max_field_section_size: int = _opt(
        64 * KiB,
        "HTTP/3 SETTINGS_MAX_FIELD_SECTION_SIZE: largest decoded request header list"
        " (RFC 9114 sizes: name + value + 32 per field); 431 beyond. A QPACK block that"
        " could decode to over 16 times this closes the connection (H3_EXCESSIVE_LOAD)"
        " without being decoded.",
    )
    quic_qpack_max_table_capacity: int = _opt(
        4 * KiB,
        "HTTP/3 SETTINGS_QPACK_MAX_TABLE_CAPACITY: bytes of QPACK dynamic table a client"
        " may fill on each connection (0: static table only).",
    )
    quic_qpack_blocked_streams: int = _opt(
        16,
        "HTTP/3 SETTINGS_QPACK_BLOCKED_STREAMS: streams whose headers may wait for QPACK"
        " encoder instructions at once; more close the connection"
        " (QPACK_DECOMPRESSION_FAILED).",
    )
    quic_send_ahead: int = _opt(
        64 * KiB,
        "QUIC: response bytes handed to the QUIC stack ahead of what it has sent, all"
        " streams together; the rest waits in the priority scheduler, so an urgent"
        " response overtakes queued ones after at most this much.",
    )
    quic_send_buffer: int = _opt(
        256 * KiB,
        "QUIC: response bytes a stream may have unacknowledged before `send()` waits"
        " (aioquic would buffer without limit).",
    )
    quic_qlog_dir: str | None = _opt(None, "QUIC: write one qlog file per connection here.")
    quic_congestion_control: str = _opt(
        "reno", "QUIC congestion control algorithm.", choices=("reno", "cubic")
    )

    # --- WebSocket (every protocol) ---------------------------------------------------
    ws_max_message_size: int = _opt(
        16 * MiB, "WebSocket: largest incoming message, in bytes (close 1009 beyond)."
    )
    ws_max_pending_pongs: int = _opt(
        32,
        "WebSocket: pongs waiting for a peer that pings faster than it reads; the oldest"
        " are dropped beyond (RFC 6455 5.5.3 asks only for the latest).",
    )
    ws_max_queue: int = _opt(
        32,
        "WebSocket: incoming messages queued for an app that is not reading before the"
        " server stops giving flow-control credit (backpressure).",
    )
    ws_ping_interval: float = _opt(
        20.0, "WebSocket: send a ping after this many seconds; 0 turns pings off."
    )
    ws_ping_timeout: float = _opt(
        20.0, "WebSocket: close (1011) when a ping gets no pong within this many seconds."
    )
    ws_close_timeout: float = _opt(
        10.0, "WebSocket: longest wait for the peer's close frame before dropping the stream."
    )
    ws_per_message_deflate: bool = _opt(
        True, "WebSocket: accept permessage-deflate compression when the client offers it."
    )

    def __post_init__(self) -> None:
        if not self.bind:
            self.bind = ["127.0.0.1:8000"]

    @property
    def tls(self) -> bool:
        return self.certfile is not None or self.sni_certs_dir is not None or bool(self.acme_domain)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# Settings that were renamed, old name -> new name. The old names still work from the
# TOML file, the environment, the CLI and `load_config`, with a warning, so that a
# deployment's config keeps meaning the same thing across an upgrade. (The `h11_` names
# date from when h11 parsed HTTP/1.1; llhttp does now, and the limits are ours.)
RENAMED: dict[str, str] = {
    "h11_header_timeout": "http1_header_timeout",
    "h11_max_incomplete_event_size": "http1_max_head_size",
    "h11_max_header_count": "http1_max_header_count",
}


def fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Config))


def _shown(default: Any) -> str:
    """A default as a user would write it in TOML, or a word for 'nothing'."""
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, list):
        return f"`{', '.join(default)}`" if default else "(none)"
    if default == "":
        return "(empty)"
    return f"`{default}`"


def markdown_table() -> str:
    """The config table for README.md: one row per setting."""
    rows = [
        "| setting (TOML key) | CLI flag | environment | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    defaults = Config(bind=["127.0.0.1:8000"])
    for f in fields():
        flag = f.name if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
        env = "MULTIPLEX_" + f.name.upper()
        rows.append(
            f"| `{f.name}` | `{flag}` | `{env}` | {_shown(getattr(defaults, f.name))}"
            f" | {f.metadata['help']} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(markdown_table() + "\n")
