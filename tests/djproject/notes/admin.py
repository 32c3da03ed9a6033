from __future__ import annotations

from django.contrib import admin

from tests.djproject.notes.models import Note

admin.site.register(Note)
