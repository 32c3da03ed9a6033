"""Real framework apps, written as their users write them, for tests/test_frameworks.py:
a Django project with Channels (`django_app`), a Starlette app (`starlette_app`) and a
FastAPI app (`fastapi_app`).

Django is configured here, in code, once: importing this package calls
`settings.configure` (guarded by `settings.configured`) and `django.setup()`. No files on
disk, no DJANGO_SETTINGS_MODULE; nothing else in the test suite uses Django.
"""

from __future__ import annotations

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="multiplex-tests-only-not-a-secret",
        ALLOWED_HOSTS=["*"],  # the HTTP/3 test client says "localhost", httpx "127.0.0.1"
        ROOT_URLCONF="tests.apps_frameworks.django_app",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "channels",
        ],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
        ASGI_APPLICATION="tests.apps_frameworks.django_app.application",
        USE_TZ=True,
    )
    django.setup()
