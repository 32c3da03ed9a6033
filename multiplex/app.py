"""Find the ASGI app named by `module:attribute` and make it an ASGI 3 callable.

Every failure is a StartupError with a one-line message: the user needs to know which
part of `module:attr` is wrong, not our stack.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, cast

from multiplex.config import Config
from multiplex.errors import StartupError

# Plain dicts: what the server builds and what apps get. (Apps annotated with
# MutableMapping still fit where an ASGIApp is expected.)
Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
ASGI2Instance = Callable[[Receive, Send], Awaitable[None]]
ASGI2App = Callable[[Scope], ASGI2Instance]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _add_app_dir(app_dir: str) -> None:
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


def _is_missing_module(exc: ModuleNotFoundError, module: str) -> bool:
    """True if `module` itself (or a parent package) is missing, as opposed to some
    import inside it failing: only then is "no module named X" the right message."""
    return exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))


def import_from_string(target: str) -> Any:
    """`pkg.mod:attr.sub` -> the object. Importing runs user code: anything may raise."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise StartupError(f"app {target!r} must look like module:attribute")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_missing_module(exc, module_name):
            raise StartupError(
                f"cannot import app module {module_name!r}: no module named {exc.name!r}"
                " (check the name and --app-dir)"
            ) from None
        raise StartupError(f"error while importing {module_name!r}: {_one_line(exc)}") from None
    except Exception as exc:  # SyntaxError, NameError, ... raised by the module's code
        raise StartupError(f"error while importing {module_name!r}: {_one_line(exc)}") from None

    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StartupError(
                f"attribute {attr_path!r} not found in module {module_name!r}"
            ) from None
    return obj


def _positional_arity(fn: Callable[..., Any]) -> tuple[int, int] | None:
    """(required, maximum) positional parameters; max -1 for *args; None if unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in signature.parameters.values() if p.kind in kinds]
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        return required, -1
    return required, len(params)


def is_asgi2(app: Any) -> bool:
    """ASGI 2 ("double callable"): `app(scope)` returns an instance to await with
    `(receive, send)`. Like asgiref, honour explicit markers and treat a class as
    ASGI 2 (instantiating it with the scope). Unlike asgiref's "not a coroutine function",
    a plain callable counts as ASGI 2 only if it takes exactly one argument, so that
    decorated ASGI 3 apps (sync wrappers returning awaitables) are not misread."""
    if getattr(app, "_asgi_single_callable", False):
        return False
    if getattr(app, "_asgi_double_callable", False):
        return True
    if inspect.isclass(app):
        return True
    if inspect.iscoroutinefunction(app):
        return False
    call = getattr(app, "__call__", None)  # noqa: B004 - we need the bound method itself
    if call is not None and inspect.iscoroutinefunction(call):
        return False
    arity = _positional_arity(app)
    return arity is not None and arity[0] <= 1 and arity[1] == 1


def is_wsgi(app: Any) -> bool:
    """A WSGI app (PEP 3333): a plain callable taking exactly `(environ, start_response)`,
    such as a function, a Flask app or Django's WSGIHandler. ASGI 3 apps take three
    arguments and ASGI 2 apps one, so the arity tells them apart; a class or anything
    async is never WSGI."""
    if getattr(app, "_asgi_single_callable", False) or getattr(app, "_asgi_double_callable", False):
        return False
    if inspect.isclass(app) or inspect.iscoroutinefunction(app):
        return False
    call = getattr(app, "__call__", None)  # noqa: B004 - we need the bound method itself
    if call is not None and inspect.iscoroutinefunction(call):
        return False
    arity = _positional_arity(app)
    return arity is not None and arity == (2, 2)


def asgi2_to_asgi3(app2: ASGI2App) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        instance = app2(scope)
        await instance(receive, send)

    app.__qualname__ = f"asgi2_to_asgi3({getattr(app2, '__qualname__', app2)!r})"
    return app


def _describe(obj: Any) -> str:
    return type(obj).__name__


def load_app(config: Config) -> ASGIApp:
    """Import `config.app` (after putting `config.app_dir` first on sys.path), call it if
    `config.factory`, and return an ASGI 3 callable."""
    if config.app is None:
        raise StartupError("no app given: pass it as module:attribute")
    _add_app_dir(config.app_dir)
    obj = import_from_string(config.app)

    if config.factory:
        if not callable(obj):
            raise StartupError(
                f"app factory {config.app!r} is not callable (it is {_describe(obj)})"
            )
        try:
            obj = obj()
        except Exception as exc:
            raise StartupError(f"app factory {config.app!r} failed: {_one_line(exc)}") from None
        if inspect.isawaitable(obj):
            # An `async def` factory: close the coroutine so Python does not warn.
            getattr(obj, "close", lambda: None)()
            raise StartupError(f"app factory {config.app!r} must be a plain function, not async")
        where = f"the object returned by app factory {config.app!r}"
    else:
        where = repr(config.app)

    if not callable(obj):
        raise StartupError(f"{where} is not callable (it is {_describe(obj)})")
    return adapt_app(obj, config)


def adapt_app(obj: Any, config: Config) -> ASGIApp:
    """Make `obj` an ASGI 3 callable as `config.interface` says (auto: detect it)."""
    interface = config.interface
    if interface == "auto":
        interface = "wsgi" if is_wsgi(obj) else "asgi2" if is_asgi2(obj) else "asgi3"
    if interface == "wsgi":
        from multiplex.wsgi import WSGIAdapter

        return WSGIAdapter(obj, config.wsgi_threads)
    if interface == "asgi2":
        app: ASGIApp = asgi2_to_asgi3(obj)
        return app
    return cast(ASGIApp, obj)
