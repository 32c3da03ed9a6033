"""Request fields as HTTP/2 and HTTP/3 carry them, turned into the `Request` an ASGI
stream expects. Both protocols share the rules: pseudo-headers out, `:authority` in as
`host`, split `cookie` fields joined (RFC 9113 section 8.2.3, RFC 9114 section 4.2.1),
and extended CONNECT (RFC 8441, RFC 9220) recognised as a WebSocket."""

from __future__ import annotations

from collections.abc import Iterable

from multiplex.streams.seam import Headers, Request

# RFC 9113 section 8.2.2 and RFC 9114 section 4.2: never sent on HTTP/2 or HTTP/3.
CONNECTION_SPECIFIC = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"]
)
# RFC 9114 section 4.2.2 (and RFC 9113 section 6.5.2): a field's size is its name and
# value plus 32 bytes.
FIELD_OVERHEAD = 32
STATUS = {code: str(code).encode() for code in range(100, 600)}


def response_fields(status: int, headers: Headers) -> Headers:
    """`:status` first, then the app's fields minus the connection-specific ones."""
    out = [(b":status", STATUS[status])]
    for header in headers:
        if header[0] not in CONNECTION_SPECIFIC:
            out.append(header)
    return out


def request_from_fields(
    fields: Iterable[tuple[bytes, bytes]], webtransport: bool = False, max_size: int = 0
) -> Request | int:
    """The request, or the status to refuse it with before any app sees it: 431 when
    `max_size` is set and the field section is larger by RFC 9114 section 4.2.2's
    measure (each field's name and value plus 32), 405 for a plain CONNECT (we are no
    proxy), 501 for an extended CONNECT to another protocol (WebTransport counts only
    where the connection enabled it).
    The library below has already checked which pseudo-headers are allowed."""
    method = path = authority = protocol = b""
    headers: Headers = []
    cookies: list[bytes] = []
    # One walk does it all: the host and expect checks and the size are noted on the
    # way rather than by generator passes afterwards (a few microseconds a request).
    host = expect = False
    size = 0
    for name, value in fields:
        size += len(name) + len(value) + FIELD_OVERHEAD
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
        elif name == b"cookie":
            cookies.append(value)
        else:
            if name == b"host":
                host = True
            elif name == b"expect" and not expect:
                expect = value.lower() == b"100-continue"
            headers.append((name, value))
    return build_request(
        method,
        path,
        authority,
        protocol,
        headers,
        cookies,
        host,
        expect,
        size,
        webtransport,
        max_size,
    )


def build_request(
    method: bytes,
    path: bytes,
    authority: bytes,
    protocol: bytes,
    headers: Headers,
    cookies: list[bytes],
    host: bool,
    expect: bool,
    size: int,
    webtransport: bool,
    max_size: int,
) -> Request | int:
    """The end of `request_from_fields`, from what its walk over the fields noted (and
    HTTP/3's walk that also checks them: `qpack.validated_request`)."""
    if max_size and size > max_size:
        return 431
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if authority and not host:
        headers.insert(0, (b"host", authority))
    websocket = wt = False
    if method == b"CONNECT":
        if protocol == b"webtransport" and webtransport:
            wt = True
        elif protocol != b"websocket":
            return 501 if protocol else 405
        else:
            websocket = True
    request = Request(method.decode("ascii"), path, headers, expect, websocket)
    request.webtransport = wt
    return request
