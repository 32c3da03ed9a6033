"""Framework hello-world apps for `interop.bench --app`: the same for every server.

    flask_app    a Flask (WSGI) app answering "Hello, world!" at /
The Django project's ASGI app is tests.djproject.asgi:application (its /hello view).
"""

from __future__ import annotations

import flask

flask_app = flask.Flask("multiplex_bench")


@flask_app.get("/")
def hello() -> str:
    return "Hello, world!"
