"""A Django project on disk (tests/djproject) served by a `multiplex` process the way the
Django docs serve one with daphne or uvicorn: `multiplex tests.djproject.asgi:application`.

Over HTTP/1.1 and HTTP/2 (httpx) and HTTP/3 (aioquic): the admin logs in, adds a note
and edits it (sessions, CSRF with the Origin check Django does on HTTPS, redirects);
the admin's CSS comes through the app; a 20 MiB file upload through Django's multipart
parsing arrives whole.

Channels through a real redis-server: an HTTP/1.1 WebSocket and an HTTP/2 WebSocket (on
different processes when there are several), and an HTTP/3 one, in one group chat: on
one server process, on two server processes (two ports), and on two workers of one
`--workers 2` server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect as websockets_connect

from tests.conftest import require_tool
from tests.protocols.h3client import h3_connect
from tests.protocols.test_websocket_h3 import H3WebSocket, until
from tests.test_cli_serve import ROOT, free_port, start, wait_for_accept
from tests.test_frameworks import H2WebSockets, ca_context
from tests.test_supervisor import Supervised

pytestmark = pytest.mark.timeout(180)

Fetch = Callable[
    [str, str, list[tuple[str, str]], bytes | None], tuple[int, list[tuple[str, str]], bytes]
]
PROTOCOLS = ["h1", "h2", "h3"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, dev_certs: Any) -> Iterator[int]:
    """The database migrated with a superuser, and the server; its port."""
    db = tmp_path_factory.mktemp("djproject") / "db.sqlite3"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.djproject.settings",
        "DJPROJECT_DB": str(db),
        "PYTHONPATH": str(ROOT),
    }
    setup = (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', verbosity=0)\n"
        "from django.contrib.auth.models import User\n"
        "User.objects.create_superuser('admin', 'admin@example.org', 'secret-pw')\n"
    )
    subprocess.run([sys.executable, "-c", setup], env=env, check=True, cwd=ROOT, timeout=120)
    port = free_port()
    process = start(
        "tests.djproject.asgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--quic-bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
        env={
            "DJANGO_SETTINGS_MODULE": "tests.djproject.settings",
            "DJPROJECT_DB": str(db),
            "DJPROJECT_DEBUG": "1",  # a failing request shows its exception in the test
        },
    )
    try:
        wait_for_accept(process, port)
        yield port
    finally:
        process.kill()
        process.communicate()


def fetcher(protocol: str, port: int, ca_cert: str) -> Fetch:
    """One request at a time over `protocol`; cookies are the caller's business."""
    if protocol in ("h1", "h2"):

        def fetch_tcp(
            method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
        ) -> tuple[int, list[tuple[str, str]], bytes]:
            verify = ssl.create_default_context(cafile=ca_cert)
            with httpx.Client(http1=protocol == "h1", http2=protocol == "h2", verify=verify) as c:
                response = c.request(
                    method, f"https://127.0.0.1:{port}{path}", headers=headers, content=body
                )
            assert response.http_version == {"h1": "HTTP/1.1", "h2": "HTTP/2"}[protocol]
            return response.status_code, list(response.headers.multi_items()), response.content

        return fetch_tcp

    def fetch_h3(
        method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        async def run() -> tuple[int, list[tuple[str, str]], bytes]:
            async with h3_connect(port, ca_cert) as client:
                response = await client.request(
                    path,
                    method=method,
                    headers=[(k.encode(), v.encode()) for k, v in headers],
                    body=body,
                    authority=f"127.0.0.1:{port}",
                    timeout=60,
                )
            fields = [(k.decode(), v.decode()) for k, v in response.headers if k[:1] != b":"]
            return response.status, fields, response.body

        return asyncio.run(run())

    return fetch_h3


class Browser:
    """Cookies and the Origin header, as a browser would send them."""

    def __init__(self, fetch: Fetch, origin: str) -> None:
        self.fetch = fetch
        self.origin = origin
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        headers = [("origin", self.origin), ("referer", self.origin + path)]
        if self.cookies:
            headers.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers.append(("content-type", "application/x-www-form-urlencoded"))
        status, fields, content = self.fetch(method, path, headers, body)
        for name, value in fields:
            if name.lower() == "set-cookie":
                key, _, rest = value.split(";", 1)[0].partition("=")
                self.cookies[key.strip()] = rest
        return status, {k.lower(): v for k, v in fields}, content

    def form_token(self, path: str) -> str:
        status, _, page = self.request("GET", path)
        assert status == 200, (path, status)
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, page[:500]
        return match.group(1).decode()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_login_add_and_edit(project: int, dev_certs: Any, protocol: str) -> None:
    port = project
    browser = Browser(fetcher(protocol, port, str(dev_certs.ca_cert)), f"https://127.0.0.1:{port}")
    token = browser.form_token("/admin/login/?next=/admin/")
    status, headers, _ = browser.request(
        "POST",
        "/admin/login/?next=/admin/",
        {
            "csrfmiddlewaretoken": token,
            "username": "admin",
            "password": "secret-pw",
            "next": "/admin/",
        },
    )
    assert (status, headers.get("location")) == (302, "/admin/"), status
    assert "sessionid" in browser.cookies

    title = f"written over {protocol}"
    token = browser.form_token("/admin/notes/note/add/")
    status, headers, _ = browser.request(
        "POST",
        "/admin/notes/note/add/",
        {"csrfmiddlewaretoken": token, "title": title, "body": "first", "_save": "Save"},
    )
    assert status == 302, status
    status, _, listing = browser.request("GET", "/admin/notes/note/")
    ids = re.findall(rb"/admin/notes/note/(\d+)/change/", listing)
    assert status == 200 and ids
    change = f"/admin/notes/note/{max(int(i) for i in ids)}/change/"
    token = browser.form_token(change)
    edited = f"edited over {protocol}"
    status, _, _ = browser.request(
        "POST",
        change,
        {"csrfmiddlewaretoken": token, "title": edited, "body": "second", "_save": "Save"},
    )
    assert status == 302
    status, _, page = browser.request("GET", change)
    assert status == 200 and edited.encode() in page


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_admin_static_css_through_the_app(project: int, dev_certs: Any, protocol: str) -> None:
    fetch = fetcher(protocol, project, str(dev_certs.ca_cert))
    status, fields, body = fetch("GET", "/static/admin/css/base.css", [], None)
    headers = {k.lower(): v for k, v in fields}
    assert status == 200
    assert headers["content-type"].startswith("text/css")
    assert b"body" in body and len(body) > 1000


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_twenty_mib_upload_arrives_whole(
    project: int, dev_certs: Any, protocol: str, tmp_path: Path
) -> None:
    data = os.urandom(20 * 1024 * 1024)
    boundary = "multiplexboundary7d1f"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    fetch = fetcher(protocol, project, str(dev_certs.ca_cert))
    # Django reads a multipart body only with a content-length, as browsers send.
    headers = [
        ("content-type", f"multipart/form-data; boundary={boundary}"),
        ("content-length", str(len(body))),
    ]
    status, _, answer = fetch("POST", "/upload", headers, body)
    assert status == 200, re.findall(rb"exception_value\">([^<]*)", answer)
    result = json.loads(answer)
    assert result == {
        "name": "big.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# --- Channels across worker processes, through Redis -------------------------------------


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own on a free loopback port, nothing written to disk."""
    binary = require_tool("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "no redis"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def redis_keys(url: str, pattern: str) -> list[bytes]:
    """KEYS over a raw RESP exchange (then QUIT, so the reply ends at EOF): what the
    channel layer keeps in our redis-server."""
    host, _, port = url.removeprefix("redis://").rpartition(":")
    command = f"*2\r\n$4\r\nKEYS\r\n${len(pattern)}\r\n{pattern}\r\n*1\r\n$4\r\nQUIT\r\n"
    reply = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(command.encode())
        while chunk := sock.recv(65536):
            reply += chunk
    # "*N", then "$len" and the key for each, then "+OK" for QUIT.
    lines = reply.split(b"\r\n")
    assert lines[0].startswith(b"*") and lines[-2:] == [b"+OK", b""], reply
    return lines[2:-2:2]


def project_args(port: int, dev_certs: Any) -> list[str]:
    """The project on `port`, TCP (TLS) and QUIC."""
    return [
        "tests.djproject.asgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--quic-bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
    ]


def project_env(env: dict[str, str]) -> dict[str, str]:
    return {"DJANGO_SETTINGS_MODULE": "tests.djproject.settings", **env}


def serve_project(port: int, dev_certs: Any, env: dict[str, str]) -> subprocess.Popen[str]:
    process = start(*project_args(port, dev_certs), env=project_env(env))
    wait_for_accept(process, port)
    return process


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


@pytest.mark.parametrize("deployment", ["one process", "two processes", "--workers 2"])
def test_channels_group_chat_through_redis(
    tmp_path: Path, dev_certs: Any, redis_url: str, deployment: str
) -> None:
    """One client over HTTP/1.1 WebSocket and one over HTTP/2 WebSocket (RFC 8441), plus
    a third over HTTP/3 (RFC 9220), chat in one group through channels_redis and a real
    redis-server: all on one server process; on two server processes with their own
    ports (two machines behind a load balancer); and on the two workers of one
    `--workers 2` server sharing a port. The HTTP/1.1 and HTTP/2 members are always on
    different processes in the last two."""
    env = {"DJPROJECT_DB": str(tmp_path / "db.sqlite3"), "DJPROJECT_REDIS": redis_url}
    first = free_port()
    if deployment == "--workers 2":
        # Both workers must listen before the test looks for a connection on each: the
        # port accepts as soon as the first does, and the second may still be importing
        # Django on a loaded machine. The supervisor logs when all are ready.
        supervised = Supervised(
            *project_args(first, dev_certs), "--workers", "2", env=project_env(env)
        )
        try:
            supervised.wait_log("Workers ready", timeout=120)
            asyncio.run(_chat(first, first, dev_certs, redis_url, deployment))
            assert supervised.stop() == 0, supervised.log
        finally:
            supervised.kill_all()
        return
    processes = [serve_project(first, dev_certs, env)]
    try:
        second = first
        if deployment == "two processes":
            second = free_port()
            processes.append(serve_project(second, dev_certs, env))
        asyncio.run(_chat(first, second, dev_certs, redis_url, deployment))
    finally:
        for process in processes:
            stop(process)


async def _chat(
    h1_port: int, h2_port: int, dev_certs: Any, redis_url: str, deployment: str
) -> None:
    context = ca_context(dev_certs)
    url = f"wss://127.0.0.1:{h1_port}/ws/chat/"
    async with (
        websockets_connect(url, ssl=context, proxy=None, open_timeout=10) as h1,
        h3_connect(h2_port, str(dev_certs.ca_cert)) as quic,
    ):
        h1_pid = json.loads(await asyncio.wait_for(h1.recv(), 10))["pid"]
        # With --workers, a connection lands on either worker (the kernel's SO_REUSEPORT
        # hash of its source port): reconnect until the HTTP/2 one reaches the other
        # worker. A deadline, not a count of tries, because the second worker may still
        # be starting Django when the first already accepts.
        deadline = time.monotonic() + 60
        while True:
            h2 = H2WebSockets(h2_port, tls=ca_context(dev_certs, ["h2"]))
            stream = await asyncio.to_thread(h2.open, "/ws/chat/")
            assert stream.status == 200
            h2_pid = json.loads(await asyncio.to_thread(h2.recv, stream))["pid"]
            if deployment == "one process" or h2_pid != h1_pid:
                break
            h2.shutdown()
            assert time.monotonic() < deadline, "every HTTP/2 connection reached one process"
        try:
            assert (h1_pid == h2_pid) == (deployment == "one process"), (h1_pid, h2_pid)
            await until(lambda: quic.h3.received_settings is not None)
            h3 = H3WebSocket(quic, "/ws/chat/")
            assert await h3.opened() == 200
            h3_pid = json.loads(await h3.receive())["pid"]
            # The members' channels are in the group, kept in redis, not in a process.
            groups = redis_keys(redis_url, "*group*")
            assert any(key.endswith(b"lobby") for key in groups), groups

            async def everyone_hears(text: str) -> None:
                heard = [
                    json.loads(await asyncio.wait_for(h1.recv(), 10)),
                    json.loads(await asyncio.to_thread(h2.recv, stream)),
                    json.loads(await h3.receive()),
                ]
                assert heard == [
                    {"message": text, "pid": h1_pid},
                    {"message": text, "pid": h2_pid},
                    {"message": text, "pid": h3_pid},
                ]

            await h1.send("hello from HTTP/1.1")
            await everyone_hears("hello from HTTP/1.1")
            await asyncio.to_thread(h2.send, stream, "hello from HTTP/2")
            await everyone_hears("hello from HTTP/2")
            h3.send("hello from HTTP/3")
            await everyone_hears("hello from HTTP/3")
            # The HTTP/2 member leaves (group_discard through redis); the others go on.
            await asyncio.to_thread(h2.close, stream)
            await h1.send("anyone?")
            assert json.loads(await asyncio.wait_for(h1.recv(), 10))["message"] == "anyone?"
            assert json.loads(await h3.receive())["message"] == "anyone?"
        finally:
            h2.shutdown()
