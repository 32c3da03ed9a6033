"""Turn defaults, a TOML file, ``MULTIPLEX_*`` variables and CLI flags into one Config.

Precedence, lowest first: Config defaults < caller's base values (e.g. what `demo`
changes) < TOML file < environment < command line. Every source is checked as it is
read, so an error names where the bad value came from; `validate()` then checks the
merged result, because some rules (certfile needs keyfile) span several settings.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import logging
import os
import re
import sys
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from multiplex.config import RENAMED, Config, fields
from multiplex.errors import ConfigError
from multiplex.proxy import check_entries

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "MULTIPLEX_"

# RFC 9113 section 6.5.2 limits.
H2_MIN_FRAME_SIZE = 16_384
H2_MAX_FRAME_SIZE = 16_777_215
H2_MAX_WINDOW = 2**31 - 1
# The connection window starts at 65535 and can only grow by WINDOW_UPDATE (6.9.2).
H2_DEFAULT_WINDOW = 65_535

KNOWN_ALPN = ("h2", "http/1.1")


# --- field types -------------------------------------------------------------------


@dataclass(frozen=True)
class FieldKind:
    """What a Config field holds, as far as parsing text and TOML is concerned."""

    base: type  # bool, int, float or str
    optional: bool  # None is allowed
    is_list: bool  # list[base]


def _classify(hint: Any) -> FieldKind:
    optional = False
    args = typing.get_args(hint)
    if args and type(None) in args:
        optional = True
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return FieldKind(item, optional, True)
    return FieldKind(hint, optional, False)


def field_kinds() -> dict[str, FieldKind]:
    """Name -> kind for every Config field (annotations are strings; resolve them)."""
    hints = typing.get_type_hints(Config)
    return {f.name: _classify(hints[f.name]) for f in fields()}


FIELD_KINDS = field_kinds()


log = logging.getLogger("multiplex.config")


def renamed(old: str, where: str) -> str:
    """The current name of a renamed setting, with a warning naming where the old one was
    used (the process may not have configured logging yet: Python's last-resort handler
    still prints warnings to stderr)."""
    new = RENAMED[old]
    log.warning("%s: setting %r was renamed %r; the old name will go away", where, old, new)
    return new


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELD_KINDS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- bind addresses ----------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """One parsed `--bind` value. Exactly the members of its `kind` are set."""

    kind: Literal["tcp", "unix", "fd"]
    host: str | None = None  # tcp: IP literal (v6 without brackets) or host name
    port: int | None = None  # tcp: 0 asks the OS for a free port
    path: str | None = None  # unix
    fd: int | None = None  # fd: an inherited, already listening socket

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


# One DNS label; host names may use `_` in practice (containers), so allow it.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


def parse_bind(text: str) -> Bind:
    """Parse `host:port`, `[v6]:port`, `unix:PATH` or `fd://N`; ConfigError otherwise."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(f"bad bind {text!r}: unix: needs a path, e.g. unix:/run/app.sock")
        return Bind("unix", path=path)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise ConfigError(f"bad bind {text!r}: fd:// needs a file descriptor number")
        return Bind("fd", fd=int(number))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad bind {text!r}: expected [IPv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"bad bind {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ConfigError(
                f"bad bind {text!r}: expected host:port, [IPv6]:port, unix:PATH or fd://N"
            )
        if not host:
            raise ConfigError(f"bad bind {text!r}: no host; use 0.0.0.0:{port} or [::]:{port}")
        if ":" in host:
            raise ConfigError(
                f"bad bind {text!r}: put an IPv6 address in brackets, e.g. [::1]:8000"
            )
        if len(host) > 253 or not _HOSTNAME.match(host):
            raise ConfigError(f"bad bind {text!r}: {host!r} is not a host name or IPv4 address")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"bad bind {text!r}: port must be a number from 0 to 65535")
    return Bind("tcp", host=host, port=int(port))


# --- values from text (environment) and from TOML ------------------------------------

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _scalar_from_text(kind: FieldKind, text: str) -> Any:
    """Parse one scalar; raises ValueError with the reason."""
    if kind.base is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("expected 1/0, true/false or yes/no")
    if kind.base is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    if kind.base is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError("expected a number") from None
    return text


def value_from_text(name: str, text: str) -> Any:
    """The value of field `name` written as text: lists comma-separated, and an empty
    optional setting means "unset" so that `MULTIPLEX_CERTFILE=` can undo a TOML value."""
    kind = FIELD_KINDS[name]
    if kind.is_list:
        return [_scalar_from_text(kind, item.strip()) for item in text.split(",") if item.strip()]
    if kind.optional and text == "":
        return None
    return _scalar_from_text(kind, text)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _check_toml_scalar(kind: FieldKind, value: Any) -> Any:
    # bool is an int subclass: reject it where a number is expected.
    if kind.base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if type(value) is kind.base:
        return value
    raise ValueError(f"must be {_TYPE_NAMES[kind.base]}, not {type(value).__name__}")


def value_from_toml(name: str, value: Any) -> Any:
    kind = FIELD_KINDS[name]
    if kind.is_list:
        if isinstance(value, str):  # `bind = "0.0.0.0:80"` reads naturally too
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"must be a list of {_PLURALS[kind.base]}")
        return [_check_toml_scalar(kind, item) for item in value]
    return _check_toml_scalar(kind, value)


def read_toml(path: str) -> dict[str, Any]:
    """Settings from a TOML file: keys at top level and/or under `[multiplex]`."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    table = data.pop("multiplex", {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path!r}: `multiplex` must be a table")
    settings: dict[str, Any] = {}
    for key, value in [*data.items(), *table.items()]:
        if key in RENAMED:
            key = renamed(key, f"config file {path!r}")
        if key not in FIELD_KINDS:
            hint = _unknown_key_message(key)
            raise ConfigError(f"config file {path!r}: unknown setting {key!r}{hint}")
        if key in settings:
            raise ConfigError(
                f"config file {path!r}: {key!r} is set both at top level and in [multiplex]"
            )
        try:
            settings[key] = value_from_toml(key, value)
        except ValueError as exc:
            raise ConfigError(f"config file {path!r}: {key!r} {exc}") from None
    return settings


def read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from `MULTIPLEX_<FIELD>` variables. Other MULTIPLEX_* names are left
    alone: the prefix is not ours alone to police."""
    settings: dict[str, Any] = {}
    for old in RENAMED:
        variable = ENV_PREFIX + old.upper()
        if variable in environ:
            name = renamed(old, variable)
            try:
                settings[name] = value_from_text(name, environ[variable])
            except ValueError as exc:
                raise ConfigError(f"{variable}={environ[variable]!r}: {exc}") from None
    for name in FIELD_KINDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            try:
                settings[name] = value_from_text(name, environ[variable])
            except ValueError as exc:
                raise ConfigError(f"{variable}={environ[variable]!r}: {exc}") from None
    return settings


# --- the merge ------------------------------------------------------------------------


def load_config(
    cli_values: Mapping[str, Any],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Merge every source into a validated Config.

    `cli_values` holds only the options actually given on the command line (field name
    -> parsed value); `base` overrides Config defaults but nothing else (the `demo`
    command's app and bind). `environ` defaults to `os.environ`.
    """
    values: dict[str, Any] = dict(base or {})
    if config_file is not None:
        values.update(read_toml(config_file))
    values.update(read_environ(os.environ if environ is None else environ))
    for name, value in cli_values.items():
        if name in RENAMED:
            name = renamed(name, "settings")
        if name not in FIELD_KINDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value
    config = Config(**values)
    validate(config)
    return config


# --- validation -------------------------------------------------------------------------

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

# Every numeric setting must be > 0 except these, where 0 has a meaning.
_ZERO_ALLOWED = {
    "graceful_timeout": "cancel in-flight requests at once",
    "cert_reload_interval": "reload certificates only on SIGHUP",
    "gc_young_threshold": "no automatic garbage collection",
}


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(\*\.)?({_LABEL}\.)*{_LABEL}$", re.IGNORECASE)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(config: Config) -> None:
    """Raise ConfigError (one line, naming the setting) for the first invalid setting."""
    for f in fields():
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise ConfigError(f"{_flag(f.name)}: {value!r} is not one of {', '.join(choices)}")

    for name, kind in FIELD_KINDS.items():
        if kind.base in (int, float) and not kind.is_list:
            _check_positive(name, getattr(config, name))

    _check_range(
        "h2_max_frame_size", config.h2_max_frame_size, H2_MIN_FRAME_SIZE, H2_MAX_FRAME_SIZE
    )
    _check_range("h2_initial_window_size", config.h2_initial_window_size, 1, H2_MAX_WINDOW)
    _check_range(
        "h2_connection_window_size",
        config.h2_connection_window_size,
        H2_DEFAULT_WINDOW,
        H2_MAX_WINDOW,
    )

    if config.app is not None:
        module, sep, attr = config.app.partition(":")
        if not sep or not _DOTTED.match(module) or not _DOTTED.match(attr):
            raise ConfigError(
                f"app {config.app!r} must look like module:attribute, e.g. myproject.asgi:app"
            )
    if not os.path.isdir(config.app_dir):
        raise ConfigError(f"--app-dir {config.app_dir!r} is not a directory")

    for bind in config.bind:
        parse_bind(bind)

    bad = check_entries(config.forwarded_allow_ips)
    if bad is not None:
        raise ConfigError(
            f"--forwarded-allow-ips: {bad!r} is not an IP address, a CIDR network or *"
        )

    _validate_tls(config)
    _validate_quic(config)


def _check_positive(name: str, value: float) -> None:
    # `not value > 0` rather than `value <= 0` so that NaN is rejected too.
    if name in _ZERO_ALLOWED:
        if not value >= 0:
            raise ConfigError(f"{_flag(name)} must be 0 or more, got {value}")
    elif not value > 0:
        raise ConfigError(f"{_flag(name)} must be positive, got {value}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{_flag(name)} must be from {low} to {high} (RFC 9113), got {value}")


def _validate_tls(config: Config) -> None:
    if config.certfile is not None and config.keyfile is None:
        raise ConfigError("--certfile given without --keyfile")
    if config.keyfile is not None and config.certfile is None:
        raise ConfigError("--keyfile given without --certfile")
    for name in ("certfile", "keyfile", "ca_certs"):
        path = getattr(config, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{_flag(name)} {path!r}: no such file")
    if config.verify_client and config.ca_certs is None:
        raise ConfigError("--verify-client needs --ca-certs to verify against")
    if config.ca_certs is not None and not config.tls:
        raise ConfigError("--ca-certs needs TLS: give --certfile and --keyfile too")
    if config.sni_certs_dir is not None and not os.path.isdir(config.sni_certs_dir):
        raise ConfigError(f"--sni-certs-dir {config.sni_certs_dir!r} is not a directory")
    _validate_acme(config)
    if not config.alpn_protocols:
        raise ConfigError("--alpn-protocols must name at least one protocol")
    for proto in config.alpn_protocols:
        if proto not in KNOWN_ALPN:
            raise ConfigError(f"--alpn-protocols: {proto!r} is not one of {', '.join(KNOWN_ALPN)}")


def _validate_quic(config: Config) -> None:
    # getattr: the HTTP/3 settings are optional to this module (added with QUIC support).
    for bind in getattr(config, "quic_bind", []):
        if parse_bind(bind).kind != "tcp":
            raise ConfigError(f"--quic-bind {bind!r}: HTTP/3 needs a UDP host:port")
        if not config.tls:
            raise ConfigError("--quic-bind needs TLS: give --certfile and --keyfile too")


def _validate_acme(config: Config) -> None:
    if config.acme_domain and config.workers > 1:
        # Each worker would order its own certificate, and a CA's validation connection
        # could reach a worker that does not hold the challenge.
        raise ConfigError("--acme-domain needs --workers 1 (one ACME client per server)")
    if config.acme_challenge == "http-01" and config.acme_domain and not config.acme_http_bind:
        raise ConfigError("--acme-challenge http-01 needs --acme-http-bind (e.g. 0.0.0.0:80)")
    if config.acme_http_bind is not None and parse_bind(config.acme_http_bind).kind != "tcp":
        raise ConfigError(f"--acme-http-bind {config.acme_http_bind!r}: needs host:port")
    if config.acme_ca_certs is not None and not os.path.isfile(config.acme_ca_certs):
        raise ConfigError(f"--acme-ca-certs {config.acme_ca_certs!r}: no such file")
    if config.acme_ari_min_interval > config.acme_ari_max_interval:
        raise ConfigError("--acme-ari-min-interval must not exceed --acme-ari-max-interval")
    for name in config.acme_domain:
        if not _DOMAIN.match(name):
            raise ConfigError(f"--acme-domain {name!r} is not a DNS name")


# --- event loop -------------------------------------------------------------------------


def _have_uvloop() -> bool:
    # Import rather than look for it: a broken install should count as missing.
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_loop(config: Config) -> str:
    """`asyncio` or `uvloop`: what `config.loop` means on this machine."""
    if config.loop == "asyncio":
        return "asyncio"
    if _have_uvloop():
        return "uvloop"
    if config.loop == "uvloop":
        raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)")
    return "asyncio"


def install_event_loop(config: Config) -> str:
    """Set the event loop policy `asyncio.run()` will use; returns the loop's name.

    A policy rather than `asyncio.run(loop_factory=...)` because the latter needs 3.12
    and `server.run()` owns the `asyncio.run` call. Policies are deprecated from 3.14,
    hence the silenced warning; they still work there.
    """
    name = resolve_loop(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if name == "uvloop":
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        else:
            asyncio.set_event_loop_policy(None)
    return name
