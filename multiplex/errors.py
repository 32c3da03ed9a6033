"""Exceptions that cross module boundaries.

`ConfigError` and `StartupError` carry a one-line message meant for the user: the CLI
prints it as is and exits (2 for bad configuration, 1 for a failure to start).
"""

from __future__ import annotations


class MultiplexError(Exception):
    """Base of our own errors."""


class ConfigError(MultiplexError):
    """A setting is invalid (bad flag value, unreadable TOML, missing file). Exit status 2."""


class StartupError(MultiplexError):
    """The server could not start (app import failed, port in use, lifespan failed). Exit 1."""


class ClientDisconnected(OSError):
    """Raised by ASGI `send()` once the client has gone (ASGI HTTP spec 2.4)."""
