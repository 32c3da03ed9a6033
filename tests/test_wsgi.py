"""WSGI apps through multiplex/wsgi.py: a Flask app over HTTP/1.1, HTTP/2 and HTTP/3
(routing, forms, 50 MiB streamed both ways with the process's memory watched), plain WSGI
callables found by `--interface auto`, and the PEP 3333 corners (environ, write(),
exc_info, errors, the thread bound)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flask
import httpx
import pytest

from multiplex.app import is_asgi2, is_wsgi, load_app
from multiplex.config import Config
from multiplex.wsgi import WSGIAdapter
from tests.conftest import RunningServer
from tests.protocols.h3client import H3Client, h3_connect
from tests.test_frameworks import ca_context, fetch, serve

Start = Callable[..., RunningServer]
PROTOCOLS = ["h1", "h2", "h3"]
MiB = 1024 * 1024
BIG = 50 * MiB
CHUNK = 64 * 1024
# How far the process's resident memory may grow while 50 MiB pass through it. Client and
# server share the process, so this bounds both: buffering the body whole anywhere would
# add 50 MiB.
MEMORY_BOUND = 16 * MiB


def pattern_chunks(total: int) -> Iterator[bytes]:
    """`total` bytes of a fixed pseudo-random pattern, in CHUNK pieces, made as needed."""
    block = hashlib.sha256(b"multiplex").digest() * (CHUNK // 32)
    sent = 0
    counter = 0
    while sent < total:
        # Vary each chunk a little so a lost or repeated chunk changes the hash.
        piece = counter.to_bytes(8, "big") + block[8:]
        piece = piece[: total - sent]
        sent += len(piece)
        counter += 1
        yield piece


def pattern_hash(total: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(total):
        digest.update(piece)
    return digest.hexdigest()


def create_flask_app() -> flask.Flask:
    app = flask.Flask("multiplex_wsgi_test")

    @app.get("/")
    def index() -> str:
        return "hello from flask"

    @app.get("/items/<int:item>")
    def item(item: int) -> dict[str, Any]:
        return {"item": item, "q": flask.request.args.get("q")}

    @app.post("/form")
    def form() -> dict[str, Any]:
        return {"name": flask.request.form["name"], "tags": flask.request.form.getlist("tag")}

    @app.post("/upload")
    def upload() -> dict[str, Any]:
        # Read wsgi.input piecewise: the body must never be held whole, here or below.
        stream = flask.request.stream
        digest = hashlib.sha256()
        size = 0
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return {"sha256": digest.hexdigest(), "size": size}

    @app.get("/download/<int:size>")
    def download(size: int) -> flask.Response:
        return flask.Response(pattern_chunks(size), mimetype="application/octet-stream")

    return app


class MemoryWatch:
    """Samples this process's resident set size in a thread: the peak growth over the
    baseline taken on entry."""

    def __init__(self) -> None:
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> MemoryWatch:
        self.baseline = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


needs_proc = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="needs /proc to watch memory"
)


@pytest.fixture
def flask_server(run_server: Start, tls_config: dict[str, Any]) -> RunningServer:
    return serve(run_server, tls_config, create_flask_app())


# --- routing and forms ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flask_routes_and_form(flask_server: RunningServer, dev_certs: Any, protocol: str) -> None:
    reply = fetch(flask_server, dev_certs, protocol, "/")
    assert (reply.status, reply.body) == (200, b"hello from flask")

    reply = fetch(flask_server, dev_certs, protocol, "/items/42?q=multi%20plex")
    assert reply.status == 200
    assert reply.json() == {"item": 42, "q": "multi plex"}

    reply = fetch(flask_server, dev_certs, protocol, "/missing")
    assert reply.status == 404

    reply = fetch(
        flask_server,
        dev_certs,
        protocol,
        "/form",
        method="POST",
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=b"name=J%C3%BCrgen&tag=a&tag=b",
    )
    assert reply.status == 200
    assert reply.json() == {"name": "Jürgen", "tags": ["a", "b"]}


# --- 50 MiB each way, memory bounded -----------------------------------------------------


def httpx_client(dev_certs: Any, protocol: str) -> httpx.Client:
    return httpx.Client(
        http1=protocol == "h1",
        http2=protocol == "h2",
        verify=ca_context(dev_certs),
        timeout=60,
    )


async def h3_paced_upload(client: H3Client, path: str, chunks: Iterable[bytes]) -> Any:
    """POST `chunks` without letting aioquic queue them all (it buffers without limit):
    each waits until less than 1 MiB of the stream is unacknowledged."""
    response = client.start(path, method="POST", end=False)
    sender = client._quic._streams[response.stream_id].sender
    for chunk in chunks:
        while len(sender._buffer) > MiB:
            await asyncio.sleep(0.002)
        client.send(response.stream_id, chunk)
    client.send(response.stream_id, b"", end=True)
    await asyncio.wait_for(response.done, 60)
    return response


@needs_proc
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flask_streamed_upload(flask_server: RunningServer, dev_certs: Any, protocol: str) -> None:
    expected = pattern_hash(BIG)
    with MemoryWatch() as memory:
        if protocol == "h3":

            async def h3() -> tuple[int, bytes]:
                async with h3_connect(flask_server.quic_port, str(dev_certs.ca_cert)) as client:
                    response = await h3_paced_upload(client, "/upload", pattern_chunks(BIG))
                return response.status, response.body

            status, body = asyncio.run(h3())
        else:
            with httpx_client(dev_certs, protocol) as client:
                reply = client.post(f"{flask_server.url}/upload", content=pattern_chunks(BIG))
            status, body = reply.status_code, reply.content
    assert status == 200, body
    assert json.loads(body) == {"sha256": expected, "size": BIG}
    assert memory.growth < MEMORY_BOUND, f"memory grew by {memory.growth / MiB:.1f} MiB"


@needs_proc
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_flask_streamed_download(
    flask_server: RunningServer, dev_certs: Any, protocol: str
) -> None:
    digest = hashlib.sha256()
    size = 0

    def take(data: bytes) -> None:
        nonlocal size
        digest.update(data)
        size += len(data)

    with MemoryWatch() as memory:
        if protocol == "h3":

            async def h3() -> int:
                async with h3_connect(flask_server.quic_port, str(dev_certs.ca_cert)) as client:
                    response = client.start(f"/download/{BIG}")
                    response.sink = take
                    await asyncio.wait_for(response.done, 60)
                return response.status

            status = asyncio.run(h3())
        else:
            with httpx_client(dev_certs, protocol) as client:
                with client.stream("GET", f"{flask_server.url}/download/{BIG}") as reply:
                    for data in reply.iter_bytes():
                        take(data)
                status = reply.status_code
    assert status == 200
    assert (size, digest.hexdigest()) == (BIG, pattern_hash(BIG))
    assert memory.growth < MEMORY_BOUND, f"memory grew by {memory.growth / MiB:.1f} MiB"


# --- plain WSGI callables and auto-detection ---------------------------------------------


def plain_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """The smallest WSGI app: what `--interface auto` must recognise."""
    body = json.dumps(
        {
            key: environ.get(key)
            for key in (
                "REQUEST_METHOD",
                "SCRIPT_NAME",
                "PATH_INFO",
                "QUERY_STRING",
                "SERVER_NAME",
                "SERVER_PORT",
                "SERVER_PROTOCOL",
                "REMOTE_ADDR",
                "CONTENT_TYPE",
                "CONTENT_LENGTH",
                "HTTP_X_CUSTOM",
                "HTTP_X_FORWARDED_FOR",
                "HTTP_COOKIE",
                "wsgi.url_scheme",
            )
        }
    ).encode()
    body += b"\n" + environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


class PlainWSGIObject:
    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("204 No Content", [])
        return []


def test_detection() -> None:
    assert is_wsgi(plain_app)
    assert is_wsgi(PlainWSGIObject())
    assert is_wsgi(create_flask_app())

    async def asgi3(scope: Any, receive: Any, send: Any) -> None: ...

    def asgi2(scope: Any) -> Any: ...

    assert not is_wsgi(asgi3)
    assert not is_wsgi(asgi2)
    assert is_asgi2(asgi2)
    assert not is_wsgi(PlainWSGIObject)  # a class is ASGI 2's shape, never WSGI


def test_plain_wsgi_callable_detected_by_auto(run_server: Start) -> None:
    app = load_app(Config(app="tests.test_wsgi:plain_app"))
    assert isinstance(app, WSGIAdapter)
    server = run_server(app, root_path="/mount")
    with httpx.Client(timeout=10) as client:
        reply = client.post(
            f"{server.url}/some/p%C3%A4th?a=1&b=%20",
            content=b"line one\nline two",
            headers={
                "content-type": "text/plain",
                "x-custom": "yes",
                "x-forwarded-for": "10.0.0.1",
                "x_forwarded_for": "6.6.6.6",
                "cookie": "a=1",
            },
        )
    assert reply.status_code == 200
    head, _, body = reply.content.partition(b"\n")
    environ = json.loads(head)
    assert body == b"line one\nline two"
    assert environ == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/mount",
        # PEP 3333: the path's UTF-8 bytes as latin-1 characters.
        "PATH_INFO": "/some/päth".encode().decode("latin-1"),
        "QUERY_STRING": "a=1&b=%20",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(server.port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "17",
        "HTTP_X_CUSTOM": "yes",
        # The underscore spelling would have overwritten it: dropped.
        "HTTP_X_FORWARDED_FOR": "10.0.0.1",
        "HTTP_COOKIE": "a=1",
        "wsgi.url_scheme": "http",
    }


def test_interface_wsgi_explicit_wins(run_server: Start) -> None:
    """A WSGI app auto-detection cannot recognise (it takes *args) runs when told."""

    def loose(*args: Any) -> list[bytes]:
        _environ, start_response = args
        start_response("200 OK", [("content-length", "5")])
        return [b"loose"]

    assert not is_wsgi(loose)
    server = run_server(loose, interface="wsgi")
    reply = httpx.get(f"{server.url}/", timeout=10)
    assert (reply.status_code, reply.content) == (200, b"loose")


def test_h2_cookies_joined(run_server: Start, tls_config: dict[str, Any], dev_certs: Any) -> None:
    """HTTP/2 carries each cookie in its own field; WSGI wants one `; `-joined header."""
    server = serve(run_server, tls_config, plain_app)
    with httpx_client(dev_certs, "h2") as client:
        # Two cookie fields on the wire (httpx's own cookie jar would merge them first).
        request = client.build_request("GET", f"{server.url}/")
        request.headers = httpx.Headers([("cookie", "a=1"), ("cookie", "b=2")])
        request.headers["host"] = f"127.0.0.1:{server.port}"
        reply = client.send(request)
    assert reply.http_version == "HTTP/2"
    environ = json.loads(reply.content.partition(b"\n")[0])
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["SERVER_PROTOCOL"] == "HTTP/2"
    assert environ["wsgi.url_scheme"] == "https"


# --- PEP 3333 corners ---------------------------------------------------------------------


def corners_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/write":
        write = start_response("200 OK", [("content-type", "text/plain")])
        write(b"written ")
        return iter([b"then ", b"iterated"])
    if path == "/lines":
        start_response("200 OK", [])
        return [b"|".join(environ["wsgi.input"].readlines())]
    if path == "/raise-early":
        raise RuntimeError("before start_response")
    if path == "/exc-info":
        start_response("200 OK", [("content-type", "text/plain")])
        try:
            raise ValueError("changed my mind")
        except ValueError:
            import sys

            start_response("503 Service Unavailable", [("x-why", "exc_info")], sys.exc_info())
        return [b"sorry"]
    if path == "/raise-late":

        def body() -> Iterator[bytes]:
            yield b"x" * 1000
            raise RuntimeError("in the middle of the body")

        start_response("200 OK", [("content-length", "100000")])
        return body()
    start_response("404 Not Found", [])
    return [b""]


class ClosingBody:
    """An iterable whose close() the server must call, also when the client leaves."""

    def __init__(self, closed: threading.Event) -> None:
        self.closed = closed

    def __iter__(self) -> Iterator[bytes]:
        yield b"first"
        yield b"second"

    def close(self) -> None:
        self.closed.set()


def test_write_callable_and_iterable(run_server: Start) -> None:
    server = run_server(corners_app, interface="wsgi")
    reply = httpx.get(f"{server.url}/write", timeout=10)
    assert (reply.status_code, reply.content) == (200, b"written then iterated")


def test_input_readlines(run_server: Start) -> None:
    server = run_server(corners_app)
    reply = httpx.post(f"{server.url}/lines", content=iter([b"a\nb", b"b\n", b"c"]), timeout=10)
    assert (reply.status_code, reply.content) == (200, b"a\n|bb\n|c")


def test_exception_before_start_response_is_500(run_server: Start) -> None:
    server = run_server(corners_app)
    reply = httpx.get(f"{server.url}/raise-early", timeout=10)
    assert reply.status_code == 500


def test_exc_info_replaces_unsent_response(run_server: Start) -> None:
    server = run_server(corners_app)
    reply = httpx.get(f"{server.url}/exc-info", timeout=10)
    assert (reply.status_code, reply.headers.get("x-why"), reply.content) == (
        503,
        "exc_info",
        b"sorry",
    )


def test_exception_after_headers_aborts(run_server: Start) -> None:
    server = run_server(corners_app)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{server.url}/raise-late", timeout=10)


def test_close_called_on_iterable(run_server: Start) -> None:
    closed = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> ClosingBody:
        start_response("200 OK", [])
        return ClosingBody(closed)

    server = run_server(app)
    reply = httpx.get(f"{server.url}/", timeout=10)
    assert reply.content == b"firstsecond"
    assert closed.wait(10)


def test_thread_pool_is_bounded(run_server: Start) -> None:
    """With wsgi_threads=2, six concurrent requests never run more than two at once."""
    lock = threading.Lock()
    running = 0
    most = 0
    gate = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == 2:
                gate.set()
        gate.wait(10)  # the first two hold their threads until both are in
        with lock:
            running -= 1
        start_response("200 OK", [])
        return [b"ok"]

    server = run_server(app, wsgi_threads=2)

    async def many() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            replies = await asyncio.gather(*(client.get(f"{server.url}/{n}") for n in range(6)))
        return [reply.status_code for reply in replies]

    assert asyncio.run(many()) == [200] * 6
    assert most == 2


def test_websocket_refused(run_server: Start) -> None:
    """WSGI cannot hold a WebSocket: the handshake gets 403."""
    server = run_server(plain_app)
    reply = httpx.get(
        f"{server.url}/",
        headers={
            "connection": "upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
        timeout=10,
    )
    assert reply.status_code == 403


def test_client_leaving_mid_download_stops_the_app(run_server: Start) -> None:
    """A client that goes away ends the app's iteration (send() raises in its thread) and
    close() still runs: the thread is not left blocked on a dead stream."""
    closed = threading.Event()
    produced = 0

    class Endless:
        def __iter__(self) -> Iterator[bytes]:
            nonlocal produced
            while True:
                produced += 1
                yield b"x" * CHUNK

        def close(self) -> None:
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Endless:
        start_response("200 OK", [])
        return Endless()

    server = run_server(app)
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{server.url}/") as reply:
            for _ in reply.iter_raw(CHUNK):
                break
    assert closed.wait(10)
    assert produced < 1000  # it stopped: far fewer than the 64 MiB a runaway would make
