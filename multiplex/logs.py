"""Logging: the `multiplex` logger (server events) and `multiplex.access` (one line per
request).

We only touch our own two loggers, never the root logger, so an application that
embeds the server or configures logging itself keeps its setup.
"""

from __future__ import annotations

import logging
import sys

from multiplex.config import Config

LOGGER = "multiplex"
ACCESS_LOGGER = "multiplex.access"
FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"

# `Config.log_level` choices -> logging levels.
LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we added, so a second call replaces it instead of doubling
    every line, and so we can tell it apart from handlers someone else attached."""


def configure_logging(config: Config) -> None:
    """Send `multiplex` and `multiplex.access` records to stderr.

    If someone else already attached handlers to `multiplex`, their wiring (handlers,
    propagation) is left alone and only the levels are set.
    """
    logger = logging.getLogger(LOGGER)
    level = LEVELS[config.log_level]
    logger.setLevel(level)

    ours = [h for h in logger.handlers if isinstance(h, _OurHandler)]
    theirs = [h for h in logger.handlers if not isinstance(h, _OurHandler)]
    for handler in ours:
        logger.removeHandler(handler)
    if not theirs:
        handler = _OurHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
        # Our handler prints it; propagating would print it again via a root handler.
        logger.propagate = False

    # Access lines reach the handler above by propagation; the level check happens on
    # this logger, so `disabled` makes `isEnabledFor()` false and the server can skip
    # building lines nobody will see.
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(level)
    access.disabled = not config.access_log


def _format_client(client: tuple[str, int] | str | None) -> str:
    if client is None:
        return "-"
    if isinstance(client, str):  # a unix socket peer, already a display string
        return client or "-"
    host, port = client[0], client[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _escape(text: str) -> str:
    """Keep one request on one line: a path may carry quotes or control characters."""
    if text.isprintable() and '"' not in text:
        return text
    out = []
    for ch in text:
        if ch == '"' or not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii") if ch != '"' else '\\"')
        else:
            out.append(ch)
    return "".join(out)


def access_line(
    client: tuple[str, int] | str | None,
    method: str,
    path: str,
    protocol: str,
    status: int,
    nbytes: int,
    duration_s: float,
) -> str:
    """`127.0.0.1:50312 - "GET /x HTTP/2" 200 1234 2.1ms` (status 0: no response sent)."""
    return (
        f'{_format_client(client)} - "{_escape(method)} {_escape(path)} {protocol}"'
        f" {status} {nbytes} {duration_s * 1000:.1f}ms"
    )
