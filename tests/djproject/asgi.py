"""The ASGI entry point, as a Channels project's asgi.py is: Django for HTTP (plus static
files served by the app, what `runserver` does, so the admin's CSS comes through
multiplex too) and the chat consumer for WebSockets, behind Channels' auth stack."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djproject.settings")

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

django_http = ASGIStaticFilesHandler(get_asgi_application())  # sets Django up first

from channels.auth import AuthMiddlewareStack  # noqa: E402 (Django is set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 (Django is set up first)
from django.urls import path  # noqa: E402 (Django is set up first)

from tests.djproject.chat import ChatConsumer  # noqa: E402 (Django is set up first)

application = ProtocolTypeRouter(
    {
        "http": django_http,
        "websocket": AuthMiddlewareStack(URLRouter([path("ws/chat/", ChatConsumer.as_asgi())])),
    }
)
