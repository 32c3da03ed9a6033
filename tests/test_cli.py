"""`python -m multiplex` as a user runs it: a real subprocess, real files, no mocks.

None of these start a server: each fails (or finishes) before listening.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from multiplex.config import fields
from multiplex.settings import FIELD_KINDS

ROOT = Path(__file__).resolve().parent.parent


def multiplex(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MULTIPLEX_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "multiplex", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd or ROOT,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("multiplex: error: ")
    return lines[0]


def test_unknown_option_is_a_usage_error() -> None:
    line = assert_one_line_error(multiplex("tests.cli_apps:hello", "--bogus"), 2)
    assert "unrecognized arguments: --bogus" in line


def test_bad_choice_is_a_usage_error() -> None:
    line = assert_one_line_error(multiplex("tests.cli_apps:hello", "--lifespan", "maybe"), 2)
    assert "--lifespan" in line


def test_no_app_is_a_usage_error() -> None:
    line = assert_one_line_error(multiplex(), 2)
    assert "APP" in line


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = assert_one_line_error(multiplex("tests.cli_apps:hello", "--config", str(missing)), 2)
    assert str(missing) in line


def test_unknown_toml_key(tmp_path: Path) -> None:
    config = tmp_path / "multiplex.toml"
    config.write_text('[multiplex]\napp = "tests.cli_apps:hello"\nlog_levle = "debug"\n')
    line = assert_one_line_error(multiplex("--config", str(config)), 2)
    assert "'log_levle'" in line and str(config) in line
    assert "did you mean 'log_level'" in line


def test_bad_environment_variable() -> None:
    result = multiplex("tests.cli_apps:hello", env={"MULTIPLEX_BACKLOG": "plenty"})
    line = assert_one_line_error(result, 2)
    assert "MULTIPLEX_BACKLOG" in line


def test_invalid_setting_from_flags() -> None:
    result = multiplex("tests.cli_apps:hello", "--h2-max-frame-size", "1024")
    assert "--h2-max-frame-size must be from 16384" in assert_one_line_error(result, 2)


def test_missing_certfile_is_named() -> None:
    result = multiplex(
        "tests.cli_apps:hello", "--certfile", "/no/such/cert.pem", "--keyfile", "/no/key.pem"
    )
    assert "/no/such/cert.pem" in assert_one_line_error(result, 2)


def test_app_module_missing_exits_1() -> None:
    line = assert_one_line_error(multiplex("no_such_module_anywhere:app"), 1)
    assert "no module named 'no_such_module_anywhere'" in line


def test_import_error_inside_the_app_exits_1(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import a_dependency_that_is_missing\n")
    line = assert_one_line_error(multiplex("broken_app:app", "--app-dir", str(tmp_path)), 1)
    assert "error while importing 'broken_app'" in line
    assert "a_dependency_that_is_missing" in line


def test_uvloop_required_but_missing(tmp_path: Path) -> None:
    # A `uvloop` that cannot be imported, first on the path: as good as not installed.
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop is broken here')\n")
    result = multiplex(
        "tests.cli_apps:hello",
        "--loop",
        "uvloop",
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
    )
    assert "uvloop is not installed" in assert_one_line_error(result, 2)


def test_certs_prints_the_ca_path(tmp_path: Path) -> None:
    result = multiplex("certs", "--dir", str(tmp_path / "certs"))
    assert result.returncode == 0, result.stderr
    ca = tmp_path / "certs" / "ca.pem"
    assert ca.is_file()
    assert str(ca) in result.stdout


def test_help_lists_every_setting() -> None:
    result = multiplex("--help")
    assert result.returncode == 0
    for field in fields():
        if field.metadata.get("positional"):
            assert field.name.upper() in result.stdout
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in result.stdout, flag
        if FIELD_KINDS[field.name].base is bool:
            assert "--no-" + field.name.replace("_", "-") in result.stdout
    assert "--config FILE" in result.stdout
    assert "MULTIPLEX_" in result.stdout
    assert "multiplex demo" in result.stdout and "multiplex certs" in result.stdout


@pytest.mark.parametrize("command", ["demo", "certs"])
def test_subcommand_help(command: str) -> None:
    result = multiplex(command, "--help")
    assert result.returncode == 0
    assert f"multiplex {command}" in result.stdout


def test_version() -> None:
    result = multiplex("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("multiplex ")
