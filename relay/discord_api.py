"""The Discord REST client: the only module that talks to Discord.

Two kinds of call:
- through an interaction's webhook (`/webhooks/{application}/{token}`, valid 15 minutes after
  the interaction, no bot token needed): edit the deferred answer, post follow-ups;
- as the bot (`Authorization: Bot DISCORD_BOT_TOKEN`): approval cards in a channel, and their
  edits.

`DISCORD_API_URL` points it elsewhere (a stand-in in tests). Failures become UpstreamError
with the HTTP status; ids and tokens go into paths only when they have Discord's shape.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from relay import __version__
from relay.errors import UpstreamError
from relay.settings import Settings

_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,500}")


class DiscordApi:
    def __init__(self, bot_token: str | None = None, *, base_url: str = "https://discord.com/api/v10",
                 timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.bot_token = bot_token
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                       headers={"User-Agent": f"DiscordBot (relay, {__version__})"})

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordApi | None:
        if settings.discord_public_key is None:
            return None
        return cls(settings.discord_bot_token, base_url=settings.discord_api_url)

    @property
    def can_post(self) -> bool:
        """Cards need the bot; answers through an interaction's webhook do not."""
        return bool(self.bot_token)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def edit_original(self, application: str, token: str, data: dict[str, Any]) -> None:
        """Replace the interaction's first answer (the deferred "thinking…")."""
        await self._send("PATCH", f"{_webhook(application, token)}/messages/@original", "edit_original", data)

    async def follow_up(self, application: str, token: str, data: dict[str, Any]) -> str:
        """A follow-up message to the interaction; its id."""
        return _id(await self._send("POST", _webhook(application, token), "follow_up", data))

    async def post_message(self, channel: str, data: dict[str, Any]) -> str:
        """A message in a channel, as the bot; its id."""
        return _id(await self._send("POST", f"/channels/{_flake(channel)}/messages", "post_message", data, bot=True))

    async def edit_message(self, channel: str, message_id: str, data: dict[str, Any]) -> None:
        await self._send("PATCH", f"/channels/{_flake(channel)}/messages/{_flake(message_id)}", "edit_message", data,
                         bot=True)

    async def _send(self, verb: str, path: str, method: str, payload: dict[str, Any], bot: bool = False) -> object:
        headers = {}
        if bot:
            if not self.bot_token:
                raise UpstreamError("discord", method, "DISCORD_BOT_TOKEN is not set")
            headers["Authorization"] = f"Bot {self.bot_token}"
        try:
            response = await self._http.request(verb, path, json=payload, headers=headers)
        except httpx.TransportError as exc:
            raise UpstreamError("discord", method, type(exc).__name__) from exc
        if response.status_code >= 300:
            raise UpstreamError("discord", method, f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None


def _webhook(application: str, token: str) -> str:
    if not _TOKEN.fullmatch(token):
        raise UpstreamError("discord", "webhook", "not an interaction token")
    return f"/webhooks/{_flake(application)}/{token}"


def _flake(value: str) -> str:
    if not isinstance(value, str) or not _SNOWFLAKE.fullmatch(value):
        raise UpstreamError("discord", "path", "not a Discord id")
    return value


def _id(data: object) -> str:
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""
