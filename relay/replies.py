"""Tell a message's source what became of it, once the worker has settled it.

Best-effort: a failure here is logged and never changes the message's fate. By the reply
target a source put on the message:

    {"via": "response_url", "url": …}    slash command: an ephemeral "delivered" / "could not deliver"
    {"via": "reaction", "channel", "ts"}  mention or DM: ✅ on delivery; ⚠️ and a thread note on failure
    {"via": "card", "channel", "ts"}      approval decision: a thread note under the card on failure
    {"via": "github", "repository", "comment_id", "api"}   a comment: 🚀 when delivered, 😕 when not
                                                              (👀 was added when it was queued)
"""

from __future__ import annotations

import logging
from typing import Any

from relay.errors import UpstreamError
from relay.github_api import GitHubApi
from relay.logs import fields
from relay.messages import Envelope
from relay.slack_api import SlackApi
from relay.sources.slack import escape

log = logging.getLogger("relay.replies")

REASON_SHOWN = 300


class Replier:
    def __init__(self, slack: SlackApi | None = None, github: GitHubApi | None = None) -> None:
        self.slack = slack
        self.github = github

    async def delivered(self, envelope: Envelope) -> None:
        await self._tell(envelope, None)

    async def failed(self, envelope: Envelope, reason: str) -> None:
        await self._tell(envelope, reason)

    async def _tell(self, envelope: Envelope, failure: str | None) -> None:
        reply = envelope.reply
        if not reply:
            return
        try:
            if reply.get("via") == "github":
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
