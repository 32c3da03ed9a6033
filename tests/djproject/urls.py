from __future__ import annotations

import hashlib

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    """A multipart file upload through Django's own parsing (spooled to disk when big)."""
    uploaded = request.FILES["file"]
    digest = hashlib.sha256()
    for chunk in uploaded.chunks():
        digest.update(chunk)
    return JsonResponse(
        {"name": uploaded.name, "size": uploaded.size, "sha256": digest.hexdigest()}
    )


def hello(request: HttpRequest) -> HttpResponse:
    """For benchmarks: the plainest Django view."""
    return HttpResponse("Hello, world!", content_type="text/plain")


urlpatterns = [path("admin/", admin.site.urls), path("upload", upload), path("hello", hello)]
