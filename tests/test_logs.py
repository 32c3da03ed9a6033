"""Logger setup and the access line format."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from multiplex.config import Config
from multiplex.logs import access_line, configure_logging


@pytest.mark.parametrize(
    ("client", "start"),
    [
        (("127.0.0.1", 50312), "127.0.0.1:50312"),
        (("::1", 443), "[::1]:443"),
        (None, "-"),
        ("/run/app.sock", "/run/app.sock"),
    ],
)
def test_access_line(client: tuple[str, int] | str | None, start: str) -> None:
    line = access_line(client, "GET", "/x?y=1", "HTTP/2", 200, 1234, 0.0021)
    assert line == f'{start} - "GET /x?y=1 HTTP/2" 200 1234 2.1ms'


def test_access_line_keeps_one_request_on_one_line() -> None:
    line = access_line(None, "GET", '/a"b\nc', "HTTP/1.1", 400, 0, 0.0)
    assert "\n" not in line
    assert '/a\\"b\\nc' in line


@pytest.fixture
def loggers() -> Iterator[tuple[logging.Logger, logging.Logger]]:
    """Our two loggers, restored afterwards so other tests see them untouched."""
    main, access = logging.getLogger("multiplex"), logging.getLogger("multiplex.access")
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in (main, access)]
    yield main, access
    for lg, handlers, level, propagate, disabled in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled


def test_configure_logging_is_idempotent_and_honours_settings(
    loggers: tuple[logging.Logger, logging.Logger],
) -> None:
    main, access = loggers
    configure_logging(Config(log_level="debug"))
    configure_logging(Config(log_level="warning", access_log=False))
    assert len(main.handlers) == 1  # replaced, not doubled
    assert main.level == logging.WARNING and not main.propagate
    assert not access.isEnabledFor(logging.INFO)
    configure_logging(Config(log_level="info", access_log=True))
    assert access.isEnabledFor(logging.INFO)


def test_configure_logging_keeps_an_embedders_handlers(
    loggers: tuple[logging.Logger, logging.Logger],
) -> None:
    main, access = loggers
    stream = io.StringIO()
    theirs = logging.StreamHandler(stream)
    main.handlers[:] = [theirs]
    main.propagate = True
    configure_logging(Config(log_level="info"))
    assert main.handlers == [theirs] and main.propagate
    access.info("a request")
    assert "a request" in stream.getvalue()
