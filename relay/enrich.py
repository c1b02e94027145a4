"""Before its first delivery, a message gets the context its source asked for (context.py).

- A mention in an existing Slack thread, the first in that thread to reach the agent, brings
  the thread's earlier messages (`conversations.replies`, authors named with `users.info`),
  bounded by RELAY_THREAD_HISTORY_MESSAGES / RELAY_THREAD_HISTORY_CHARS. "First" is claimed in
  Redis per thread (`rec:thread-context:…`, by the message's id, so a retry of the same message
  still brings it); later mentions in the thread do not repeat it.
- Files (Slack attachments, GitHub comment attachments) are named with their links; a small text
  file (at most RELAY_INLINE_FILE_BYTES) is included. Files are read only from the platform's own
  hosts (`SlackApi.may_download`, `GitHubApi.may_download`).

Nothing here fails a delivery: what cannot be fetched is said in the message instead. The
enriched message replaces the stored one on the first attempt (the worker keeps it for retries),
so the agent sees one text under one `client_message_id`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Protocol

from relay.context import FileRef, FileSeen, ThreadMessage, history_text, with_context
from relay.downloads import TooLarge
from relay.errors import QueueUnavailable, UpstreamError
from relay.github_api import GitHubApi
from relay.logs import fields
from relay.messages import Envelope, user_message
from relay.settings import Settings
from relay.slack_api import SlackApi

log = logging.getLogger("relay.enrich")

THREAD_KIND = "thread-context"
THREAD_TTL = 30 * 24 * 3600.0


class Records(Protocol):
    async def create_record(self, kind: str, record_id: str, value: str, ttl: float) -> str | None: ...


class Enricher:
    def __init__(self, settings: Settings, records: Records, slack: SlackApi | None = None,
                 github: GitHubApi | None = None) -> None:
        self.settings, self.records, self.slack, self.github = settings, records, slack, github

    async def enrich(self, envelope: Envelope) -> Envelope:
        """The envelope with its context fetched into its content (and no context left to fetch)."""
        context = envelope.context or {}
        content = envelope.message.get("content")
        if envelope.kind != "user" or not isinstance(content, str):
            return replace(envelope, context=None)
        history, note = await self._history(envelope, context.get("slack_thread"))
        files = [await self._read(envelope, ref) for ref in _refs(context.get("files"))]
        enriched = with_context(content, history, note, files)
        message = user_message(enriched, envelope.client_message_id)
        return replace(envelope, message=message, context=None)

    async def _history(self, envelope: Envelope, thread: Any) -> tuple[str | None, str | None]:
        limit = self.settings.thread_history_messages
        if not isinstance(thread, dict) or limit <= 0 or self.slack is None or not self.slack.can_post:
            return None, None
        channel, thread_ts, ts = thread.get("channel"), thread.get("thread_ts"), thread.get("ts")
        if not all(isinstance(v, str) and v for v in (channel, thread_ts, ts)):
            return None, None
        try:
            first = await self.records.create_record(THREAD_KIND, f"{thread.get('team')}:{channel}:{thread_ts}",
                                                     envelope.client_message_id, THREAD_TTL)
        except QueueUnavailable:
            return None, "relay's store was unavailable"
        if first is not None and first != envelope.client_message_id:
            return None, None  # the agent had the thread with an earlier mention
        try:
            earlier = await self.slack.thread_replies(channel, thread_ts, ts)
            messages = [ThreadMessage(await self._author(m), str(m.get("text") or "")) for m in earlier
                        if str(m.get("text") or "").strip()][-limit:]
        except UpstreamError as exc:
            log.warning("could not read the thread", extra=fields(**envelope.log_fields(), error=exc.code))
            return None, exc.code
        return history_text(messages, limit, self.settings.thread_history_chars) or None, None

    async def _author(self, message: dict[str, Any]) -> str:
        assert self.slack is not None
        user = message.get("user")
        if isinstance(user, str) and user:
            return f"@{await self.slack.user_name(user)}"
        return str(message.get("username") or message.get("bot_id") or "someone")

    async def _read(self, envelope: Envelope, ref: FileRef) -> FileSeen:
        limit = self.settings.inline_file_bytes
        if not ref.is_text() or limit <= 0:
            return FileSeen(ref)
        if ref.size is not None and ref.size > limit:
            return FileSeen(ref, note=f"{ref.size:,} bytes: too large to include")
        client = self.github if envelope.source == "github" else self.slack
        if client is None or ref.download is None or not client.may_download(ref.download):
            return FileSeen(ref, note="relay may not read it")
        try:
            data = await client.download(ref.download, limit)
        except TooLarge:
            return FileSeen(ref, note=f"over {limit:,} bytes: too large to include")
        except UpstreamError as exc:
            log.warning("could not read a file", extra=fields(**envelope.log_fields(), error=exc.code))
            return FileSeen(ref, note=f"could not be read: {exc.code}")
        try:
            return FileSeen(ref, text=data.decode("utf-8"))
        except UnicodeDecodeError:
            return FileSeen(ref, note="not UTF-8 text")


def _refs(files: Any) -> list[FileRef]:
    if not isinstance(files, list):
        return []
    return [ref for item in files if isinstance(item, dict) and (ref := FileRef.from_dict(item)) is not None]
