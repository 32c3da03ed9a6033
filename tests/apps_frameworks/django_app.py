"""A Django project served through Channels: Django's own ASGI handler for HTTP (one
plain view), and two WebSocket consumers, an echo and a group chat over the in-memory
channel layer. Written as a Channels user would, nothing multiplex-specific."""

from __future__ import annotations

import hashlib
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

import tests.apps_frameworks  # noqa: F401  (configures Django first)

CHAT_GROUP = "chat"


def hello(request: HttpRequest) -> JsonResponse:
    """A plain (synchronous) Django view."""
    scope: dict[str, Any] = request.scope  # type: ignore[attr-defined]
    return JsonResponse(
        {
            "framework": "django",
            "method": request.method,
            "path": request.path,
            "query": request.GET.get("q"),
            "http_version": scope["http_version"],
            "secure": request.is_secure(),
        }
    )


@csrf_exempt
def upload(request: HttpRequest) -> JsonResponse:
    """A POST body through Django's request handling (spooled, then read)."""
    body = request.body
    return JsonResponse({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()})


urlpatterns = [path("django/hello", hello), path("django/upload", upload)]


class EchoConsumer(AsyncWebsocketConsumer):
    """Echoes text and bytes; accepts the "chat" subprotocol when offered; the text
    "close" makes it close with 4001 "bye"."""

    async def connect(self) -> None:
        offered = self.scope.get("subprotocols", [])
        await self.accept(subprotocol="chat" if "chat" in offered else None)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "close":
            await self.close(code=4001, reason="bye")
        elif text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class DenyConsumer(AsyncWebsocketConsumer):
    """Closes before accepting: the client gets 403."""

    async def connect(self) -> None:
        await self.close()


class ChatConsumer(AsyncWebsocketConsumer):
    """Every message goes to the whole group through the channel layer."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(CHAT_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(CHAT_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(
            CHAT_GROUP, {"type": "chat.message", "text": text_data or ""}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter(
    {
        "http": get_asgi_application(),
        "websocket": URLRouter(
            [
                path("ws/echo", EchoConsumer.as_asgi()),
                path("ws/chat", ChatConsumer.as_asgi()),
                path("ws/deny", DenyConsumer.as_asgi()),
            ]
        ),
    }
)
