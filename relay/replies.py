"""Tell a message's source what became of it, once the worker has settled it.

Best-effort: a failure here is logged and never changes the message's fate. By the reply
target a source put on the message:

    {"via": "response_url", "url": …}    slash command: an ephemeral "delivered" / "could not deliver"
    {"via": "reaction", "channel", "ts"}  mention or DM: ✅ on delivery; ⚠️ and a thread note on failure
    {"via": "card", "channel", "ts"}      approval decision: a thread note under the card on failure
    {"via": "github", "repository", "comment_id", "api", "number"}   a comment: 🚀 when delivered,
                                                   😕 when not (👀 was added when it was queued)
    {"via": "linear" | "gitlab" | "discord" | "discord-card", …}   platform_replies.py

An approval decision the device no longer waits for (answered elsewhere, or gone) is settled,
not failed: its card is closed with that note (and a note in its thread); a GitHub decision
gets a reply saying nothing was sent.

Once the agent's turn ends, `answer` posts what it said where the message came from (the
watcher recalls the message's Origin): a mention or DM → the message's thread; a slash command
→ its response_url, ephemeral like every other note to the person who ran it (their command
was not shown to the channel either; they can share the answer). A response_url takes 5 posts
within 30 minutes: "Delivered" used one, so an answer is at most 4 messages, and a later
answer is refused by Slack and only logged. A GitHub comment → a new comment on the issue or
pull request; a review comment → a reply in its review thread. answers.py cuts the text.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from relay.answers import github_comment, joined, slack_messages
from relay.errors import QueueUnavailable, UpstreamError
from relay.github_api import GitHubApi
from relay.logs import fields
from relay.messages import Envelope
from relay.origins import Origin
from relay.progress import task_chunk
from relay.slack_api import SlackApi
from relay.routing import Destination
from relay.sources.slack import escape
from relay.status_frames import NO_LONGER_PENDING

if TYPE_CHECKING:
    from relay.platform_replies import PlatformReplier

log = logging.getLogger("relay.replies")

REASON_SHOWN = 300
#: chat.appendStream / stopStream take at most 12,000 characters of markdown at a time.
STREAM_PIECE = 12_000


class CardCloser(Protocol):
    async def close(self, destination: Destination, tool_call_id: str, note: str, *,
                    decided_too: bool = False) -> bool: ...


class Replier:
    def __init__(self, slack: SlackApi | None = None, github: GitHubApi | None = None, *,
                 cards: CardCloser | None = None, others: Mapping[str, PlatformReplier] | None = None) -> None:
        self.slack = slack
        self.github = github
        self.cards = cards
        self.others = dict(others or {})  # Linear, GitLab, Discord: by the `via` they serve

    async def delivered(self, envelope: Envelope) -> None:
        await self._tell(envelope, None)

    async def failed(self, envelope: Envelope, reason: str) -> None:
        await self._tell(envelope, reason)

    async def settled(self, envelope: Envelope, reason: str) -> None:
        """An approval the device no longer waits for (`reason` says why; the worker logs it):
        close its card, or say so on the comment."""
        reply = envelope.reply or {}
        tool_calls = [a.get("tool_call_id") for a in envelope.message.get("approvals", []) if isinstance(a, dict)]
        note = (f"The agent is no longer waiting on this decision ({NO_LONGER_PENDING}: answered elsewhere, "
                f"or the request ended); nothing was sent.")
        try:
            if self.cards is not None:
                for tool_call_id in tool_calls:
                    if isinstance(tool_call_id, str):
                        await self.cards.close(envelope.destination, tool_call_id, NO_LONGER_PENDING,
                                               decided_too=True)
            if reply.get("via") == "card" and self.slack is not None and reply.get("ts"):
                await self.slack.post_message(reply["channel"], {"text": f":information_source: {note}"},
                                              thread_ts=reply["ts"])
            elif reply.get("via") == "github" and self.github is not None:
                await self._answer_github(reply, note)
            for other in {id(o): o for o in self.others.values()}.values():
                await other.settled(envelope, note)
        except UpstreamError as exc:
            log.warning("could not tell the source", extra=fields(**envelope.log_fields(), method=exc.method,
                                                                   error=exc.code))
        except QueueUnavailable as exc:  # the card record: best-effort, as every note here
            log.warning("could not close the card", extra=fields(**envelope.log_fields(), error=str(exc)))

    async def answer(self, origin: Origin, texts: list[str], place: dict[str, Any] | None = None) -> bool:
        """Post the agent's answer to a message where the message came from, replacing the turn's
        progress message (`place`, see progress.py) when it has one. Never raises; True if posted."""
        text = joined(texts)
        via = origin.reply.get("via")
        context = {"client_message_id": origin.client_message_id, "source": origin.source, "route": origin.route}
        if not text:
            return False
        try:
            if via == "github" and self.github is not None:
                posted = await self._answer_github(origin.reply, text, place)
            elif via in ("reaction", "response_url") and self.slack is not None:
                posted = await self._answer_slack(origin, text, place)
            elif isinstance(via, str) and via in self.others:
                posted = await self.others[via].answer(origin, texts)
            else:
                return False  # nowhere to answer (a generic webhook, a card) or no client for it
        except UpstreamError as exc:
            log.warning("could not post the answer", extra=fields(**context, method=exc.method, error=exc.code))
            return False
        except (KeyError, TypeError, ValueError):
            log.warning("the reply target lacks what an answer needs", extra=fields(**context, via=via))
            return False
        log.info("answered", extra=fields(**context, via=via, messages=posted, characters=len(text),
                                          replaced_progress=place is not None))
        return True

    async def _answer_slack(self, origin: Origin, text: str, place: dict[str, Any] | None = None) -> int:
        assert self.slack is not None
        if place is not None and place.get("via") == "slack-stream":
            if await self._finish_stream(place, text):
                return 1
            place = None  # the stream said something else: the answer goes below it, whole
        messages = [m for m in slack_messages(text) if m.strip()]
        thread = origin.slack_thread()
        if place is not None and place.get("via") == "slack" and thread is not None and messages:
            await self.slack.update_message(place["channel"], place["ts"], {"text": messages.pop(0)})
        for message in messages:
            if thread is not None:
                await self.slack.post_message(thread[0], {"text": message}, thread_ts=thread[1])
            else:
                await self.slack.respond(origin.reply["url"], {"response_type": "ephemeral",
                                                               "replace_original": False, "text": message})
        return len(messages) + (1 if place is not None and thread is not None else 0)

    async def _finish_stream(self, place: dict[str, Any], text: str) -> bool:
        """End a streamed answer with the rest of `text`. False if the stream does not begin it."""
        assert self.slack is not None
        sent, task = str(place.get("sent", "")), place.get("task")
        done = [task_chunk(task, "complete")] if isinstance(task, dict) else None
        if not text.startswith(sent):
            await self.slack.stop_stream(place["channel"], place["ts"], chunks=done)
            return False
        rest = text[len(sent):]
        while len(rest) > STREAM_PIECE:
            await self.slack.append_stream(place["channel"], place["ts"], rest[:STREAM_PIECE])
            rest = rest[STREAM_PIECE:]
        await self.slack.stop_stream(place["channel"], place["ts"], rest, done)
        return True

    async def _answer_github(self, reply: dict[str, Any], text: str, place: dict[str, Any] | None = None) -> int:
        assert self.github is not None
        body = github_comment(text)  # carries relay's own marker: never read as a request
        if place is not None and place.get("via") == "github":
            await self.github.edit_comment(place["repository"], place["api"], place["comment_id"], body)
        elif reply["api"] == "pulls":
            await self.github.reply_to_review_comment(reply["repository"], reply["number"], reply["comment_id"], body)
        else:
            await self.github.comment(reply["repository"], reply["number"], body)
        return 1

    async def _tell(self, envelope: Envelope, failure: str | None) -> None:
        reply = envelope.reply
        if not reply:
            return
        try:
            other = self.others.get(str(reply.get("via")))
            if other is not None:
                await (other.delivered(envelope) if failure is None else other.failed(envelope, failure))
            elif reply.get("via") == "github":
                if self.github is not None:
                    await self.github.react(reply["repository"], reply["comment_id"], reply["api"],
                                            "rocket" if failure is None else "confused")
            elif self.slack is not None:
                await self._slack(reply, envelope, failure)
        except UpstreamError as exc:
            log.warning("could not tell the source", extra=fields(**envelope.log_fields(), method=exc.method,
                                                                   error=exc.code))

    async def _slack(self, reply: dict[str, Any], envelope: Envelope, failure: str | None) -> None:
        assert self.slack is not None
        agent = f"agent `{escape(envelope.destination.agent_id)}`"
        problem = escape((failure or "")[:REASON_SHOWN])
        via = reply.get("via")
        if via == "response_url":
            text = (f":white_check_mark: Delivered to {agent}." if failure is None
                    else f":warning: Could not deliver to {agent}: {problem}")
            await self.slack.respond(reply["url"], {"response_type": "ephemeral", "replace_original": False,
                                                    "text": text})
        elif via == "reaction":
            if failure is None:
                await self.slack.add_reaction(reply["channel"], reply["ts"], "white_check_mark")
                return
            await self.slack.add_reaction(reply["channel"], reply["ts"], "warning")
            await self.slack.post_message(reply["channel"], {"text": f"Could not deliver this to {agent}: {problem}"},
                                          thread_ts=reply["ts"])
        elif via == "card" and failure is not None and reply.get("ts"):
            note = (f":warning: The decision could not be delivered to {agent}: {problem}\n"
                    f"An operator can retry it with `relay dlq replay {envelope.client_message_id}`.")
            await self.slack.post_message(reply["channel"], {"text": note}, thread_ts=reply["ts"])
