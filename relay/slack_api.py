"""The Slack Web API client: the only module that talks to Slack.

Slack answers most failures with HTTP 200 and `{"ok": false, "error": "…"}`; every call here
turns those, HTTP errors and transport errors into `UpstreamError` with Slack's error code.
User-group membership (for approver groups) is cached briefly.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx

from relay import __version__
from relay.downloads import fetch
from relay.errors import UpstreamError
from relay.settings import Settings

GROUP_CACHE_SECONDS = 60.0
NAMES_KEPT = 1000
REPLY_PAGES = 5  # conversations.replies pages read for one thread (200 messages each)
FILES_HOST = "https://files.slack.com/"



class SlackApi:
    def __init__(self, token: str | None, *, base_url: str = "https://slack.com/api", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token
        self._base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport,
                                       headers={"User-Agent": f"relay/{__version__}"})
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        self._names: dict[str, str] = {}
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackApi | None:
        """A client when Slack is configured (signing secret, app token or bot token), else None."""
        if not settings.receives_slack and settings.slack_bot_token is None:
            return None
        return cls(settings.slack_bot_token, base_url=settings.slack_api_base_url)

    @property
    def can_post(self) -> bool:
        return self._token is not None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, payload: dict[str, Any], *, form: bool = False) -> dict[str, Any]:
        """A Web API method; `form` for the read methods that take no JSON body."""
        if self._token is None:
            raise UpstreamError("slack", method, "SLACK_BOT_TOKEN is not set")
        headers = {"Authorization": f"Bearer {self._token}"}
        return await self._post(f"{self._base_url}/{method}", method, payload, headers, form=form)

    async def respond(self, response_url: str, payload: dict[str, Any]) -> None:
        """Post to an interaction's or a command's response_url (no token needed)."""
        await self._post(response_url, "response_url", payload, {})

    async def post_message(self, channel: str, message: dict[str, Any], thread_ts: str | None = None) -> str:
        payload = {"channel": channel, **message, **({"thread_ts": thread_ts} if thread_ts else {})}
        data = await self.call("chat.postMessage", payload)
        return str(data.get("ts", ""))

    async def start_stream(self, channel: str, thread_ts: str, team: str | None, user: str | None,
                           markdown: str, chunks: list[dict[str, Any]] | None = None) -> str:
        """chat.startStream in a thread (for the person the answer is for); the stream's ts."""
        payload: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
        if team and user:
            payload.update(recipient_team_id=team, recipient_user_id=user)
        if markdown:
            payload["markdown_text"] = markdown
        if chunks:
            payload.update(chunks=chunks, task_display_mode="timeline")
        return str((await self.call("chat.startStream", payload)).get("ts", ""))

    async def append_stream(self, channel: str, ts: str, markdown: str = "",
                            chunks: list[dict[str, Any]] | None = None) -> None:
        """More markdown, or task updates (`task_update` chunks), for a running stream."""
        payload: dict[str, Any] = {"channel": channel, "ts": ts}
        if chunks:
            payload["chunks"] = chunks + ([{"type": "markdown_text", "text": markdown}] if markdown else [])
        else:
            payload["markdown_text"] = markdown
        await self.call("chat.appendStream", payload)

    async def stop_stream(self, channel: str, ts: str, markdown: str = "",
                          chunks: list[dict[str, Any]] | None = None) -> None:
        payload: dict[str, Any] = {"channel": channel, "ts": ts}
        if chunks:
            payload["chunks"] = chunks + ([{"type": "markdown_text", "text": markdown}] if markdown else [])
        elif markdown:
            payload["markdown_text"] = markdown
        await self.call("chat.stopStream", payload)

    async def update_message(self, channel: str, ts: str, message: dict[str, Any]) -> None:
        await self.call("chat.update", {"channel": channel, "ts": ts, **message})

    async def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        await self.call("views.open", {"trigger_id": trigger_id, "view": view})

    async def add_reaction(self, channel: str, ts: str, name: str) -> None:
        try:
            await self.call("reactions.add", {"channel": channel, "timestamp": ts, "name": name})
        except UpstreamError as exc:
            if exc.code != "already_reacted":
                raise

    async def thread_replies(self, channel: str, thread_ts: str, before: str) -> list[dict[str, Any]]:
        """A thread's messages older than `before`, oldest first (at most REPLY_PAGES pages)."""
        found: list[dict[str, Any]] = []
        payload: dict[str, Any] = {"channel": channel, "ts": thread_ts, "latest": before, "inclusive": "false",
                                   "limit": 200}
        for _ in range(REPLY_PAGES):
            data = await self.call("conversations.replies", payload, form=True)
            found += [m for m in data.get("messages", []) if isinstance(m, dict)]
            cursor = (data.get("response_metadata") or {}).get("next_cursor")
            if not data.get("has_more") or not cursor:
                break
            payload["cursor"] = cursor
        return [m for m in found if isinstance(m.get("ts"), str) and m["ts"] < before]

    async def user_name(self, user: str) -> str:
        """A user's display name (or real name, or handle); the id when Slack will not say."""
        if user not in self._names:
            try:
                profile = (await self.call("users.info", {"user": user}, form=True)).get("user") or {}
            except UpstreamError:
                return user
            shown = (profile.get("profile") or {}).get("display_name") or profile.get("real_name") \
                or profile.get("name")
            if len(self._names) >= NAMES_KEPT:
                self._names.pop(next(iter(self._names)))
            self._names[user] = str(shown) if shown else user
        return self._names[user]

    def may_download(self, url: str) -> bool:
        """Files are read (with the bot token) only from Slack's file host, or from the host the
        API is at (a stand-in in tests): the token never goes anywhere else."""
        return url.startswith(FILES_HOST) or url.startswith(self._base_url.rsplit("/api", 1)[0] + "/")

    async def download(self, url: str, limit: int) -> bytes:
        """A private file's bytes; TooLarge past `limit`. Raises UpstreamError when Slack refuses."""
        if self._token is None or not self.may_download(url):
            raise UpstreamError("slack", "files", "not a Slack file URL")
        return await fetch(self._http, url, limit, {"Authorization": f"Bearer {self._token}"}, "slack")

    async def group_members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and cached[0] > self._clock():
            return cached[1]
        data = await self.call("usergroups.users.list", {"usergroup": group})
        members = frozenset(str(u) for u in data.get("users", []))
        self._groups[group] = (self._clock() + GROUP_CACHE_SECONDS, members)
        return members

    async def _post(self, url: str, method: str, payload: dict[str, Any], headers: dict[str, str], *,
                    form: bool = False) -> dict[str, Any]:
        try:
            if form:
                response = await self._http.post(url, data=payload, headers=headers)
            else:
                response = await self._http.post(url, json=payload, headers=headers)
        except httpx.TransportError as exc:
            raise UpstreamError("slack", method, type(exc).__name__) from exc
        if response.status_code >= 400:
            raise UpstreamError("slack", method, f"HTTP {response.status_code}")
        if method == "response_url":
            return {}  # answers "ok" as plain text
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError("slack", method, "a response that is not JSON") from None
        if not isinstance(data, dict) or not data.get("ok"):
            raise UpstreamError("slack", method, str(data.get("error", "unknown_error")) if isinstance(data, dict)
                                else "unknown_error")
        return data

