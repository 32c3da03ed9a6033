"""The `multiplex` command: `multiplex APP`, `multiplex demo`, `multiplex certs`.

Options are generated from the Config fields, so a new setting gets its flag, its
TOML key and its environment variable without touching this file. Options default to
"not given" (argparse.SUPPRESS) so that only flags actually typed override the TOML
file and the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from multiplex import __version__
from multiplex.config import RENAMED, Config, fields
from multiplex.errors import ConfigError, StartupError
from multiplex.logs import configure_logging
from multiplex.settings import (
    ENV_PREFIX,
    FIELD_KINDS,
    install_event_loop,
    load_config,
    parse_bind,
)

if TYPE_CHECKING:
    from multiplex.devcerts import DevCerts

PROG = "multiplex"
DEMO_APP = "multiplex.demo:app"
DEMO_BIND = "127.0.0.1:8443"

USAGE = """\
multiplex APP [options]          serve the ASGI app APP (module:attribute)
       multiplex demo [options]         serve the built-in demo over TLS with dev certificates
       multiplex certs [--regenerate] [--dir DIR]
                                        create (once) and show the dev CA and certificate"""

EPILOG = f"""\
Every option can also be set in a TOML file (--config; key = option name with
underscores, at top level or under [multiplex]) or in an environment variable
{ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}LOG_LEVEL=debug; lists comma-separated; booleans
1/0, true/false, yes/no). Precedence: defaults < TOML file < environment < flags.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 if the server could not
start, 2 for invalid options or configuration."""

# Section titles for --help, keyed by the first field of each section in Config's
# declaration order; fields added later fall into the section they are declared in.
SECTIONS = {
    "app": "application",
    "bind": "listening",
    "certfile": "TLS and protocols",
    "loop": "process and logging",
    "graceful_timeout": "timeouts (seconds)",
    "write_buffer_high": "buffers and HTTP limits",
    "quic_bind": "HTTP/3 (QUIC)",
}

# Fields that make no sense for `multiplex demo` (it always serves the demo app).
DEMO_EXCLUDED = ("app", "factory", "app_dir")


# --- parsers --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error of ours (the
    full usage is several lines and buries the actual complaint)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see `{self.prog} --help`)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _metavar(f: dataclasses.Field[Any]) -> str | None:
    if f.metadata.get("choices"):
        return None  # argparse shows {a,b,c}
    kind = FIELD_KINDS[f.name]
    if kind.base is float:
        return "SECONDS"
    if kind.base is int:
        return "N"
    if f.name.endswith("file") or f.name == "ca_certs":
        return "FILE"
    if f.name.endswith("dir"):
        return "DIR"
    return f.name.upper().removesuffix("S") if kind.is_list else f.name.upper()


def _help(f: dataclasses.Field[Any], default: Any) -> str:
    # Backticks are for the Markdown table; `%` would be read as a format by argparse.
    text = str(f.metadata["help"]).replace("`", "").replace("%", "%%")
    if f.metadata.get("repeat"):
        text += " Repeat the flag for several."
    if isinstance(default, list):
        default = ",".join(default) if default else None
    if isinstance(default, bool):
        default = "on" if default else "off"
    if default not in (None, "") and "Default" not in text:
        text += f" (default: {default})"
    return text


def _add_config_options(parser: argparse.ArgumentParser, exclude: tuple[str, ...]) -> None:
    defaults = Config()
    group = parser.add_argument_group("options")
    for f in fields():
        if f.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[f.name])
        if f.name in exclude:
            continue
        kind = FIELD_KINDS[f.name]
        common: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": _help(f, getattr(defaults, f.name)),
        }
        if f.metadata.get("positional"):
            del common["dest"]  # a positional's dest is its name
            group.add_argument(f.name, nargs="?", metavar=f.name.upper(), **common)
        elif kind.base is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **common)
        else:
            if kind.is_list:
                common["action"] = "append"
            if kind.base in (int, float):
                common["type"] = kind.base
            group.add_argument(
                _flag(f.name), choices=f.metadata.get("choices"), metavar=_metavar(f), **common
            )
    # Renamed settings keep their old flags, hidden; load_config warns and maps them.
    for old_name, new_name in RENAMED.items():
        if new_name not in exclude:
            hidden: dict[str, Any] = {"dest": old_name, "default": argparse.SUPPRESS}
            if FIELD_KINDS[new_name].base in (int, float):
                hidden["type"] = FIELD_KINDS[new_name].base
            parser.add_argument(_flag(old_name), help=argparse.SUPPRESS, **hidden)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="Read settings from this TOML file (flags and environment override it).",
    )
    _add_version(parser)


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} {__version__} (Python {sys.version.split()[0]})",
    )


def serve_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage=USAGE,
        description="An HTTP/1.1 and HTTP/2 ASGI server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser)
    _add_config_options(parser, exclude=())
    return parser


def demo_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} demo",
        usage=f"{PROG} demo [options]",
        description=(
            "Serve the built-in demo app, by default on https://127.0.0.1:8443 with the"
            " development certificate from `multiplex certs` (created on first use)."
            " Give --certfile/--keyfile to use your own, or --bind to listen elsewhere."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(parser)
    _add_config_options(parser, exclude=DEMO_EXCLUDED)
    return parser


def certs_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} certs",
        description=(
            "Create (on first use) a local development CA and a certificate for localhost,"
            " 127.0.0.1 and ::1 signed by it, and show where they are and how to trust the CA."
        ),
    )
    parser.add_argument("--dir", metavar="DIR", help="Keep the files here instead of the default.")
    parser.add_argument(
        "--regenerate", action="store_true", help="Replace existing files with new ones."
    )
    _add_version(parser)
    return parser


# --- commands ---------------------------------------------------------------------------


def _given(namespace: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """Split parsed args into (config values actually given, --config file)."""
    values = vars(namespace)
    config_file = values.pop("config", None)
    return values, config_file


def _start(config: Config) -> int:
    """Logging, event loop, then the server: the part every serving command shares."""
    if config.workers > 1 or config.reload:
        configure_logging(config)
        from multiplex.supervisor import run_supervisor

        return run_supervisor(config)
    install_event_loop(config)
    configure_logging(config)
    from multiplex.server import run  # late: `certs` and `--help` need none of it

    return run(config)


def cmd_serve(argv: list[str]) -> int:
    parser = serve_parser()
    values, config_file = _given(parser.parse_args(argv))
    config = load_config(values, config_file)
    if config.app is None:
        parser.error("the following arguments are required: APP")
    return _start(config)


def cmd_demo(argv: list[str]) -> int:
    values, config_file = _given(demo_parser().parse_args(argv))
    # The demo shows WebTransport too (its page opens a session); --no-webtransport wins.
    config = load_config(values, config_file, base={"bind": [DEMO_BIND], "webtransport": True})
    # Forced after loading: a MULTIPLEX_APP in the environment must not replace the demo.
    config = config.replace(app=DEMO_APP, factory=False)
    if config.certfile is None:
        certs = _ensure_certs(None, regenerate=False)
        config = config.replace(certfile=str(certs.cert), keyfile=str(certs.key))
    if not config.quic_bind:
        # HTTP/3 on the same port numbers over UDP, advertised to TCP clients by alt-svc.
        tcp = [str(b) for b in map(parse_bind, config.bind) if b.kind == "tcp"]
        config = config.replace(quic_bind=tcp)
    print(f"multiplex demo: open {_demo_url(config)} (trust the dev CA: run `multiplex certs`)")
    sys.stdout.flush()
    return _start(config)


def _demo_url(config: Config) -> str:
    bind = parse_bind(config.bind[0])
    if bind.kind == "unix":
        return f"https+unix://{bind.path}"
    if bind.kind == "fd":
        return f"https:// on inherited socket fd {bind.fd}"
    host = bind.host or "localhost"
    if host in ("0.0.0.0", "::"):
        host = "localhost"  # what a browser on this machine can open
    elif ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{bind.port}/"


def cmd_certs(argv: list[str]) -> int:
    args = certs_parser().parse_args(argv)
    from multiplex import devcerts

    certs = _ensure_certs(Path(args.dir) if args.dir else None, regenerate=args.regenerate)
    print(devcerts.describe(certs))
    return 0


def _ensure_certs(directory: Path | None, regenerate: bool) -> DevCerts:
    from multiplex import devcerts

    try:
        return devcerts.ensure(directory, regenerate=regenerate)
    except OSError as exc:  # e.g. the directory is not writable
        where = exc.filename or directory or "the dev certificate directory"
        raise StartupError(f"cannot create dev certificates in {where}: {exc.strerror}") from None


COMMANDS = {"demo": cmd_demo, "certs": cmd_certs}


def _fail(message: str, status: int) -> int:
    """One line on stderr, no traceback: these errors are the user's to fix."""
    sys.stderr.write(f"{PROG}: error: {' '.join(message.split())}\n")
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse may SystemExit(2))."""
    args = sys.argv[1:] if argv is None else list(argv)
    command = COMMANDS.get(args[0]) if args else None
    try:
        if command is not None:
            return command(args[1:])
        return cmd_serve(args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except StartupError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:  # Ctrl-C before the server installed its handler
        return 130
