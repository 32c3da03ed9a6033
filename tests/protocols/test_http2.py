"""HTTP/2 behaviour with real clients: httpx, curl, nghttp and a raw h2 client."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import h2.errors
import httpx
import pytest
from hyperframe.frame import HeadersFrame

from multiplex.errors import ClientDisconnected
from multiplex.protocols.http2 import H2Protocol
from tests import apps
from tests.conftest import RunningServer, client_socket, require_tool
from tests.protocols.h2raw import GOAWAY, RawH2, request_headers
from tests.protocols.rawh2 import H2Client

RunServer = Callable[..., RunningServer]
Scope = dict[str, Any]


@pytest.fixture
def curl() -> str:
    return require_tool("curl")


@pytest.fixture
def nghttp() -> str:
    return require_tool("nghttp")


# Skip when the client is missing, fail instead under MULTIPLEX_REQUIRE_TOOLS=1.
needs_curl = pytest.mark.usefixtures("curl")
needs_nghttp = pytest.mark.usefixtures("nghttp")


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def router(routes: dict[str, Any], default: Any = apps.hello) -> Any:
    """Dispatch on the first path segment."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        prefix = "/" + scope["path"].split("/")[1]
        await routes.get(prefix, default)(scope, receive, send)

    return app


def wait_for(running: RunningServer, check: Callable[[], bool]) -> None:
    """Poll the server loop until `check()` holds there (bounded, not a timing assertion)."""
    done = threading.Event()
    for _ in range(500):
        if running.call(check):
            return
        done.wait(0.01)
    raise AssertionError("the server never reached the expected state")


# --- clients -----------------------------------------------------------------------------


def test_httpx_h2_over_tls(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    running = run_server(apps.hello, **tls_config)
    with httpx.Client(
        http2=True, verify=ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    ) as client:
        response = client.get(running.url + "/")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.text == "hello 2"


def test_httpx_h2c_prior_knowledge(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    with httpx.Client(http1=False, http2=True) as client:
        first = client.get(running.url + "/")
        second = client.get(running.url + "/again")
    assert first.http_version == "HTTP/2"
    assert first.text == second.text == "hello 2"


@needs_curl
def test_curl_h2_over_tls(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    running = run_server(apps.hello, **tls_config)
    result = run(
        ["curl", "-sS", "--http2", "--cacert", str(dev_certs.ca_cert), "-w", "|%{http_version}",
         running.url + "/"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello 2|2"


@needs_curl
def test_curl_h2c_prior_knowledge(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    result = run(["curl", "-sS", "--http2-prior-knowledge", "-w", "|%{http_version}", running.url])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello 2|2"


@needs_curl
def test_curl_h2c_upgrade(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    result = run(["curl", "-sS", "-v", "--http2", running.url + "/"])
    assert result.returncode == 0, result.stderr
    assert "101 Switching Protocols" in result.stderr
    assert result.stdout == "hello 2"


@needs_nghttp
def test_nghttp_over_tls(run_server: RunServer, tls_config: dict[str, Any]) -> None:
    running = run_server(apps.hello, **tls_config)
    result = run(["nghttp", "-v", "-t", "20", f"https://localhost:{running.port}/"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The negotiated protocol: h2" in result.stdout
    assert ":status: 200" in result.stdout
    assert "hello 2" in result.stdout


@needs_nghttp
def test_nghttp_h2c(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    result = run(["nghttp", "-t", "20", running.url + "/"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "hello 2"


# --- concurrency and flow control ------------------------------------------------------


def test_hundred_concurrent_streams_one_waits(run_server: RunServer) -> None:
    # A raw client: httpx (httpcore 1.0.9) can starve a finished stream behind another
    # request that holds its connection's read lock while waiting for a slow stream.
    gate = apps.Gate()
    running = run_server(gate, h2c=True)
    with H2Client(running.port) as client:
        waiting_id = client.request("/wait")
        ids = [client.request(f"/n{i}") for i in range(99)]
        assert client.conn.open_outbound_streams == 100
        client.until(lambda: all(client.responses[i].done for i in ids))
        assert [bytes(client.responses[i].body) for i in ids] == [
            f"/n{i}".encode() for i in range(99)
        ]
        assert all(client.responses[i].status == 200 for i in ids)
        waiting = client.responses[waiting_id]
        assert not waiting.done
        assert running.call(lambda: list(gate.completed)) == [f"/n{i}" for i in range(99)]
        gate.release(running.loop)
        client.until(lambda: waiting.done)
        assert waiting.ended
        assert waiting.status == 200
        assert waiting.body == b"/wait"
        assert client.get("/after").body == b"/after"  # same connection, still usable
    assert gate.completed[99] == "/wait"


def test_big_response_through_small_window(run_server: RunServer) -> None:
    size = 10 * 1024 * 1024
    running = run_server(apps.big, h2c=True)
    with H2Client(running.port, window=65535) as client:
        response = client.get(f"/big?{size}")
        largest = max(len(e.data) for e in client.events if isinstance(e, h2.events.DataReceived))
    assert response.status == 200
    assert response.ended
    assert len(response.body) == size
    assert response.body == apps.pattern(size)
    assert largest <= 65535


_DOWNLOAD_SIZE = 1024 * 1024 + 123
# Irregular sends, some smaller than a frame, some many frames long, some not bytes.
_DOWNLOAD_STEPS = [1, 100, 16384, 16385, 65536, 200_000, 7, 300_000]


def _download_body(seed: int) -> bytes:
    """Bytes that repeat nowhere, so a frame out of place or lost shows."""
    return random.Random(seed).randbytes(_DOWNLOAD_SIZE)


async def _download(scope: Scope, receive: Any, send: Any) -> None:
    body = _download_body(int(scope["path"].rsplit("/", 1)[1]))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    offset = 0
    turn = 0
    while offset < len(body):
        step = _DOWNLOAD_STEPS[turn % len(_DOWNLOAD_STEPS)]
        chunk: bytes | bytearray | memoryview = body[offset : offset + step]
        if turn % 3 == 1:
            chunk = bytearray(chunk)
        elif turn % 3 == 2:
            chunk = memoryview(chunk)
        offset += step
        turn += 1
        await send({"type": "http.response.body", "body": chunk, "more_body": offset < len(body)})


def _h2_socket(running: RunningServer, tls: bool) -> socket.socket:
    """A connection to the server, TLS with ALPN h2 or cleartext for h2c."""
    return client_socket(running.port, "h2" if tls else None)


@pytest.mark.parametrize("window", [65535, 2**30])
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_concurrent_downloads_arrive_whole_and_in_order(
    run_server: RunServer, tls_config: dict[str, Any], tls: bool, window: int
) -> None:
    """Four bodies at once, in irregular sends, with PINGs in between: every stream's
    bytes arrive complete and in order, whether the windows make the server queue
    (small window) or frame straight away (large), whether TLS joins the frames or
    cleartext writes them as they are."""
    running = run_server(_download, **(tls_config if tls else {"h2c": True}))
    sock = _h2_socket(running, tls)
    with H2Client(running.port, sock=sock, window=window) as client:
        if window > 65535:
            client.conn.increment_flow_control_window(window - 65535)
        ids = {
            client.request(f"/dl/{seed}", scheme="https" if tls else "http"): seed
            for seed in range(4)
        }
        for _ in range(3):
            client.conn.ping(b"12345678")
            client.flush()
            client.pump()
        client.until(lambda: all(client.responses[i].done for i in ids))
        for stream_id, seed in ids.items():
            response = client.responses[stream_id]
            assert response.status == 200 and response.ended
            assert bytes(response.body) == _download_body(seed)


def _data_frames(running: RunningServer, tls: bool, path: str) -> list[tuple[bytes, bool]]:
    """The DATA frames of one response as a client with wide-open windows sees them."""
    sock = _h2_socket(running, tls)
    with H2Client(running.port, sock=sock, window=2**30) as client:
        client.conn.increment_flow_control_window(2**30)
        response = client.get(path, scheme="https" if tls else "http")
        assert response.status == 200
        return [
            (bytes(e.data), e.stream_ended is not None)
            for e in client.events
            if isinstance(e, h2.events.DataReceived)
        ]


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_data_framing_is_the_same_as_h2s(
    run_server: RunServer, tls_config: dict[str, Any], tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Differential: the DATA frames we frame ourselves (in batches, as views of the
    body) are frame for frame those h2's send_data makes when our road is off."""
    running = run_server(_download, **(tls_config if tls else {"h2c": True}))
    ours = _data_frames(running, tls, "/dl/5")
    monkeypatch.setattr(H2Protocol, "_frame_data", lambda self, *args: False)
    theirs = _data_frames(running, tls, "/dl/5")
    assert len(ours) > _DOWNLOAD_SIZE // 16384
    assert max(len(data) for data, _ in ours) == 16384  # the client's SETTINGS_MAX_FRAME_SIZE
    assert ours == theirs
    assert b"".join(data for data, _ in ours) == _download_body(5)
    assert [end for _, end in ours] == [False] * (len(ours) - 1) + [True]


@needs_curl
def test_curl_download_over_tls(run_server: RunServer, tls_config: dict[str, Any]) -> None:
    running = run_server(_download, **tls_config)
    url = f"https://localhost:{running.port}/dl/7"
    result = subprocess.run(
        ["curl", "-sk", "--http2", url], capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(_download_body(7)).digest()


def test_large_upload_memory_bounded(run_server: RunServer) -> None:
    size = 50 * 1024 * 1024
    window = 256 * 1024
    running = run_server(apps.sha256_upload, h2c=True, h2_initial_window_size=window)
    data = apps.pattern(size)
    state = running.server.state

    def buffered() -> int:
        total = 0
        for conn in list(state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                total += transport.get_write_buffer_size()
            for stream in getattr(conn, "streams", {}).values():
                total += sum(len(c) for c in stream.chunks or ())
        return total

    samples: list[int] = []
    with H2Client(running.port) as client:
        stream_id = client.request("/upload", method="POST", end=False)
        conn = client.conn
        offset = 0
        while offset < size:
            room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if room <= 0:
                samples.append(running.call(buffered))
                client.pump()  # wait for WINDOW_UPDATE
                continue
            chunk = data[offset : offset + room]
            offset += len(chunk)
            conn.send_data(stream_id, chunk, end_stream=offset >= size)
            client.flush()
            if offset % (1024 * 1024) < room:
                samples.append(running.call(buffered))
        response = client.responses[stream_id]
        client.until(lambda: response.done)
    assert response.status == 200
    assert bytes(response.body) == f"{hashlib.sha256(data).hexdigest()} {size}".encode()
    assert len(samples) > 50
    assert max(samples) < window + 64 * 1024


# --- resets and failures -----------------------------------------------------------------


def test_client_reset_mid_response(run_server: RunServer) -> None:
    streamer = apps.Streamer()
    running = run_server(router({"/stream": streamer}), h2c=True)
    with H2Client(running.port) as client:
        stream_id = client.request("/stream")
        streaming = client.responses[stream_id]
        client.until(lambda: len(streaming.body) >= 8192)
        client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        wait_for(running, lambda: streamer.saw_disconnect)
        after = client.get("/after")
        assert after.status == 200
        assert after.body == b"hello 2"
    assert isinstance(streamer.send_raised, ClientDisconnected)  # an OSError, per ASGI
    assert streamer.saw_disconnect


def test_app_failure_before_start_gives_500_connection_goes_on(run_server: RunServer) -> None:
    gate = apps.Gate()
    running = run_server(router({"/fail": apps.fail_before_start, "/wait": gate}), h2c=True)
    with H2Client(running.port) as client:
        waiting_id = client.request("/wait")
        failed = client.get("/fail")
        assert failed.status == 500
        assert failed.ended
        assert not client.responses[waiting_id].done
        gate.release(running.loop)
        waiting = client.responses[waiting_id]
        client.until(lambda: waiting.done)
        assert waiting.status == 200
        assert waiting.body == b"/wait"
        assert client.get("/next").body == b"hello 2"


def test_app_failure_after_start_resets_that_stream_only(run_server: RunServer) -> None:
    gate = apps.Gate()
    running = run_server(router({"/fail": apps.fail_after_start, "/wait": gate}), h2c=True)
    with H2Client(running.port) as client:
        waiting_id = client.request("/wait")
        failed = client.get("/fail")
        assert failed.status == 200
        assert failed.reset_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        assert not failed.ended
        gate.release(running.loop)
        waiting = client.responses[waiting_id]
        client.until(lambda: waiting.done)
        assert waiting.ended
        assert waiting.body == b"/wait"
        assert client.get("/next").body == b"hello 2"
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events)


def test_head_has_length_but_no_data(run_server: RunServer) -> None:
    running = run_server(apps.hello, h2c=True)
    with H2Client(running.port) as client:
        response = client.get("/", method="HEAD")
        data_frames = [
            e
            for e in client.events
            if isinstance(e, h2.events.DataReceived) and e.data and e.stream_id == 1
        ]
    assert response.status == 200
    assert response.ended
    assert dict(response.headers)[b"content-length"] == b"7"  # len(b"hello 2")
    assert response.body == b""
    assert data_frames == []


# --- scope ---------------------------------------------------------------------------------


def test_scope_over_tls(run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any) -> None:
    scopes: list[Scope] = []

    async def capture(scope: Scope, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await apps.echo_scope(scope, receive, send)

    running = run_server(capture, root_path="/api", **tls_config)
    with httpx.Client(
        http2=True, verify=ssl.create_default_context(cafile=str(dev_certs.ca_cert))
    ) as client:
        response = client.post(
            running.url + "/a%20b/c?x=1&y=%20",
            content=b"12345",
            headers=[("X-Mixed-Case", "v"), ("Cookie", "a=1"), ("Cookie", "b=2")],
        )
    assert response.status_code == 200
    assert response.json()["body_length"] == 5
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "2"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "https"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b/c"
    assert scope["raw_path"] == b"/api/a%20b/c"
    assert scope["query_string"] == b"x=1&y=%20"
    headers = scope["headers"]
    assert all(type(n) is bytes and type(v) is bytes for n, v in headers)
    assert all(n == n.lower() and not n.startswith(b":") for n, _ in headers)
    assert (b"host", f"127.0.0.1:{running.port}".encode()) in headers
    assert (b"x-mixed-case", b"v") in headers
    assert [v for n, v in headers if n == b"cookie"] == [b"a=1; b=2"]
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert tuple(scope["server"]) == ("127.0.0.1", running.port)
    assert isinstance(scope["state"], dict)
    assert "tls" in scope["extensions"]


def test_scope_h2c_has_no_tls_extension(run_server: RunServer) -> None:
    running = run_server(apps.echo_scope, h2c=True)
    with H2Client(running.port) as client:
        response = client.get(
            "/p?q", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"cookie", b"c=3")]
        )
    import json

    shown = json.loads(bytes(response.body))
    assert shown["scheme"] == "http"
    assert shown["http_version"] == "2"
    assert "tls" not in shown["extensions"]
    assert [v for n, v in shown["headers"] if n == "cookie"] == ["a=1; b=2; c=3"]
    assert ["host", f"127.0.0.1:{running.port}"] in shown["headers"]


# --- graceful shutdown -----------------------------------------------------------------


@needs_nghttp
def test_graceful_shutdown_nghttp(run_server: RunServer) -> None:
    """The h2 library (and so httpx) refuses frames after a GOAWAY; nghttp2 follows
    RFC 9113 section 6.8 and keeps reading streams up to the GOAWAY's last stream id."""
    gate = apps.Gate()
    running = run_server(gate, h2c=True)
    state = running.server.state
    assert state is not None
    client = subprocess.Popen(
        ["nghttp", "-v", "-t", "20", running.url + "/wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shutdown_thread = threading.Thread(target=running.shutdown)
    try:
        wait_for(running, lambda: any(getattr(c, "streams", None) for c in state.connections))
        shutdown_thread.start()
        wait_for(running, state.shutting_down.is_set)
        gate.release(running.loop)
        stdout, stderr = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        if shutdown_thread.ident is not None:
            shutdown_thread.join(timeout=30)
    assert client.returncode == 0, stdout + stderr
    goaway = stdout.index("recv GOAWAY frame")
    found = re.search(r"last_stream_id=(\d+), error_code=NO_ERROR", stdout[goaway:])
    assert found is not None
    request = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>", stdout)
    assert request is not None
    assert found.group(1) == request.group(1)
    assert stdout.index(":status: 200") > goaway  # the response came after the GOAWAY
    assert "/wait" in stdout[goaway:]
    assert not shutdown_thread.is_alive()
    assert running.server.state is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


@pytest.mark.xfail(
    strict=True,
    reason="httpcore 1.0.9 client limitation, not a server bug: it raises RemoteProtocolError on"
    " any GOAWAY read before the stream's own response events (httpcore/_sync/http2.py"
    " _receive_events), even a NO_ERROR GOAWAY whose last_stream_id covers the stream;"
    " test_graceful_shutdown_nghttp checks the same shutdown with a client that follows RFC 9113",
)
def test_graceful_shutdown_finishes_in_flight_httpx(
    run_server: RunServer, tls_config: dict[str, Any], dev_certs: Any
) -> None:
    gate = apps.Gate()
    running = run_server(gate, **tls_config)
    state = running.server.state
    assert state is not None
    result: dict[str, Any] = {}

    def slow_request() -> None:
        with httpx.Client(
            http2=True, verify=ssl.create_default_context(cafile=str(dev_certs.ca_cert)), timeout=20
        ) as client:
            try:
                result["response"] = client.get(running.url + "/wait")
            except Exception as exc:
                result["error"] = exc

    client_thread = threading.Thread(target=slow_request)
    client_thread.start()
    wait_for(running, lambda: any(getattr(c, "streams", None) for c in state.connections))
    shutdown_thread = threading.Thread(target=running.shutdown)
    shutdown_thread.start()
    wait_for(running, state.shutting_down.is_set)
    gate.release(running.loop)
    client_thread.join(timeout=30)
    shutdown_thread.join(timeout=30)
    assert not client_thread.is_alive()
    assert not shutdown_thread.is_alive()
    assert "error" not in result, result.get("error")
    response = result["response"]
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.text == "/wait"
    assert running.server.state is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", running.port), timeout=5).close()


def test_client_goaway_with_requests_in_flight_ends_the_connection_once_they_finish(
    run_server: RunServer,
) -> None:
    """A client that sends GOAWAY (NO_ERROR) while its requests still run, as h2load does
    at the end of a timed run: h2 refuses to send on the connection from then on, so the
    responses are dropped, and when the last app returns the server hangs up (it used to
    raise in the app task while resetting the finished stream, and kept the connection)."""
    gate = apps.Gate()
    running = run_server(gate, h2c=True)
    state = running.server.state
    assert state is not None
    connections = state.connections
    with RawH2(running.port) as conn:
        conn.handshake()
        conn.send_headers(1, request_headers("/wait"))  # half-closed: its body is complete
        conn.send_headers(3, request_headers("/wait"), end_stream=False)  # body still open
        conn.ping()
        conn.frames_until_ping_ack()  # both requests are with the app
        conn.send_frame(GOAWAY, 0, 0, struct.pack(">LL", 0, 0))
        # (No PING as a barrier here: h2 takes any frame after a GOAWAY as an error.)
        wait_for(running, lambda: any(getattr(c, "_peer_goaway", False) for c in connections))
        gate.release(running.loop)
        frames = conn.read_until_closed()  # returns once the server closed the connection
    assert not any(isinstance(frame, HeadersFrame) for frame in frames), frames
