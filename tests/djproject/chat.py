"""A group chat consumer as the Channels tutorial writes one: every message goes to the
whole group through the channel layer (Redis when DJPROJECT_REDIS names one). On
connect it tells the client which worker process it reached."""

from __future__ import annotations

import json
import os

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "lobby"


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"pid": os.getpid()}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(GROUP, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event: dict[str, str]) -> None:
        await self.send(text_data=json.dumps({"message": event["text"], "pid": os.getpid()}))
