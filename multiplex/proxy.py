"""`--proxy-headers`: the client address and scheme a trusted proxy reports.

Only a peer in `forwarded_allow_ips` may speak for the client; anyone else could write
these headers themselves. Of the addresses a chain of proxies appended, the client is the
rightmost one that is not itself a trusted proxy: everything left of it was written by
someone we do not trust (uvicorn and Werkzeug's ProxyFix pick the same way). `Forwarded`
(RFC 7239) wins over `X-Forwarded-For` / `X-Forwarded-Proto` when both are present.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

from multiplex.config import Config

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_SCHEMES = {
    "http": {"http": "http", "https": "https", "ws": "http", "wss": "https"},
    "websocket": {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"},
}


class TrustedPeers:
    """The `forwarded_allow_ips` list, parsed: addresses, CIDR networks or `*`."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.everyone = "*" in entries
        self.networks: list[Network] = [
            ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry != "*"
        ]

    def __contains__(self, host: str | None) -> bool:
        if self.everyone:
            return True
        address = _ip(host)
        if address is None:
            return False
        return any(address in network for network in self.networks)


@functools.lru_cache(maxsize=8)
def trusted_peers(entries: tuple[str, ...]) -> TrustedPeers:
    return TrustedPeers(entries)


def check_entries(entries: list[str]) -> str | None:
    """The first entry that is not `*`, an address or a network, or None."""
    for entry in entries:
        if entry.strip() == "*":
            continue
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            return entry
    return None


def apply_proxy_headers(scope: dict[str, Any], config: Config) -> None:
    """Rewrite `scope["client"]` and `scope["scheme"]` from the proxy's headers, if the
    peer is trusted. A unix-socket peer (no client address) is a process on this machine
    that the socket's permissions let in: trusted."""
    peer = scope["client"]
    if peer is not None and peer[0] not in trusted_peers(tuple(config.forwarded_allow_ips)):
        return
    forwarded: list[bytes] = []
    xff: list[bytes] = []
    xfp: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"forwarded":
            forwarded.append(value)
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            xfp.append(value)
    if not (forwarded or xff or xfp):
        return
    trusted = trusted_peers(tuple(config.forwarded_allow_ips))
    if forwarded:
        elements = parse_forwarded(b",".join(forwarded).decode("latin-1"))
        hops: list[str | None] = [element.get("for") for element in elements]
        index = _client_index(hops, trusted)
        if index is None:
            return
        node = hops[index]
        if node is not None:
            scope["client"] = _node(node)
        proto = elements[index].get("proto")
    else:
        entries = b",".join(xff).decode("latin-1").split(",")
        xff_hops = [hop for hop in (entry.strip() for entry in entries) if hop]
        index = _client_index(xff_hops, trusted)
        if index is not None:
            scope["client"] = _node(xff_hops[index])
        protos = [p.strip() for p in b",".join(xfp).decode("latin-1").split(",") if p.strip()]
        proto = None
        if protos:
            # One proto per hop when the proxies kept them in step; otherwise the last,
            # written by the trusted proxy next to us.
            proto = (
                protos[index] if index is not None and len(protos) == len(xff_hops) else protos[-1]
            )
    if proto is not None:
        scheme = _SCHEMES.get(scope["type"], {}).get(proto.lower())
        if scheme is not None:
            scope["scheme"] = scheme


def _client_index(hops: Sequence[str | None], trusted: TrustedPeers) -> int | None:
    """Index of the rightmost hop that is not a trusted proxy (the leftmost when all
    are); None for an empty list."""
    if not hops:
        return None
    for index in range(len(hops) - 1, -1, -1):
        host = hops[index]
        if host is None or _host(host) not in trusted:
            return index
    return 0


def _ip(host: str | None) -> Address | None:
    if not host:
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host(node: str) -> str:
    return _split_node(node)[0]


def _split_node(node: str) -> tuple[str, int]:
    """RFC 7239 node (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]:80`, `unknown`,
    `_hidden`) or an X-Forwarded-For entry -> (host, port; 0 when absent)."""
    if node.startswith("["):
        host, _, rest = node[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif node.count(":") == 1:
        host, _, port = node.partition(":")
    else:
        host, port = node, ""  # a bare IPv6 address (X-Forwarded-For writes them so)
    return host, int(port) if port.isdigit() else 0


def _node(node: str) -> tuple[str, int] | None:
    host, port = _split_node(node)
    if host.lower() == "unknown":
        return None  # RFC 7239 6.2: the proxy does not know; ASGI says so with None
    return host, port


def parse_forwarded(value: str) -> list[dict[str, str | None]]:
    """RFC 7239 `Forwarded`: a list of elements (one per hop, left to right), each a
    dict of lowercase parameter names to values (quotes removed). A malformed element
    still takes its place in the list, with no `for`, so it counts as untrusted."""
    elements: list[dict[str, str | None]] = []
    for element_text in _split_outside_quotes(value, ","):
        element: dict[str, str | None] = {"for": None}
        for pair in _split_outside_quotes(element_text, ";"):
            name, sep, raw = pair.partition("=")
            name = name.strip().lower()
            raw = raw.strip()
            if not sep or not name:
                continue
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            element[name] = raw
        elements.append(element)
    return elements


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in (p.strip() for p in parts) if part]
