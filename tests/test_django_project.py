"""A Django project on disk (tests/djproject) served by a `multiplex` process the way the
Django docs serve one with daphne or uvicorn: `multiplex tests.djproject.asgi:application`.

Over HTTP/1.1 and HTTP/2 (httpx) and HTTP/3 (aioquic): the admin logs in, adds a note
and edits it (sessions, CSRF with the Origin check Django does on HTTPS, redirects);
the admin's CSS comes through the app; a 20 MiB file upload through Django's multipart
parsing arrives whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import socket
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
from tests.test_cli_serve import ROOT, free_port, start, wait_for_accept
from tests.test_frameworks import H2WebSockets, ca_context

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
            with httpx.Client(http1=protocol == "h1", http2=protocol == "h2", verify=ca_cert) as c:
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


def test_channels_group_chat_across_two_workers_through_redis(
    tmp_path: Path, dev_certs: Any, redis_url: str
) -> None:
    """`--workers 2`: one client over HTTP/1.1 WebSocket and one over HTTP/2 WebSocket
    (RFC 8441), on different worker processes, chat through channels_redis."""
    port = free_port()
    process = start(
        "tests.djproject.asgi:application",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--certfile",
        str(dev_certs.cert),
        "--keyfile",
        str(dev_certs.key),
        env={
            "DJANGO_SETTINGS_MODULE": "tests.djproject.settings",
            "DJPROJECT_DB": str(tmp_path / "db.sqlite3"),
            "DJPROJECT_REDIS": redis_url,
        },
    )
    try:
        wait_for_accept(process, port)
        asyncio.run(_chat_across_workers(port, dev_certs))
    finally:
        process.terminate()
        process.communicate(timeout=60)


async def _chat_across_workers(port: int, dev_certs: Any) -> None:
    context = ca_context(dev_certs)
    url = f"wss://127.0.0.1:{port}/ws/chat/"
    async with websockets_connect(url, ssl=context, proxy=None, open_timeout=10) as h1:
        h1_pid = json.loads(await asyncio.wait_for(h1.recv(), 10))["pid"]
        # HTTP/2 connections land on either worker: reconnect until the other one.
        for _ in range(40):
            h2 = H2WebSockets(port, tls=ca_context(dev_certs, ["h2"]))
            stream = await asyncio.to_thread(h2.open, "/ws/chat/")
            assert stream.status == 200
            h2_pid = json.loads(await asyncio.to_thread(h2.recv, stream))["pid"]
            if h2_pid != h1_pid:
                break
            h2.shutdown()
        assert h2_pid != h1_pid, "every HTTP/2 connection reached the same worker"
        try:
            await h1.send("hello from HTTP/1.1")
            for got in (
                json.loads(await asyncio.wait_for(h1.recv(), 10)),
                json.loads(await asyncio.to_thread(h2.recv, stream)),
            ):
                assert got["message"] == "hello from HTTP/1.1"
            await asyncio.to_thread(h2.send, stream, "hello from HTTP/2")
            heard_by_h2 = json.loads(await asyncio.to_thread(h2.recv, stream))
            heard_by_h1 = json.loads(await asyncio.wait_for(h1.recv(), 10))
            assert heard_by_h1 == {"message": "hello from HTTP/2", "pid": h1_pid}
            assert heard_by_h2 == {"message": "hello from HTTP/2", "pid": h2_pid}
        finally:
            h2.shutdown()
