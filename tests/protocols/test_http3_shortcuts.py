"""The HTTP/3 response path's shortcut, in memory (h3cost's aioquic client against our
endpoint): a body QUIC can take whole goes over without send_body's coroutines
(`EagerBodyWire.try_send_body`), with the same bytes as the long way, and the long way
is still taken when the body must wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from interop.benchmarks import h3cost
from multiplex.protocols.http3 import H3Protocol

SMALL = b"hello, world\n"
LARGE = bytes(range(256)) * 4096  # 1 MiB: over quic_send_ahead, so it has to wait


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = LARGE if scope["path"] == "/large" else SMALL
    headers = [(b"content-type", b"text/plain"), (b"x-path", scope["path"].encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve(paths: list[str]) -> list[tuple[list[Any], bytes]]:
    """Every path requested at once on one connection; the responses, in order, with
    the date field left out (it may change between two runs)."""

    async def main() -> list[tuple[list[Any], bytes]]:
        transport = h3cost.FakeDatagramTransport()
        client = h3cost.Client(h3cost._multiplex(transport, app), transport, keep=True)
        await client.handshake()
        ids = []
        for path in paths:
            stream_id = client.quic.get_next_available_stream_id()
            request = [(k, path.encode() if k == b":path" else v) for k, v in h3cost.REQUEST]
            client.h3.send_headers(stream_id, request, end_stream=True)
            client.open.add(stream_id)
            ids.append(stream_id)
        await client.exchange(lambda: not client.open)
        out = []
        for stream_id in ids:
            fields, body = client.responses[stream_id]
            out.append(([[f for f in head if f[0] != b"date"] for head in fields], bytes(body)))
        return out

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("paths", "eager"),
    [
        (["/", "/", "/"], [True, True, True]),
        # Once the large body waits in the scheduler, the bodies after it wait their
        # turn too: none jumps the queue.
        (["/", "/large", "/", "/large", "/"], [True, False, False, False, False]),
    ],
)
def test_whole_bodies_skip_send_body(
    paths: list[str], eager: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []
    try_send_body = H3Protocol.try_send_body

    def counted(self: H3Protocol, stream_id: int, data: bytes, end: bool) -> bool:
        taken.append(try_send_body(self, stream_id, data, end))
        return taken[-1]

    monkeypatch.setattr(H3Protocol, "try_send_body", counted)
    short = _serve(paths)
    assert taken == eager
    monkeypatch.setattr(H3Protocol, "eager_body", False)
    taken.clear()
    long = _serve(paths)
    assert taken == []  # the long way only
    assert short == long
    assert [body for _, body in short] == [LARGE if p == "/large" else SMALL for p in paths]
    assert all(fields[0][0] == (b":status", b"200") for fields, _ in short)
