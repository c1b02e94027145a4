"""Tell Linear, GitLab and Discord what became of a message, and post the agent's answer there.

`replies.Replier` hands a message to the one of these its reply target names (`via`):

    {"via": "linear", "session"}              an agent session: a thought when delivered, an
                                              error activity when not; while the turn runs, what the
                                              agent does (progress.py: actions, ephemeral thoughts);
                                              the answer is the response activity (a failed turn:
                                              its error as an error activity)
    {"via": "linear", "issue", "comment"}     a comment: 🚀 / a reply when not delivered; the answer
                                              is a reply in the comment's thread
    {"via": "gitlab", "project", "noteable", "iid", "note", "discussion"}
                                              a note: 🚀 / 😕 award emoji; the answer is a note in its
                                              discussion; a settled decision gets a note saying so
    {"via": "discord", "application", "token", "channel"}
                                              a slash command: its deferred answer says delivered or
                                              not; the answer comes as follow-ups (the interaction's
                                              webhook lives 15 minutes; later, the bot posts in the channel)
    {"via": "discord-card", "channel", "message"}  a card decision: a note in the channel when not delivered

Best-effort, as every reply: a failure is logged by the caller and never changes a message's fate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from relay.answers import github_comment, joined, split, truncation_note
from relay.discord_api import DiscordApi
from relay.errors import UpstreamError
from relay.gitlab_api import GitLabApi
from relay.linear_api import LinearApi
from relay.messages import Envelope
from relay.origins import Origin
from relay.sources import discord as discord_source
from relay.sources.linear import OWN_MARKER as LINEAR_MARKER
from relay.status_frames import NO_LONGER_PENDING

if TYPE_CHECKING:
    from relay.discord_cards import DiscordCards

log = logging.getLogger("relay.replies")

REASON_SHOWN = 300
#: How a failed turn's last text begins (watch.reply_texts writes it): Linear shows it as an error.
TURN_ERROR = "The agent's turn ended with an error"
LINEAR_COMMENT_MAX = 60_000
DISCORD_MESSAGE_MAX = 1900
DISCORD_MESSAGES_MAX = 4


class PlatformReplier(Protocol):
    async def delivered(self, envelope: Envelope) -> None: ...

    async def failed(self, envelope: Envelope, reason: str) -> None: ...

    async def settled(self, envelope: Envelope, note: str) -> None: ...

    async def answer(self, origin: Origin, texts: list[str]) -> int: ...


def _agent(envelope: Envelope) -> str:
    return f"agent `{envelope.destination.agent_id}`"


class LinearReplies:
    def __init__(self, linear: LinearApi) -> None:
        self.linear = linear

    async def delivered(self, envelope: Envelope) -> None:
        reply = envelope.reply or {}
        if reply.get("session"):
            await self.linear.activity(reply["session"], "thought", f"Delivered to {_agent(envelope)}; it is working "
                                       "on it.", ephemeral=True)
        elif reply.get("comment"):
            await self.linear.react(reply["comment"], "🚀")

    async def failed(self, envelope: Envelope, reason: str) -> None:
        reply, text = envelope.reply or {}, f"Could not deliver this to {_agent(envelope)}: {reason[:REASON_SHOWN]}"
        if reply.get("session"):
            await self.linear.activity(reply["session"], "error", text)
        elif reply.get("comment"):
            await self.linear.comment(reply["issue"], f"⚠️ {text}\n\n{LINEAR_MARKER}", reply["comment"])

    async def settled(self, envelope: Envelope, note: str) -> None:
        return None  # Linear has no approval decisions

    async def progress(self, session: str, activity: str | None) -> None:
        """What the agent is doing now, in its session: running a tool is an action; anything else
        an ephemeral thought (replaced by the next activity)."""
        doing = activity or "working"
        if doing.startswith("running ") and doing != "running a tool":
            await self.linear.action(session, "Running", doing.removeprefix("running "))
        else:
            await self.linear.activity(session, "thought", f"{doing[:1].upper()}{doing[1:]}…", ephemeral=True)

    async def answer(self, origin: Origin, texts: list[str]) -> int:
        reply = origin.reply
        said = [t for t in texts if not t.startswith(TURN_ERROR)]
        errors = [t for t in texts if t.startswith(TURN_ERROR)]
        text = joined(said)
        if reply.get("session"):
            posted = 0
            if text:
                await self.linear.activity(reply["session"], "response", _cut(text, LINEAR_COMMENT_MAX))
                posted += 1
            for error in errors:
                await self.linear.activity(reply["session"], "error", _cut(error, LINEAR_COMMENT_MAX))
                posted += 1
            return posted
        body = joined(texts)
        await self.linear.comment(reply["issue"], _cut(body, LINEAR_COMMENT_MAX) + f"\n\n{LINEAR_MARKER}",
                                  reply["comment"])
        return 1


class GitLabReplies:
    def __init__(self, gitlab: GitLabApi) -> None:
        self.gitlab = gitlab

    async def delivered(self, envelope: Envelope) -> None:
        await self._award(envelope.reply or {}, "rocket")

    async def failed(self, envelope: Envelope, reason: str) -> None:
        await self._award(envelope.reply or {}, "confused")

    async def settled(self, envelope: Envelope, note: str) -> None:
        reply = envelope.reply or {}
        if reply.get("via") == "gitlab":
            await self._note(reply, note)

    async def answer(self, origin: Origin, texts: list[str]) -> int:
        text = joined(texts)
        if not text:
            return 0
        await self._note(origin.reply, text)
        return 1

    async def _award(self, reply: dict[str, Any], emoji: str) -> None:
        await self.gitlab.award(reply["project"], reply["noteable"], reply["iid"], reply["note"], emoji)

    async def _note(self, reply: dict[str, Any], text: str) -> None:
        # github_comment cuts to 65,536 characters and ends with relay's marker, which GitLab
        # renders hidden as GitHub does: relay never reads its own note as a request.
        await self.gitlab.note(reply["project"], reply["noteable"], reply["iid"], github_comment(text),
                               str(reply.get("discussion") or ""))


def discord_messages(text: str) -> list[str]:
    """At most DISCORD_MESSAGES_MAX pieces of at most DISCORD_MESSAGE_MAX characters; what does
    not fit is dropped with a note saying how much."""
    pieces = split(text, DISCORD_MESSAGE_MAX)
    if len(pieces) <= DISCORD_MESSAGES_MAX:
        return pieces
    shown = pieces[: DISCORD_MESSAGES_MAX - 1]
    start = sum(map(len, shown))
    end = start + len(split(text[start:], DISCORD_MESSAGE_MAX - len(truncation_note(len(text))))[0])
    return [*shown, text[start:end] + truncation_note(len(text) - end)]


class DiscordReplies:
    def __init__(self, discord: DiscordApi, cards: DiscordCards | None = None) -> None:
        self.discord, self.cards = discord, cards

    async def delivered(self, envelope: Envelope) -> None:
        reply = envelope.reply or {}
        if reply.get("via") == "discord":
            await self.discord.edit_original(reply["application"], reply["token"],
                                             discord_source.message(f"✅ Delivered to {_agent(envelope)}."))

    async def failed(self, envelope: Envelope, reason: str) -> None:
        reply, problem = envelope.reply or {}, reason[:REASON_SHOWN]
        if reply.get("via") == "discord":
            await self.discord.edit_original(reply["application"], reply["token"], discord_source.message(
                f"⚠️ Could not deliver to {_agent(envelope)}: {problem}"))
        elif reply.get("via") == "discord-card" and self.discord.can_post:
            await self.discord.post_message(reply["channel"], discord_source.message(
                f"⚠️ The decision could not be delivered to {_agent(envelope)}: {problem}\n"
                f"An operator can retry it with `relay dlq replay {envelope.client_message_id}`."))

    async def settled(self, envelope: Envelope, note: str) -> None:
        if self.cards is None:
            return
        for approval in envelope.message.get("approvals", []):
            if isinstance(approval, dict) and isinstance(approval.get("tool_call_id"), str):
                await self.cards.close(envelope.destination, approval["tool_call_id"], NO_LONGER_PENDING,
                                       decided_too=True)

    async def answer(self, origin: Origin, texts: list[str]) -> int:
        reply = origin.reply
        messages = [m for m in discord_messages(joined(texts)) if m.strip()]
        for at, text in enumerate(messages):
            try:
                await self.discord.follow_up(reply["application"], reply["token"], discord_source.message(text))
            except UpstreamError:
                if not self.discord.can_post:
                    raise
                # The interaction's webhook lasts 15 minutes; later answers come from the bot.
                for rest in messages[at:]:
                    await self.discord.post_message(reply["channel"], discord_source.message(rest))
                break
        return len(messages)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    keep = split(text, limit - 64)[0]
    return keep + truncation_note(len(text) - len(keep))
