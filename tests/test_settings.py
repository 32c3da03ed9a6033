"""Config loading: precedence of the sources, every validation rule, bind syntax."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from multiplex.config import Config
from multiplex.errors import ConfigError
from multiplex.settings import (
    Bind,
    install_event_loop,
    load_config,
    parse_bind,
    resolve_loop,
)


def write(tmp_path: Path, text: str, name: str = "multiplex.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- precedence ------------------------------------------------------------------------


def test_defaults_when_nothing_is_given() -> None:
    assert load_config({}, None, {}) == Config()


def test_each_source_overrides_the_one_below(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        'log_level = "debug"\nbacklog = 10\nkeep_alive_timeout = 2\n'
        'bind = ["127.0.0.1:1", "127.0.0.1:2"]\nserver_header = "from-toml"\n',
    )
    environ = {
        "MULTIPLEX_LOG_LEVEL": "warning",
        "MULTIPLEX_BACKLOG": "20",
        "MULTIPLEX_BIND": "127.0.0.1:3, [::1]:4",
        "UNRELATED": "x",
    }
    cli = {"backlog": 30}
    config = load_config(cli, toml, environ)
    assert config.server_header == "from-toml"  # TOML only
    assert config.keep_alive_timeout == 2.0  # TOML int for a float setting
    assert isinstance(config.keep_alive_timeout, float)
    assert config.log_level == "warning"  # env beats TOML
    assert config.bind == ["127.0.0.1:3", "[::1]:4"]  # lists are replaced, not merged
    assert config.backlog == 30  # CLI beats env
    assert config.access_log is True  # untouched default


def test_base_values_sit_between_defaults_and_toml(tmp_path: Path) -> None:
    base = {"bind": ["127.0.0.1:8443"], "backlog": 5}
    config = load_config({}, write(tmp_path, "backlog = 6\n"), {}, base=base)
    assert config.bind == ["127.0.0.1:8443"]
    assert config.backlog == 6


def test_toml_multiplex_table_and_top_level_both_count(tmp_path: Path) -> None:
    toml = write(tmp_path, 'backlog = 7\n[multiplex]\nlog_level = "error"\nh2c = true\n')
    config = load_config({}, toml, {})
    assert (config.backlog, config.log_level, config.h2c) == (7, "error", True)


def test_toml_single_string_for_a_list(tmp_path: Path) -> None:
    config = load_config({}, write(tmp_path, 'bind = "0.0.0.0:9000"\n'), {})
    assert config.bind == ["0.0.0.0:9000"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("backlogg = 1\n", "unknown setting 'backlogg' (did you mean 'backlog'?)"),
        ("[multiplex]\nnope = 1\n", "unknown setting 'nope'"),
        ('backlog = "many"\n', "'backlog' must be an integer, not str"),
        ("access_log = 1\n", "'access_log' must be true or false, not int"),
        ("backlog = true\n", "'backlog' must be an integer, not bool"),
        ("bind = 80\n", "'bind' must be a list of strings"),
        ("bind = [80]\n", "'bind' must be a string, not int"),
        ("multiplex = 3\n", "`multiplex` must be a table"),
        ("backlog = 1\n[multiplex]\nbacklog = 2\n", "'backlog' is set both"),
        ("backlog = \n", "is not valid TOML"),
    ],
)
def test_bad_toml_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config({}, path, {})
    assert needle in str(info.value)
    assert path in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nothere.toml' not found"):
        load_config({}, str(tmp_path / "nothere.toml"), {})


# --- environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("0", False), ("FALSE", False), ("no", False)],
)
def test_env_booleans(text: str, expected: bool) -> None:
    assert load_config({}, None, {"MULTIPLEX_H2C": text}).h2c is expected


def test_env_numbers_lists_and_empty_optional(tmp_path: Path) -> None:
    toml = write(tmp_path, 'keylog_file = "/tmp/keys"\n')
    environ = {
        "MULTIPLEX_GRACEFUL_TIMEOUT": "2.5",
        "MULTIPLEX_H2_MAX_CONCURRENT_STREAMS": "7",
        "MULTIPLEX_ALPN_PROTOCOLS": "http/1.1,,h2",
        "MULTIPLEX_KEYLOG_FILE": "",  # empty unsets an optional setting
    }
    config = load_config({}, toml, environ)
    assert config.graceful_timeout == 2.5
    assert config.h2_max_concurrent_streams == 7
    assert config.alpn_protocols == ["http/1.1", "h2"]
    assert config.keylog_file is None


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("MULTIPLEX_H2C", "maybe", "expected 1/0, true/false or yes/no"),
        ("MULTIPLEX_BACKLOG", "lots", "expected an integer"),
        ("MULTIPLEX_BACKLOG", "1.5", "expected an integer"),
        ("MULTIPLEX_LIFESPAN_TIMEOUT", "soon", "expected a number"),
    ],
)
def test_bad_env_value_names_the_variable(variable: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, None, {variable: value})
    assert str(info.value).startswith(f"{variable}=")
    assert needle in str(info.value)


# --- validation ------------------------------------------------------------------------


def _cert_pair(tmp_path: Path) -> dict[str, str]:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    return {"certfile": str(cert), "keyfile": str(key)}


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"log_level": "loud"}, "--log-level: 'loud' is not one of critical, error"),
        ({"lifespan": "sometimes"}, "--lifespan: 'sometimes' is not one of"),
        ({"loop": "trio"}, "--loop: 'trio' is not one of"),
        ({"backlog": 0}, "--backlog must be positive, got 0"),
        ({"keep_alive_timeout": -1.0}, "--keep-alive-timeout must be positive"),
        ({"lifespan_timeout": float("nan")}, "--lifespan-timeout must be positive"),
        ({"write_buffer_high": 0}, "--write-buffer-high must be positive"),
        ({"h2_max_concurrent_streams": 0}, "--h2-max-concurrent-streams must be positive"),
        ({"graceful_timeout": -0.5}, "--graceful-timeout must be 0 or more"),
        ({"gc_young_threshold": -1}, "--gc-young-threshold must be 0 or more"),
        ({"h2_max_frame_size": 16383}, "--h2-max-frame-size must be from 16384 to 16777215"),
        ({"h2_max_frame_size": 2**24}, "--h2-max-frame-size must be from 16384 to 16777215"),
        (
            {"h2_initial_window_size": 2**31},
            "--h2-initial-window-size must be from 1 to 2147483647",
        ),
        ({"h2_connection_window_size": 65534}, "--h2-connection-window-size must be from 65535"),
        ({"h2_connection_window_size": 2**31}, "--h2-connection-window-size must be from 65535"),
        ({"app": "noattr"}, "must look like module:attribute"),
        ({"app": "mod:"}, "must look like module:attribute"),
        ({"app": "a-b:c"}, "must look like module:attribute"),
        (
            {"app_dir": "/definitely/not/here"},
            "--app-dir '/definitely/not/here' is not a directory",
        ),
        ({"bind": ["127.0.0.1:80", "nonsense"]}, "bad bind 'nonsense'"),
        ({"alpn_protocols": []}, "--alpn-protocols must name at least one protocol"),
        ({"alpn_protocols": ["h2", "spdy/3"]}, "--alpn-protocols: 'spdy/3' is not one of"),
        ({"certfile": "PAIR"}, "--certfile given without --keyfile"),
        ({"keyfile": "PAIR"}, "--keyfile given without --certfile"),
        (
            {"certfile": "/no/cert.pem", "keyfile": "/no/key.pem"},
            "--certfile '/no/cert.pem': no such",
        ),
        ({"verify_client": True}, "--verify-client needs --ca-certs"),
        ({"ca_certs": "/no/ca.pem"}, "--ca-certs '/no/ca.pem': no such file"),
    ],
)
def test_validation_errors(tmp_path: Path, values: dict[str, Any], needle: str) -> None:
    pair = _cert_pair(tmp_path)
    values = {k: pair[k] if v == "PAIR" else v for k, v in values.items()}
    with pytest.raises(ConfigError) as info:
        load_config(values, None, {})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_edge_values(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "graceful_timeout": 0.0,
        "gc_young_threshold": 0,
        "h2_max_frame_size": 16_777_215,
        "h2_initial_window_size": 2**31 - 1,
        "h2_connection_window_size": 65_535,
        "app": "pkg.sub:obj.attr",
        "app_dir": str(tmp_path),
        "bind": ["[::]:0", "unix:/tmp/x.sock", "fd://3", "localhost:65535"],
        "ca_certs": _cert_pair(tmp_path)["certfile"],
        "verify_client": True,
        **_cert_pair(tmp_path),
    }
    config = load_config(values, None, {})
    assert config.tls and config.h2_max_frame_size == 16_777_215
    assert config.gc_young_threshold == 0


def test_cli_values_must_be_settings() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config({"colour": "blue"}, None, {})


# --- bind syntax -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", Bind("tcp", host="127.0.0.1", port=8000)),
        ("0.0.0.0:0", Bind("tcp", host="0.0.0.0", port=0)),
        ("localhost:443", Bind("tcp", host="localhost", port=443)),
        ("my-host.example.com.:80", Bind("tcp", host="my-host.example.com.", port=80)),
        ("[::]:8443", Bind("tcp", host="::", port=8443)),
        ("[::1]:1", Bind("tcp", host="::1", port=1)),
        ("[fe80::1%eth0]:80", Bind("tcp", host="fe80::1%eth0", port=80)),
        ("unix:/run/app.sock", Bind("unix", path="/run/app.sock")),
        ("unix:relative.sock", Bind("unix", path="relative.sock")),
        ("fd://3", Bind("fd", fd=3)),
    ],
)
def test_parse_bind(text: str, expected: Bind) -> None:
    assert parse_bind(text) == expected
    assert str(parse_bind(text)) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("8000", "expected host:port"),
        ("localhost", "expected host:port"),
        (":8000", "no host"),
        ("::1:8000", "put an IPv6 address in brackets"),
        ("[::1]8000", "expected [IPv6]:port"),
        ("[::1]", "expected [IPv6]:port"),
        ("[nothex]:80", "is not an IPv6 address"),
        ("127.0.0.1:http", "port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "port must be a number"),
        ("bad host:80", "is not a host name or IPv4 address"),
        ("unix:", "unix: needs a path"),
        ("fd://", "fd:// needs a file descriptor number"),
        ("fd://three", "fd:// needs a file descriptor number"),
    ],
)
def test_parse_bind_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bind(text)
    assert needle in str(info.value)
    assert repr(text) in str(info.value)


# --- event loop ------------------------------------------------------------------------


def test_loop_choice_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    assert resolve_loop(Config(loop="auto")) == "asyncio"
    assert resolve_loop(Config(loop="asyncio")) == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        resolve_loop(Config(loop="uvloop"))


def test_install_event_loop_sets_the_policy() -> None:
    pytest.importorskip("uvloop")
    try:
        assert install_event_loop(Config(loop="uvloop")) == "uvloop"
        loop_type = asyncio.run(_loop_type())
        assert loop_type.__module__.startswith("uvloop")
        assert install_event_loop(Config(loop="asyncio")) == "asyncio"
        assert not asyncio.run(_loop_type()).__module__.startswith("uvloop")
    finally:
        asyncio.set_event_loop_policy(None)


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


# --- renamed settings ---------------------------------------------------------------------


def test_renamed_settings_keep_working_from_every_source_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The `h11_*` names (from when h11 parsed HTTP/1.1) still configure the same limits,
    from the TOML file, the environment and the CLI, and each use says the new name."""
    from multiplex.cli import _given, serve_parser

    toml = write(tmp_path, "h11_max_incomplete_event_size = 4096\n")
    environ = {"MULTIPLEX_H11_HEADER_TIMEOUT": "2.5"}
    namespace = serve_parser().parse_args(["app:app", "--h11-max-header-count", "7"])
    cli_values, _ = _given(namespace)
    with caplog.at_level("WARNING", logger="multiplex.config"):
        config = load_config(cli_values, toml, environ)
    assert config.http1_max_head_size == 4096
    assert config.http1_header_timeout == 2.5
    assert config.http1_max_header_count == 7
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3, warned
    for old, new in [
        ("h11_max_incomplete_event_size", "http1_max_head_size"),
        ("h11_header_timeout", "http1_header_timeout"),
        ("h11_max_header_count", "http1_max_header_count"),
    ]:
        assert any(repr(old) in m and repr(new) in m for m in warned), (old, warned)
    assert any(toml in m for m in warned)
    assert any("MULTIPLEX_H11_HEADER_TIMEOUT" in m for m in warned)


def test_renamed_setting_with_a_bad_value_names_the_old_variable() -> None:
    with pytest.raises(ConfigError, match="MULTIPLEX_H11_MAX_HEADER_COUNT"):
        load_config({}, None, {"MULTIPLEX_H11_MAX_HEADER_COUNT": "many"})


def test_the_new_names_need_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="multiplex.config"):
        config = load_config({"http1_max_header_count": 9}, None, {})
    assert config.http1_max_header_count == 9
    assert not caplog.records
