"""request_from_fields, the HTTP/2 and HTTP/3 request builder: its one-walk version
against the plain reading of the rules it replaced (host from :authority unless a host
field came, expect from any 100-continue, the size by RFC 9114's measure)."""

from __future__ import annotations

import itertools
import random

from multiplex.protocols.fields import FIELD_OVERHEAD, request_from_fields
from multiplex.protocols.qpack import field_section_size
from multiplex.streams.seam import Headers, Request


def _reference(fields: Headers, webtransport: bool, max_size: int) -> tuple[object, ...] | int:
    """The rules read straight off, each in a pass of its own."""
    if max_size and sum(len(n) + len(v) + FIELD_OVERHEAD for n, v in fields) > max_size:
        return 431
    pseudo = {n: v for n, v in fields if n[:1] == b":"}
    headers = [(n, v) for n, v in fields if n[:1] != b":" and n != b"cookie"]
    cookies = [v for n, v in fields if n == b"cookie"]
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    authority = pseudo.get(b":authority", b"")
    if authority and not any(n == b"host" for n, _ in headers):
        headers.insert(0, (b"host", authority))
    method = pseudo.get(b":method", b"")
    protocol = pseudo.get(b":protocol", b"")
    websocket = wt = False
    if method == b"CONNECT":
        if protocol == b"webtransport" and webtransport:
            wt = True
        elif protocol != b"websocket":
            return 501 if protocol else 405
        else:
            websocket = True
    expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
    path = pseudo.get(b":path", b"")
    return (method.decode(), path, headers, expect, websocket, wt)


def _seen(result: Request | int) -> tuple[object, ...] | int:
    if isinstance(result, int):
        return result
    return (
        result.method,
        result.raw_target,
        result.headers,
        result.expect_continue,
        result.websocket,
        result.webtransport,
    )


REGULAR = [
    (b"host", b"example.com"),
    (b"expect", b"100-continue"),
    (b"expect", b"100-Continue"),
    (b"expect", b"something-else"),
    (b"cookie", b"a=1"),
    (b"cookie", b"b=2"),
    (b"accept", b"*/*"),
    (b"user-agent", b"x" * 50),
]
PSEUDO = [
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")],
    [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/p?q=1")],
    [(b":method", b"CONNECT"), (b":authority", b"a.test:443")],
    [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":authority", b"a"),
        (b":path", b"/"),
    ],
    [(b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":authority", b"a")],
    [(b":method", b"CONNECT"), (b":protocol", b"other"), (b":authority", b"a"), (b":path", b"/")],
]


def test_request_from_fields_matches_the_rules_read_straight_off() -> None:
    rng = random.Random(9)
    cases = 0
    for pseudo in PSEUDO:
        for count in range(4):
            for regular in itertools.combinations(REGULAR, count):
                fields = pseudo + list(regular)
                size = field_section_size(fields)
                for webtransport, max_size in itertools.product(
                    (False, True), (0, size - 1, size, size + 1, rng.randrange(1, 2 * size))
                ):
                    expected = _reference(list(fields), webtransport, max_size)
                    got = _seen(request_from_fields(list(fields), webtransport, max_size))
                    assert got == expected, (fields, webtransport, max_size)
                    cases += 1
    assert cases > 5000


def test_a_field_section_at_the_limit_passes_one_byte_over_gets_431() -> None:
    fields = [(b":method", b"GET"), (b":path", b"/"), (b"x-big", b"v" * 1000)]
    size = field_section_size(fields)
    assert isinstance(request_from_fields(fields, max_size=size), Request)
    assert request_from_fields(fields, max_size=size - 1) == 431
    assert isinstance(request_from_fields(fields), Request)  # no limit: HTTP/2's call
