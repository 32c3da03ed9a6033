"""An interop download client on aioquic: HTTP/0.9 (`hq-interop`) or HTTP/3 (`h3`).

`download(host, port, paths, directory, options)` opens one QUIC connection, requests
every path concurrently, writes each body to `directory/<name>` as it arrives, and
returns the `Evidence` the local matrix checks: the QUIC version, Retry, cipher suite,
resumption, 0-RTT, key phases, and what the simulated network did. The network can be
made worse on the client's side (drop or corrupt datagrams each way, or black out for a
while), which is how the matrix plays the runner's loss and corruption scenarios.
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.logger import QuicLogger
from aioquic.tls import CipherSuite, Epoch, SessionTicket


@dataclass
class Network:
    """What the client's side of the path does to datagrams."""

    rx_loss: float = 0.0
    tx_loss: float = 0.0
    corrupt: float = 0.0  # flip one byte in this share of datagrams, each way
    blackout_after: float | None = None  # seconds after the handshake...
    blackout_for: float = 0.0  # ...during which nothing passes either way
    tx_drop: list[int] = field(default_factory=list)  # drop these outgoing datagrams (1 = first)
    seed: int = 7


@dataclass
class Options:
    alpn: str = "hq-interop"
    server_name: str = "localhost"
    versions: list[int] | None = None
    original_version: int | None = None
    cipher_suites: list[CipherSuite] | None = None
    session_ticket: SessionTicket | None = None
    early_data: bool = False  # send the requests before the handshake completes (0-RTT)
    key_update_after: int | None = None  # request a key update after this many bytes
    max_data: int | None = None
    max_stream_data: int | None = None
    network: Network = field(default_factory=Network)
    timeout: float = 60.0


@dataclass
class Evidence:
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes written
    errors: list[str] = field(default_factory=list)
    version: int | None = None
    retry_count: int = 0
    cipher_suite: int | None = None
    session_resumed: bool = False
    early_data_accepted: bool = False
    zero_rtt_packets: int = 0  # 0-RTT packets the client sent
    key_phase_sent: int = 0
    key_phase_received: int = 0
    dropped: int = 0
    corrupted: int = 0
    tickets: list[SessionTicket] = field(default_factory=list)


class _Download:
    def __init__(self, path: str, target: Path) -> None:
        self.path = path
        self.target = target
        self.file: IO[bytes] = target.open("wb")
        self.size = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def finish(self, error: str | None = None) -> None:
        if not self.file.closed:
            self.file.close()
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(RuntimeError(f"{self.path}: {error}"))


class _LossyTransport:
    """Stands between aioquic and the socket: loses, corrupts or blacks out datagrams."""

    def __init__(self, inner: Any, client: InteropClient) -> None:
        self.inner = inner
        self.client = client

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.client.sent += 1
        if self.client.sent in self.client.network.tx_drop:
            self.client.dropped += 1
            return
        data_or_none = self.client.impair(data, self.client.network.tx_loss)
        if data_or_none is not None:
            self.inner.sendto(data_or_none, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class InteropClient(QuicConnectionProtocol):
    def __init__(self, *args: Any, options: Options, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic) if options.alpn == "h3" else None
        self.downloads: dict[int, _Download] = {}
        self.network = options.network
        self.random = random.Random(options.network.seed)
        self.sent = 0
        self.dropped = 0
        self.corrupted = 0
        self.received = 0
        self.key_update_after = options.key_update_after
        self.handshake_at: float | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._transport = _LossyTransport(transport, self)  # type: ignore[assignment]

    # --- the simulated network -------------------------------------------------------

    def _blacked_out(self) -> bool:
        network = self.network
        if network.blackout_after is None or self.handshake_at is None:
            return False
        elapsed = self._loop.time() - self.handshake_at - network.blackout_after
        return 0 <= elapsed < network.blackout_for

    def impair(self, data: bytes, loss: float) -> bytes | None:
        if self._blacked_out() or (loss and self.random.random() < loss):
            self.dropped += 1
            return None
        if self.network.corrupt and self.random.random() < self.network.corrupt:
            self.corrupted += 1
            damaged = bytearray(data)
            damaged[self.random.randrange(len(damaged))] ^= 0xFF
            return bytes(damaged)
        return data

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        raw = data.encode() if isinstance(data, str) else data
        impaired = self.impair(raw, self.network.rx_loss)
        if impaired is not None:
            super().datagram_received(impaired, addr)

    # --- requests --------------------------------------------------------------------

    def get(self, path: str, target: Path) -> _Download:
        stream_id = self._quic.get_next_available_stream_id()
        download = self.downloads[stream_id] = _Download(path, target)
        if self.h3 is not None:
            headers = [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", (self._quic.configuration.server_name or "localhost").encode()),
                (b":path", path.encode()),
            ]
            self.h3.send_headers(stream_id, headers, end_stream=True)
        else:
            self._quic.send_stream_data(stream_id, f"GET {path}\r\n".encode(), end_stream=True)
        self.transmit()
        return download

    def quic_event_received(self, event: quic_events.QuicEvent) -> None:
        if isinstance(event, quic_events.HandshakeCompleted):
            self.handshake_at = self._loop.time()
        elif isinstance(event, quic_events.ConnectionTerminated):
            for each in self.downloads.values():
                each.finish(f"connection closed: {event.reason_phrase or event.error_code}")
            return
        elif isinstance(event, quic_events.StreamReset):
            reset = self.downloads.get(event.stream_id)
            if reset is not None:
                reset.finish(f"stream reset with error {event.error_code}")
            return
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
        elif isinstance(event, quic_events.StreamDataReceived):
            self._body(event.stream_id, event.data, event.end_stream)

    def _h3_event(self, event: Any) -> None:
        download = self.downloads.get(getattr(event, "stream_id", -1))
        if download is None:
            return
        if isinstance(event, HeadersReceived):
            status = dict(event.headers).get(b":status", b"")
            if not status.startswith(b"1") and status != b"200":
                download.finish(f"status {status.decode()}")
                return
            if event.stream_ended:
                self._body(event.stream_id, b"", True)
        elif isinstance(event, DataReceived):
            self._body(event.stream_id, event.data, event.stream_ended)

    def _body(self, stream_id: int, data: bytes, end: bool) -> None:
        download = self.downloads.get(stream_id)
        if download is None:
            return
        if data:
            download.write(data)
            self.received += len(data)
            if self.key_update_after is not None and self.received >= self.key_update_after:
                self.key_update_after = None
                self.request_key_update()
        if end:
            download.finish()


def configuration(options: Options, ca_file: str | None = None) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True, alpn_protocols=[options.alpn], server_name=options.server_name
    )
    if ca_file is not None:
        config.load_verify_locations(ca_file)
    else:
        config.verify_mode = ssl.CERT_NONE
    if options.versions is not None:
        config.supported_versions = list(options.versions)
    if options.original_version is not None:
        config.original_version = options.original_version
    if options.cipher_suites is not None:
        config.cipher_suites = list(options.cipher_suites)
    if options.session_ticket is not None:
        config.session_ticket = options.session_ticket
    if options.max_data is not None:
        config.max_data = options.max_data
    if options.max_stream_data is not None:
        config.max_stream_data = options.max_stream_data
    config.quic_logger = QuicLogger()
    return config


def _zero_rtt_packets(config: QuicConfiguration) -> int:
    logger = config.quic_logger
    if not isinstance(logger, QuicLogger):
        return 0
    count = 0
    for trace in logger.to_dict()["traces"]:
        for event in trace["events"]:
            if event["name"] == "transport:packet_sent":
                count += event["data"]["header"]["packet_type"] == "0RTT"
    return count


async def download(
    host: str,
    port: int,
    paths: list[str],
    directory: Path,
    options: Options,
    ca_file: str | None = None,
) -> Evidence:
    """Download `paths` over one connection into `directory`; never raises for a
    failed transfer (the errors are in the evidence)."""
    evidence = Evidence()
    config = configuration(options, ca_file)
    directory.mkdir(parents=True, exist_ok=True)
    manager = connect(
        host,
        port,
        configuration=config,
        create_protocol=functools.partial(InteropClient, options=options),
        session_ticket_handler=evidence.tickets.append,
        wait_connected=not options.early_data,
    )
    try:
        client = await asyncio.wait_for(manager.__aenter__(), options.timeout)
    except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
        evidence.errors.append(f"connect: {type(exc).__name__}: {exc}")
        return evidence
    assert isinstance(client, InteropClient)
    try:
        downloads = [client.get(path, directory / Path(path).name) for path in paths]
        if options.early_data:
            await asyncio.wait_for(client.wait_connected(), options.timeout)
        results = await asyncio.wait_for(
            asyncio.gather(*(d.done for d in downloads), return_exceptions=True),
            options.timeout,
        )
        for result in results:
            if isinstance(result, BaseException):
                evidence.errors.append(str(result))
        for d in downloads:
            evidence.files[d.target.name] = d.size
        quic = client._quic
        evidence.version = quic._version
        evidence.retry_count = int(quic._retry_count)
        schedule = quic.tls.key_schedule
        evidence.cipher_suite = int(schedule.cipher_suite) if schedule is not None else None
        evidence.session_resumed = bool(quic.tls.session_resumed)
        evidence.early_data_accepted = bool(quic.tls.early_data_accepted)
        one_rtt = quic._cryptos[Epoch.ONE_RTT]
        evidence.key_phase_sent = int(one_rtt.send.key_phase)
        evidence.key_phase_received = int(one_rtt.recv.key_phase)
        evidence.dropped = client.dropped
        evidence.corrupted = client.corrupted
    except asyncio.TimeoutError:
        evidence.errors.append(f"timed out after {options.timeout}s")
    except (ConnectionError, OSError, RuntimeError) as exc:
        evidence.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        for d in client.downloads.values():
            d.finish("abandoned")
            if not d.done.cancelled():
                d.done.exception()  # retrieved: asyncio would warn about it otherwise
        try:
            await asyncio.wait_for(manager.__aexit__(None, None, None), 10)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass
    evidence.zero_rtt_packets = _zero_rtt_packets(config)
    return evidence
