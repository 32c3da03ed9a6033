"""Loading the app: `module:attr`, factories, ASGI 2 adaptation, and each error."""

from __future__ import annotations

import asyncio
import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from multiplex.app import ASGIApp, is_asgi2, load_app
from multiplex.config import Config
from multiplex.errors import StartupError

_counter = itertools.count()

ASGI3_SOURCE = """
async def app(scope, receive, send):
    message = await receive()
    await send({"type": "echo", "scope": scope["type"], "got": message["type"]})
"""

ModuleWriter = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path) -> Iterator[ModuleWriter]:
    """Write a throwaway module into tmp_path; returns its (unique) name. Unique names
    keep one test's module out of another's way in sys.modules."""
    names: list[str] = []

    def write(source: str) -> str:
        name = f"mx_testapp_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    saved_path = list(sys.path)
    yield write
    sys.path[:] = saved_path
    for name in names:
        sys.modules.pop(name, None)


def load(tmp_path: Path, target: str, **extra: Any) -> ASGIApp:
    return load_app(Config(app=target, app_dir=str(tmp_path), **extra))


def drive(app: ASGIApp, scope_type: str = "http") -> list[dict[str, Any]]:
    """Call an ASGI 3 app with a one-message receive and a recording send."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": scope_type}, receive, send))  # type: ignore[arg-type]
    return sent


ECHOED = [{"type": "echo", "scope": "http", "got": "http.request"}]


# --- good apps --------------------------------------------------------------------------


def test_asgi3_function(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(ASGI3_SOURCE)
    app = load(tmp_path, f"{module}:app")
    assert app is sys.modules[module].app  # not wrapped
    assert drive(app) == ECHOED


def test_dotted_attribute_and_callable_instance(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(
        ASGI3_SOURCE
        + """
class App:
    async def __call__(self, scope, receive, send):
        await app(scope, receive, send)

class holder:
    inner = App()
"""
    )
    loaded = load(tmp_path, f"{module}:holder.inner")
    assert loaded is sys.modules[module].holder.inner
    assert drive(loaded) == ECHOED


def test_factory(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(
        ASGI3_SOURCE
        + """
calls = []
def create_app():
    calls.append(1)
    return app
"""
    )
    loaded = load(tmp_path, f"{module}:create_app", factory=True)
    assert loaded is sys.modules[module].app
    assert sys.modules[module].calls == [1]


def test_asgi2_class_is_adapted(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(
        """
class App:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        message = await receive()
        await send({"type": "echo", "scope": self.scope["type"], "got": message["type"]})
"""
    )
    app = load(tmp_path, f"{module}:App")
    assert app is not sys.modules[module].App
    assert drive(app) == ECHOED


def test_asgi2_function_is_adapted(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(
        """
def app(scope):
    async def instance(receive, send):
        message = await receive()
        await send({"type": "echo", "scope": scope["type"], "got": message["type"]})
    return instance
"""
    )
    assert drive(load(tmp_path, f"{module}:app")) == ECHOED


def test_factory_returning_asgi2_is_adapted(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(
        """
class App2:
    def __init__(self, scope):
        self.scope = scope
    async def __call__(self, receive, send):
        await send({"type": "echo", "scope": self.scope["type"], "got": (await receive())["type"]})

def make():
    return App2
"""
    )
    assert drive(load(tmp_path, f"{module}:make", factory=True)) == ECHOED


def test_is_asgi2_keeps_wrapped_asgi3_apps() -> None:
    async def asgi3(scope: Any, receive: Any, send: Any) -> None:
        pass

    def sync_wrapper(scope: Any, receive: Any, send: Any) -> Any:  # e.g. a decorator
        return asgi3(scope, receive, send)

    def asgi2(scope: Any) -> Any:
        return None

    assert not is_asgi2(asgi3)
    assert not is_asgi2(sync_wrapper)
    assert is_asgi2(asgi2)
    asgi2._asgi_single_callable = True  # type: ignore[attr-defined]
    assert not is_asgi2(asgi2)


# --- errors -----------------------------------------------------------------------------


def load_error(tmp_path: Path, target: str, **extra: Any) -> str:
    with pytest.raises(StartupError) as info:
        load(tmp_path, target, **extra)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_module_not_found(tmp_path: Path, write_module: ModuleWriter) -> None:
    message = load_error(tmp_path, "mx_no_such_module:app")
    assert message.startswith("cannot import app module 'mx_no_such_module'")
    assert "no module named 'mx_no_such_module'" in message


def test_package_not_found(tmp_path: Path, write_module: ModuleWriter) -> None:
    message = load_error(tmp_path, "mx_no_such_pkg.sub:app")
    assert "no module named 'mx_no_such_pkg'" in message


def test_import_error_inside_the_module(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("import mx_missing_dependency\n" + ASGI3_SOURCE)
    message = load_error(tmp_path, f"{module}:app")
    # The user's module exists: say what failed inside it, not "no module <app>".
    assert message.startswith(f"error while importing {module!r}: ModuleNotFoundError")
    assert "mx_missing_dependency" in message


def test_exception_inside_the_module(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("raise RuntimeError('no DATABASE_URL\\nset')\n")
    message = load_error(tmp_path, f"{module}:app")
    assert message == f"error while importing {module!r}: RuntimeError: no DATABASE_URL set"


def test_syntax_error_in_the_module(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("def broken(:\n")
    assert "SyntaxError" in load_error(tmp_path, f"{module}:app")


def test_attribute_missing(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(ASGI3_SOURCE)
    message = load_error(tmp_path, f"{module}:application")
    assert message == f"attribute 'application' not found in module {module!r}"


def test_dotted_attribute_missing(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module(ASGI3_SOURCE)
    assert "attribute 'app.nope' not found" in load_error(tmp_path, f"{module}:app.nope")


def test_not_callable(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("app = 42\n")
    message = load_error(tmp_path, f"{module}:app")
    assert message == f"'{module}:app' is not callable (it is int)"


def test_factory_fails(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("def make():\n    raise ValueError('missing SECRET_KEY')\n")
    message = load_error(tmp_path, f"{module}:make", factory=True)
    assert message == f"app factory '{module}:make' failed: ValueError: missing SECRET_KEY"


def test_factory_needs_arguments(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("def make(settings):\n    pass\n")
    message = load_error(tmp_path, f"{module}:make", factory=True)
    assert message.startswith(f"app factory '{module}:make' failed: TypeError")


def test_factory_returns_non_callable(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("def make():\n    return None\n")
    message = load_error(tmp_path, f"{module}:make", factory=True)
    assert message == (
        f"the object returned by app factory '{module}:make' is not callable (it is NoneType)"
    )


def test_async_factory_is_refused(tmp_path: Path, write_module: ModuleWriter) -> None:
    module = write_module("async def make():\n    pass\n")
    assert "must be a plain function" in load_error(tmp_path, f"{module}:make", factory=True)


def test_bad_target_format(tmp_path: Path) -> None:
    assert "module:attribute" in load_error(tmp_path, "just_a_module")
