"""A local QUIC interop matrix: the runner's test cases against our endpoint, no Docker.

    python -m interop.matrix                  # every case
    python -m interop.matrix --quick          # the CI set
    python -m interop.matrix --cases retry,v2

For each test case and each client, starts `python -m interop.endpoint` with the
runner's environment (TESTCASE, WWW, CERTS, PORT, QLOGDIR, SSLKEYLOGFILE, LOGS) on a free
loopback port, with files of the runner's sizes and random content in WWW and
development certificates in CERTS, drives it with the client, stops it, and checks
what the runner would check: every file downloaded and byte-identical, and for retry,
v2, chacha20, keyupdate, resumption, zerortt and amplificationlimit the evidence from
the client's own account (aioquic's connection state, gtlsclient's log) or from the
server's qlog.

Clients: aioquic (interop/quicclient.py; HTTP/0.9 `hq-interop` as in the runner, `h3`
for http3; it can lose, corrupt and black out datagrams itself), `gtlsclient` (ngtcp2,
HTTP/3; `--tx-loss/--rx-loss`), and over TCP on the same port `nghttp` and
`curl --http2` (HTTP/2 over TLS) for the cases that mean something there. The
`websocket` case runs kosoku's Autobahn cases through interop/autobahn.py.

Prints the matrix (pass, FAIL, or skip with a numbered reason) and a last line
`N passed, M failed`; the exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import filecmp
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KB = 1 << 10
MB = 1 << 20

CLIENTS = ["aioquic", "gtlsclient", "nghttp", "curl", "kosoku"]
QUICK = [
    "handshake",
    "transfer",
    "http3",
    "multiplexing",
    "retry",
    "resumption",
    "chacha20",
    "keyupdate",
    "transferloss",
]
GTLS = "gtlsclient"
CHACHA20_SUITE = 0x1303


# --- results ------------------------------------------------------------------------------


@dataclass
class Result:
    status: str  # "pass", "fail", "skip"
    detail: str = ""


def passed(detail: str = "") -> Result:
    return Result("pass", detail)


def failed(detail: str) -> Result:
    return Result("fail", detail)


def skipped(reason: str) -> Result:
    return Result("skip", reason)


# --- test cases ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    server: str  # TESTCASE as the runner gives it to the server
    sizes: list[int]
    name_length: int = 10
    quick_sizes: list[int] | None = None  # smaller files for --quick, to keep CI short
    h2: bool = False  # meaningful over HTTP/2 too (nghttp, curl)


CASES: dict[str, Case] = {
    case.name: case
    for case in [
        Case("handshake", "handshake", [1 * KB], h2=True),
        Case(
            "transfer", "transfer", [2 * MB, 3 * MB, 5 * MB], quick_sizes=[1 * MB, 2 * MB], h2=True
        ),
        Case("longrtt", "handshake", [1 * KB]),
        Case("chacha20", "chacha20", [3 * MB], quick_sizes=[1 * MB], h2=True),
        Case("multiplexing", "transfer", [32] * 1999, quick_sizes=[32] * 500, h2=True),
        Case("retry", "retry", [10 * KB]),
        Case("resumption", "resumption", [5 * KB, 10 * KB]),
        Case("zerortt", "zerortt", [32] * 40, name_length=250),
        Case("http3", "http3", [5 * KB, 10 * KB, 500 * KB], h2=True),
        Case("multiconnect", "multiconnect", [1 * KB] * 50),
        Case("v2", "v2", [1 * KB]),
        Case("keyupdate", "transfer", [3 * MB], quick_sizes=[2 * MB]),
        Case("ecn", "ecn", [1 * KB]),
        Case("amplificationlimit", "transfer", [5 * KB]),
        Case("handshakeloss", "multiconnect", [1 * KB] * 50),
        # Big enough that the client's few outgoing packets (mostly ACKs) lose one too.
        Case("transferloss", "transfer", [2 * MB], quick_sizes=[2 * MB]),
        Case("handshakecorruption", "multiconnect", [1 * KB] * 50),
        Case("transfercorruption", "transfer", [2 * MB]),
        Case("blackhole", "transfer", [10 * MB]),
        Case("websocket", "", []),
    ]
}


# --- fixtures: files, certificates, ports -------------------------------------------------


def random_name(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def make_www(directory: Path, sizes: list[int], name_length: int, seed: int) -> list[str]:
    """Files of the given sizes with random names and content, as the runner makes them."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for size in sizes:
        name = random_name(rng, name_length)
        while name in names:
            name = random_name(rng, name_length)
        (directory / name).write_bytes(os.urandom(size))
        names.append(name)
    return names


def make_certs(directory: Path, chain_length: int = 1) -> Path:
    """CERTS for the endpoint (cert.pem, priv.key) and the CA that signed them (ca.pem).
    A chain of length 1 is multiplex's development certificate; a longer one (the
    amplificationlimit case uses 9, as the runner does) is leaf + intermediates + root,
    in RSA-3072 so that the chain is as large as the runner's (over 7500 bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    if chain_length <= 1:
        from multiplex import devcerts

        certs = devcerts.ensure(directory / "dev")
        shutil.copy(certs.cert, directory / "cert.pem")
        shutil.copy(certs.key, directory / "priv.key")
        shutil.copy(certs.ca_cert, directory / "ca.pem")
        return directory
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def issue(
        subject: str, issuer: x509.Name | None, signer: Any, ca: bool
    ) -> tuple[x509.Certificate, Any]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        return builder.sign(signer or key, hashes.SHA256()), key

    root, root_key = issue("interop root", None, None, True)
    chain = [root]
    issuer, issuer_key = root, root_key
    for n in range(chain_length - 2):
        cert, key = issue(f"interop intermediate {n + 1}", issuer.subject, issuer_key, True)
        chain.insert(0, cert)
        issuer, issuer_key = cert, key
    leaf, leaf_key = issue("localhost", issuer.subject, issuer_key, False)
    pem = serialization.Encoding.PEM
    (directory / "cert.pem").write_bytes(b"".join(c.public_bytes(pem) for c in [leaf, *chain]))
    (directory / "priv.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "ca.pem").write_bytes(root.public_bytes(pem))
    return directory


def free_port() -> int:
    """A loopback port free for both TCP and UDP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free loopback port")


def leaf_size(certs: Path) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = x509.load_pem_x509_certificates((certs / "cert.pem").read_bytes())[0]
    return len(leaf.public_bytes(Encoding.DER))


# --- the endpoint -------------------------------------------------------------------------


class EndpointUnsupported(Exception):
    pass


class Endpoint:
    """`python -m interop.endpoint` in a subprocess, for one client run."""

    def __init__(self, case: Case, www: Path, certs: Path, work: Path) -> None:
        self.port = free_port()
        self.qlog = work / "qlog"
        self.logs = work / "logs"
        self.keylog = work / "keys.log"
        self.env = {
            **os.environ,
            "ROLE": "server",
            "TESTCASE": case.server,
            "WWW": str(www),
            "CERTS": str(certs),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "QLOGDIR": str(self.qlog),
            "SSLKEYLOGFILE": str(self.keylog),
            "LOGS": str(self.logs),
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        self.output = work / "endpoint.out"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Endpoint:
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "interop.endpoint"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            code = self.process.poll()
            text = self.output.read_text(errors="replace")
            if code == 127:
                raise EndpointUnsupported(text.strip().splitlines()[-1] if text.strip() else "")
            if code is not None:
                raise RuntimeError(f"endpoint exited {code}: {text[-1000:]}")
            if "interop endpoint ready" in text:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("endpoint did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, lines: int = 15) -> str:
        text = self.output.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def qlog_traces(self) -> list[list[dict[str, Any]]]:
        """The server's qlog, one event list per connection (written as they close)."""
        traces = []
        for path in sorted(self.qlog.glob("*.qlog")):
            with contextlib.suppress(ValueError, OSError):
                for trace in json.loads(path.read_text()).get("traces", []):
                    traces.append(trace.get("events", []))
        return traces


# --- what the runner checks --------------------------------------------------------------


@dataclass
class Run:
    """One client against one endpoint: where things are."""

    case: Case
    endpoint: Endpoint
    www: Path
    files: list[str]
    certs: Path
    downloads: Path
    quick: bool
    log: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def ca(self) -> str:
        return str(self.certs / "ca.pem")


def check_files(run: Run, names: list[str] | None = None, where: Path | None = None) -> str | None:
    """None if every file arrived byte-identical, else what is wrong."""
    where = where or run.downloads
    for name in names if names is not None else run.files:
        got = where / name
        if not got.is_file():
            return f"missing {name[:20]}"
        want = run.www / name
        if got.stat().st_size != want.stat().st_size:
            return f"{name[:20]}: {got.stat().st_size} bytes, want {want.stat().st_size}"
        if not filecmp.cmp(want, got, shallow=False):
            return f"{name[:20]}: content differs"
    return None


def server_zero_rtt_packets(traces: list[list[dict[str, Any]]]) -> int:
    """0-RTT packets the server decrypted (without 0-RTT keys they are dropped)."""
    return sum(
        event.get("name") == "transport:packet_received"
        and event["data"]["header"].get("packet_type") == "0RTT"
        for events in traces
        for event in events
    )


def amplification_check(traces: list[list[dict[str, Any]]]) -> str | None:
    """The server kept to 3x what it received before the client's address was validated
    (its first Handshake packet), and sent a large Handshake flight (the chain)."""
    if not traces:
        return "no server qlog"
    for events in traces:
        allowed = sent = 0
        crypto_end = 0
        validated = False
        for event in events:
            name, data = event.get("name"), event.get("data", {})
            if name == "transport:packet_received":
                if data.get("header", {}).get("packet_type") == "handshake":
                    validated = True
            elif name == "transport:packet_sent" and data["header"]["packet_type"] == "handshake":
                for frame in data.get("frames", []):
                    if frame.get("frame_type") == "crypto":
                        crypto_end = max(crypto_end, frame["offset"] + frame["length"])
            if validated:
                continue
            if name == "transport:datagrams_received":
                allowed += 3 * sum(raw["length"] for raw in data.get("raw", []))
            elif name == "transport:datagrams_sent":
                sent += sum(raw["length"] for raw in data.get("raw", []))
                if sent > allowed:
                    return f"sent {sent} bytes before validation, limit {allowed}"
        if crypto_end < 7500:
            return f"only {crypto_end} bytes of Handshake CRYPTO: the chain was not sent?"
    return None


# --- aioquic -------------------------------------------------------------------------------


def aioquic_client(run: Run) -> Result:
    from aioquic.quic.packet import QuicProtocolVersion
    from aioquic.tls import CipherSuite

    from interop.quicclient import Evidence, Network, Options, download

    case = run.case.name
    alpn = "h3" if case == "http3" else "hq-interop"
    paths = [f"/{name}" for name in run.files]

    def options(**kw: Any) -> Options:
        return Options(alpn=alpn, **kw)

    def fetch(paths: list[str], opts: Options, where: Path | None = None) -> Evidence:
        coro = download("127.0.0.1", run.port, paths, where or run.downloads, opts, run.ca)
        return asyncio.run(asyncio.wait_for(coro, opts.timeout + 15))

    def errors(evidence: Evidence) -> str | None:
        if evidence.errors:
            return "; ".join(evidence.errors)[:200]
        return check_files(run)

    if case == "ecn":
        return skipped("aioquic has no ECN")
    if case in ("handshake", "longrtt", "transfer", "http3", "multiplexing", "blackhole"):
        opts = options()
        if case == "transfer":
            opts = options(max_data=256 * KB, max_stream_data=64 * KB)  # windows must grow
        if case == "blackhole":
            opts = options(network=Network(blackout_after=0.2, blackout_for=2.0))
        evidence = fetch(paths, opts)
        problem = errors(evidence)
        if problem is None and evidence.retry_count:
            problem = "unexpected Retry"
        if problem is None and case == "blackhole" and not evidence.dropped:
            problem = "the blackout dropped nothing (transfer too quick?)"
        detail = f"{evidence.dropped} datagrams blacked out" if case == "blackhole" else ""
        return failed(problem) if problem else passed(detail)
    if case in ("transferloss", "transfercorruption"):
        if case == "transferloss":
            network = Network(rx_loss=0.02, tx_loss=0.02)
        else:
            network = Network(corrupt=0.02)
        evidence = fetch(paths, options(network=network))
        problem = errors(evidence)
        if problem is None and not (evidence.dropped or evidence.corrupted):
            problem = "the simulated network did nothing"
        return failed(problem) if problem else passed()
    if case == "chacha20":
        suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
        evidence = fetch(paths, options(cipher_suites=suites))
        problem = errors(evidence)
        if problem is None and evidence.cipher_suite != CHACHA20_SUITE:
            problem = f"cipher suite {evidence.cipher_suite}"
        return failed(problem) if problem else passed()
    if case == "retry":
        evidence = fetch(paths, options())
        problem = errors(evidence)
        if problem is None and evidence.retry_count != 1:
            problem = f"{evidence.retry_count} Retry packets, want 1"
        return failed(problem) if problem else passed()
    if case == "v2":
        v1, v2 = QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2
        # Start in v1 and offer v2 in version_information, as the runner's clients do.
        evidence = fetch(paths, options(versions=[v2, v1], original_version=v1))
        problem = errors(evidence)
        if problem is None and evidence.version != v2:
            problem = f"version {evidence.version:#x}, want v2"
        return failed(problem) if problem else passed()
    if case == "keyupdate":
        evidence = fetch(paths, options(key_update_after=256 * KB))
        problem = errors(evidence)
        if problem is None and not (evidence.key_phase_sent and evidence.key_phase_received):
            problem = (
                f"key phase sent {evidence.key_phase_sent}, received "
                f"{evidence.key_phase_received}: the server did not follow the update"
            )
        return failed(problem) if problem else passed()
    if case in ("resumption", "zerortt"):
        first = fetch(paths[:1], options())
        if first.errors or not first.tickets:
            return failed("; ".join(first.errors) or "no session ticket")
        early = case == "zerortt"
        second = fetch(paths[1:], options(session_ticket=first.tickets[-1], early_data=early))
        problem = errors(second)
        if problem is None and (first.session_resumed or not second.session_resumed):
            problem = f"resumed: first {first.session_resumed}, second {second.session_resumed}"
        if (
            problem is None
            and early
            and not (second.zero_rtt_packets and second.early_data_accepted)
        ):
            problem = (
                f"{second.zero_rtt_packets} 0-RTT packets, accepted: {second.early_data_accepted}"
            )
        detail = ""
        if problem is None and early:
            run.endpoint.stop()  # the server writes its qlog as connections close
            accepted = server_zero_rtt_packets(run.endpoint.qlog_traces())
            if not accepted:
                problem = "the server decrypted no 0-RTT packet"
            detail = f"sent {second.zero_rtt_packets} 0-RTT packets; the server read {accepted}"
        return failed(problem) if problem else passed(detail)
    if case in ("multiconnect", "handshakeloss", "handshakecorruption"):

        def network_for(n: int) -> Network:
            if case == "handshakeloss":
                return Network(rx_loss=0.3, tx_loss=0.3, seed=n)
            if case == "handshakecorruption":
                return Network(corrupt=0.3, seed=n)
            return Network()

        async def all_of_them() -> list[Evidence]:
            # One connection per file, ten at a time.
            gate = asyncio.Semaphore(10)

            async def one(n: int, path: str) -> Evidence:
                async with gate:
                    opts = options(network=network_for(n), timeout=120)
                    return await download(
                        "127.0.0.1", run.port, [path], run.downloads, opts, run.ca
                    )

            return list(await asyncio.gather(*(one(n, p) for n, p in enumerate(paths))))

        evidences = asyncio.run(asyncio.wait_for(all_of_them(), 280))
        bad = [e for e in evidences if e.errors]
        problem = (
            f"{len(bad)} of {len(paths)} connections failed: {bad[0].errors[0][:120]}"
            if bad
            else None
        )
        problem = problem or check_files(run)
        return failed(problem) if problem else passed(f"{len(evidences)} connections")
    if case == "amplificationlimit":
        # The runner drops the client's 2nd to 7th datagrams: the server must wait for
        # more from the client before it sends more of its large certificate chain.
        evidence = fetch(paths, options(network=Network(tx_drop=[2, 3, 4, 5, 6, 7])))
        problem = errors(evidence)
        run.endpoint.stop()  # the server writes its qlog as connections close
        problem = problem or amplification_check(run.endpoint.qlog_traces())
        return failed(problem) if problem else passed()
    return skipped("not a case for this client")


# --- gtlsclient ----------------------------------------------------------------------------


def gtls(
    run: Run, paths: list[str], *options: str, timeout: float = 120, idle: str = "10s"
) -> subprocess.CompletedProcess[str]:
    urls = [f"https://localhost:{run.port}/{p}" for p in paths]
    command = [
        GTLS,
        "--exit-on-all-streams-close",
        "--no-quic-dump",
        "--no-http-dump",
        f"--timeout={idle}",
        f"--download={run.downloads}",
        *options,
        "127.0.0.1",
        str(run.port),
        *urls,
    ]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, errors="replace"
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return subprocess.CompletedProcess(command, -9, "", out + f"\n(timed out after {timeout}s)")


def handshake_crypto_received(log: str) -> int:
    return sum(int(n) for n in re.findall(r"frm rx \d+ Handshake CRYPTO\(0x06\) .*len=(\d+)", log))


def gtlsclient_client(run: Run) -> Result:
    if shutil.which(GTLS) is None:
        return skipped("gtlsclient not installed (Debian ngtcp2-client)")
    case = run.case.name
    files = run.files
    if case == "v2":
        return skipped(
            "Debian's ngtcp2 0.12 speaks only the QUIC v2 draft (0x709a50c4), not RFC 9369"
        )
    if case in ("handshakecorruption", "transfercorruption", "blackhole"):
        return skipped("gtlsclient can only drop packets, not corrupt or black out")
    if case == "ecn":
        return skipped("aioquic has no ECN")

    def outcome(
        result: subprocess.CompletedProcess[str], names: list[str] | None = None
    ) -> str | None:
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or [""]
            return f"exit {result.returncode}: {tail[0][:150]}"
        return check_files(run, names)

    if case in ("multiconnect", "handshakeloss"):
        loss = ["--tx-loss=0.3", "--rx-loss=0.3"] if case == "handshakeloss" else []
        problems: list[str] = []

        def one(name: str) -> None:
            # Under 30 % loss each way a handshake can need many PTO rounds (1, 2, 4, 8 s
            # ...): an idle timeout of 10 s gives up after four.
            result = gtls(run, [name], *loss, "-q", timeout=150, idle="120s" if loss else "10s")
            problem = outcome(result, [name])
            if problem:
                problems.append(problem)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(one, files))
        if problems:
            return failed(f"{len(problems)} of {len(files)} connections failed: {problems[0]}")
        return passed(f"{len(files)} connections")
    if case in ("resumption", "zerortt"):
        state = [
            f"--session-file={run.downloads / '.session'}",
            f"--tp-file={run.downloads / '.tp'}",
        ]
        extra = ["--disable-early-data"] if case == "resumption" else []
        first = gtls(run, files[:1], *state, *extra)
        problem = outcome(first, files[:1])
        if problem:
            return failed(f"first connection: {problem}")
        second = gtls(run, files[1:], *state, *extra)
        problem = outcome(second)
        if problem:
            return failed(f"second connection: {problem}")
        if case == "resumption":
            size = leaf_size(run.certs)
            got = handshake_crypto_received(first.stderr), handshake_crypto_received(second.stderr)
            if not (got[0] > size > got[1]):
                return failed(f"Handshake CRYPTO {got} bytes, certificate {size}: not resumed")
            return passed()
        early = set(
            re.findall(r"0RTT STREAM\(0x0b\) id=(0x[0-9a-f]+) fin=1 .*uni=0", second.stderr)
        )
        # As many requests as fit in the client's first flight go in 0-RTT; the runner
        # only bounds what follows in 1-RTT. Most of them, then.
        if len(early) * 2 < len(files) - 1:
            return failed(f"{len(early)} of {len(files) - 1} requests sent in 0-RTT")
        run.endpoint.stop()  # the server writes its qlog as connections close
        accepted = server_zero_rtt_packets(run.endpoint.qlog_traces())
        if not accepted:
            return failed("the server decrypted no 0-RTT packet")
        return passed(
            f"{len(early)} of {len(files) - 1} requests in 0-RTT; the server read {accepted}"
            " 0-RTT packets"
        )
    options: list[str] = []
    if case == "transfer":
        options = ["--max-data=256K", "--max-stream-data-bidi-local=64K", "-q"]
    elif case == "transferloss":
        # The client sends ~10x fewer packets than it receives: a higher rate makes
        # "no outgoing packet was lost" (a run that proves nothing) all but impossible.
        options = ["--tx-loss=0.05", "--rx-loss=0.02"]
    elif case == "chacha20":
        options = ["--ciphers=NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"]
    elif case == "keyupdate":
        options = ["--key-update=1ms"]
    elif case in ("http3", "multiplexing", "longrtt", "amplificationlimit"):
        options = ["-q"]
    result = gtls(run, files, *options)
    problem = outcome(result)
    log = result.stderr
    if problem is None and case == "handshake" and re.search(r"pkt rx .*type=Retry", log):
        problem = "unexpected Retry"
    if problem is None and case == "retry":
        if not re.search(r"pkt rx .*type=Retry", log) or "retry_source_connection_id=" not in log:
            problem = "no Retry seen"
    if (
        problem is None
        and case == "chacha20"
        and "Negotiated cipher suite is CHACHA20-POLY1305" not in log
    ):
        problem = "cipher suite is not ChaCha20"
    if problem is None and case == "keyupdate":
        if "Initiate key update" not in log or not re.search(r"pkt rx .* type=1RTT k=1", log):
            problem = "no packets from the server under the updated keys"
    if problem is None and case == "transferloss":
        if (
            "Simulated incoming packet loss" not in log
            or "Simulated outgoing packet loss" not in log
        ):
            problem = "no packet was lost"
    if problem is None and case == "amplificationlimit":
        run.endpoint.stop()
        problem = amplification_check(run.endpoint.qlog_traces())
    return failed(problem) if problem else passed()


# --- HTTP/2 over TLS: nghttp and curl ------------------------------------------------------


def h2_case(run: Run, tool: str) -> Result | None:
    """The reason the case does not apply over TCP, or None."""
    if shutil.which(tool) is None:
        return skipped(f"{tool} not installed")
    if not run.case.h2:
        return skipped("a QUIC-only case")
    return None


def _run(command: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, -9, "", f"timed out after {timeout}s")


def nghttp_client(run: Run) -> Result:
    """nghttp has no way to save each response to its own file (its -O is "not
    implemented yet" in 1.52), so bodies are checked from its standard output: small
    files (one DATA frame each, never interleaved) on one connection, split in the
    order of its completion statistics; larger ones with one nghttp per file."""
    reason = h2_case(run, "nghttp")
    if reason is not None:
        return reason
    if run.case.name == "chacha20":
        return skipped("nghttp has no option to choose TLS 1.3 cipher suites")
    base = f"https://localhost:{run.port}/"
    small = all((run.www / name).stat().st_size <= 16 * KB for name in run.files)
    batches = [run.files] if small else [[name] for name in run.files]
    for batch in batches:
        command = ["nghttp", "-y", "-s", *(base + name for name in batch)]
        try:
            result = subprocess.run(
                command, cwd=run.downloads, capture_output=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired:
            return failed("nghttp timed out")
        stats = result.stdout.rsplit(b"***** Statistics *****", 1)
        if result.returncode != 0 or len(stats) != 2:
            return failed(
                f"exit {result.returncode}: {result.stderr.decode(errors='replace')[-150:]}"
            )
        body, table = stats
        order = re.findall(rb"^\s*\d+\s+\S+\s+\S+\s+\S+\s+(\d+)\s+\S+\s+/(\S+)$", table, re.M)
        if len(order) != len(batch) or any(code != b"200" for code, _ in order):
            return failed(f"{len(order)} of {len(batch)} responses were 200")
        offset = 0
        for _, name in order:
            data = (run.www / name.decode()).read_bytes()
            if body[offset : offset + len(data)] != data:
                return failed(f"{name.decode()[:20]}: content differs")
            offset += len(data)
        if offset != len(body):
            return failed(f"{len(body) - offset} bytes more than the files")
    return passed("one connection" if small else "one connection per file")


def curl_client(run: Run) -> Result:
    reason = h2_case(run, "curl")
    if reason is not None:
        return reason
    config = run.downloads / ".curlrc"
    lines = [
        f'url = "https://localhost:{run.port}/{name}"\noutput = "{name}"' for name in run.files
    ]
    config.write_text("\n".join(lines) + "\n")
    command = [
        "curl",
        "--http2",
        "--cacert",
        run.ca,
        "--silent",
        "--show-error",
        "--fail",
        "--parallel",
        "--parallel-max",
        "50",
        "-w",
        "%{http_version}\\n",
        "-K",
        str(config),
    ]
    if run.case.name == "chacha20":
        command += ["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256", "-v"]
    result = _run(command, run.downloads)
    if result.returncode != 0:
        return failed(f"exit {result.returncode}: {result.stderr.strip()[-150:]}")
    versions = set(result.stdout.split())
    if versions != {"2"}:
        return failed(f"HTTP versions {sorted(versions)}, want 2")
    if run.case.name == "chacha20" and "TLS_CHACHA20_POLY1305_SHA256" not in result.stderr:
        return failed("cipher suite is not ChaCha20")
    problem = check_files(run)
    return failed(problem) if problem else passed()


# --- WebSockets: kosoku --------------------------------------------------------------------


def kosoku_client(run: Run) -> Result:
    if run.case.name != "websocket":
        return skipped("WebSocket client only")
    try:
        from interop.autobahn import EchoServer, kosoku_command, run_cases, verdict
    except ImportError:
        return skipped("interop/autobahn.py not present")
    kosoku = kosoku_command()
    if kosoku is None:
        return skipped("kosoku not installed (pip install kosoku)")
    # Sections 1-7 and 10 (framing, pings, reserved bits, opcodes, fragmentation, UTF-8,
    # close, misc); `interop/autobahn.sh` runs them all, 9, 12 and 13 included.
    excludes = ["9.*", "12.*", "13.*"]
    with EchoServer(ws_per_message_deflate=False) as server:
        cases = run_cases(kosoku, server.port, excludes, 4, run.downloads / "autobahn")
    bad = sorted(
        case
        for case, entry in cases.items()
        if verdict(entry) not in ("OK", "NON-STRICT", "INFORMATIONAL")
    )
    if not cases:
        return failed("kosoku reported no case")
    if bad:
        return failed(f"{len(bad)} of {len(cases)} Autobahn cases failed: {', '.join(bad[:5])}")
    return passed(f"{len(cases)} Autobahn cases")


DRIVERS: dict[str, Callable[[Run], Result]] = {
    "aioquic": aioquic_client,
    "gtlsclient": gtlsclient_client,
    "nghttp": nghttp_client,
    "curl": curl_client,
    "kosoku": kosoku_client,
}


# --- the matrix ----------------------------------------------------------------------------


def run_case(case: Case, work: Path, quick: bool, clients: list[str]) -> dict[str, Result]:
    results: dict[str, Result] = {}
    if case.name == "websocket":
        for client in clients:
            if client != "kosoku":
                results[client] = skipped("kosoku's case (Autobahn over HTTP/1.1)")
        if "kosoku" in clients:
            downloads = work / "kosoku"
            downloads.mkdir(parents=True)
            run = Run(case, None, work, [], work, downloads, quick)  # type: ignore[arg-type]
            results["kosoku"] = _guarded(kosoku_client, run)
        return results
    sizes = case.quick_sizes if quick and case.quick_sizes else case.sizes
    www = work / "www"
    files = make_www(www, sizes, case.name_length, seed=zlib.crc32(case.name.encode()))
    certs = make_certs(work / "certs", 9 if case.name == "amplificationlimit" else 1)
    for client in clients:
        if client == "kosoku":
            results[client] = skipped("WebSocket client only")
            continue
        pair = work / client
        downloads = pair / "downloads"
        downloads.mkdir(parents=True)
        endpoint = Endpoint(case, www, certs, pair)
        try:
            with endpoint:
                run = Run(case, endpoint, www, files, certs, downloads, quick)
                results[client] = _guarded(DRIVERS[client], run)
        except EndpointUnsupported as exc:
            results[client] = skipped(f"the endpoint does not support it (exit 127): {exc}")
        except RuntimeError as exc:
            results[client] = failed(f"endpoint: {exc}"[:300])
        if results[client].status == "fail" and endpoint.output.exists():
            tail = endpoint.log_tail(4).replace("\n", "\n        ")
            results[client].detail += f"\n      endpoint log ends:\n        {tail}"
    return results


def _guarded(driver: Callable[[Run], Result], run: Run) -> Result:
    try:
        return driver(run)
    except Exception as exc:  # a crash in a driver is a failed cell, not a dead matrix
        return failed(f"{type(exc).__name__}: {exc}"[:300])


def print_matrix(
    results: dict[str, dict[str, Result]], clients: list[str], out: Any = sys.stdout
) -> tuple[int, int]:
    reasons: list[str] = []
    width = max(len(name) for name in results) + 2
    print("case".ljust(width) + "".join(c.ljust(12) for c in clients), file=out)
    for case, row in results.items():
        cells = []
        for client in clients:
            result = row.get(client)
            if result is None:
                cells.append("-")
            elif result.status == "skip":
                if result.detail not in reasons:
                    reasons.append(result.detail)
                cells.append(f"skip[{reasons.index(result.detail) + 1}]")
            else:
                cells.append("pass" if result.status == "pass" else "FAIL")
        print(case.ljust(width) + "".join(c.ljust(12) for c in cells), file=out)
    if reasons:
        print("\nskipped:", file=out)
        for n, reason in enumerate(reasons, 1):
            print(f"  [{n}] {reason}", file=out)
    failures = [
        (case, client, result)
        for case, row in results.items()
        for client, result in row.items()
        if result.status == "fail"
    ]
    if failures:
        print("\nfailures:", file=out)
        for case, client, result in failures:
            print(f"  {case} / {client}: {result.detail}", file=out)
    notes = [
        (case, client, result.detail)
        for case, row in results.items()
        for client, result in row.items()
        if result.status == "pass" and result.detail
    ]
    if notes:
        print("\nnotes:", file=out)
        for case, client, detail in notes:
            print(f"  {case} / {client}: {detail}", file=out)
    n_passed = sum(r.status == "pass" for row in results.values() for r in row.values())
    return n_passed, len(failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI set: " + ", ".join(QUICK))
    parser.add_argument("--cases", help="comma-separated test cases (default: all)")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated clients (default: all)"
    )
    parser.add_argument("--keep", help="keep files, logs and qlogs under this directory")
    args = parser.parse_args(argv)
    if args.cases:
        names = [name.strip() for name in args.cases.split(",") if name.strip()]
    elif args.quick:
        names = list(QUICK)
    else:
        names = list(CASES)
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown test cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    clients = [name.strip() for name in args.clients.split(",") if name.strip()]
    if any(client not in DRIVERS for client in clients):
        parser.error(f"clients are: {', '.join(DRIVERS)}")
    results: dict[str, dict[str, Result]] = {}
    with tempfile.TemporaryDirectory(prefix="interop-matrix-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for name in names:
            started = time.monotonic()
            work = root / name
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            results[name] = run_case(CASES[name], work, args.quick, clients)
            summary = " ".join(f"{c}={r.status}" for c, r in results[name].items())
            print(
                f"# {name} ({time.monotonic() - started:.1f}s): {summary}",
                file=sys.stderr,
                flush=True,
            )
        n_passed, n_failed = print_matrix(results, clients)
    print(f"{n_passed} passed, {n_failed} failed")
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
