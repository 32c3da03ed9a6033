"""The ASGI entry point, as a Django project's asgi.py is, plus static files served by
the app (what `runserver` does), so the admin's CSS comes through multiplex too."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djproject.settings")

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

application = ASGIStaticFilesHandler(get_asgi_application())
