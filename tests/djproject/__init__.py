"""A Django project on disk, as `django-admin startproject` lays one out, for tests that
serve it from a separate `multiplex` process (tests/test_django_project.py): the admin
with a `notes.Note` model, static files through the app, a file upload view.
Configured by environment: DJPROJECT_DB (the sqlite file)."""
