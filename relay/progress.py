"""A running turn, shown where its message came from, then replaced by the answer.

While a turn relay started runs, `relay watch` shows it:

- in the Slack thread of a mention or DM: the answer streams in as the agent writes it, with
  Slack's chat streaming API (`chat.startStream` / `appendStream` / `stopStream`, markdown) where
  the workspace offers it; where it does not (the first refusal turns it off for the process),
  one progress message ("what the agent said so far" and a line saying what it is doing:
  thinking, running Bash, waiting for an approval), edited as the turn goes;
- on GitHub: one tracking comment under the triggering comment, marked as relay's own so it is
  never read as a request, edited as the turn goes;
- in a Linear agent session: what the agent is doing as activities (running a tool: an
  `action`; thinking, waiting: an ephemeral `thought`), one for each change, at most every
  `LINEAR_EVERY` seconds (platform_replies.LinearReplies.progress).

When the turn ends, the answer completes the stream or replaces the message (`Replier.answer` is
given its place). A slash command has no thread to show progress in (its response_url takes 5
posts), so nothing.

Best-effort: a failure is counted and logged, never retried, and never delays delivery or the
answer. Across watcher replicas and restarts (Redis records, under the key prefix):

    rec:progress:{target}:{message}        where the progress message is, found again after a restart
    rec:progress-claim:{target}:{message}  the one watcher that posts it
    rec:progress-lease:{target}:{message}  at most one edit per interval, whichever watcher makes it

Rate limits: Slack's chat.update is Tier 3 (about 50 a minute per workspace) and chat.postMessage
about 1 a second per channel; relay edits a thread's progress message at most every
`SLACK_EVERY` seconds. GitHub asks integrations to space content changes (secondary limits):
at most one edit per `GITHUB_EVERY` seconds per tracking comment.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from relay.answers import github_comment, joined, progress_text
from relay.errors import QueueUnavailable, UpstreamError
from relay.github_api import GitHubApi
from relay.logs import fields
from relay.metrics import Metrics
from relay.origins import Origin
from relay.slack_api import SlackApi

log = logging.getLogger("relay.progress")

PLACE_KIND = "progress"
CLAIM_KIND = "progress-claim"
LEASE_KIND = "progress-lease"
TTL = 7 * 24 * 3600.0
CLAIM_TTL = 30.0
#: The shortest time between two edits of one progress message (the watcher's session reports
#: at most every PROGRESS_EVERY seconds, a little more than SLACK_EVERY, so none is skipped there).
SLACK_EVERY = 1.0
GITHUB_EVERY = 5.0
LINEAR_EVERY = 2.0
PROGRESS_EVERY = 1.5
#: Slack errors that mean "no streaming here": relay edits a message instead from then on.
STREAM_UNAVAILABLE = frozenset({"unknown_method", "not_allowed_token_type", "missing_scope", "not_allowed",
                                "feature_not_enabled", "method_deprecated", "invalid_arguments"})


def task_title(activity: str) -> str:
    return activity[:1].upper() + activity[1:]


def task_of(activity: str | None, n: int) -> dict[str, str] | None:
    """A task card of the stream's timeline for what the agent does now (its id numbered in turn)."""
    return {"id": f"relay-task-{n}", "title": task_title(activity)} if activity else None


def task_chunk(task: dict[str, str], status: str) -> dict[str, str]:
    return {"type": "task_update", "id": task["id"], "title": task["title"], "status": status}


class Records(Protocol):
    async def record(self, kind: str, record_id: str) -> str | None: ...

    async def create_record(self, kind: str, record_id: str, value: str, ttl: float) -> str | None: ...

    async def put_record(self, kind: str, record_id: str, value: str, ttl: float) -> None: ...


class LinearProgress(Protocol):
    async def progress(self, session: str, activity: str | None) -> None: ...


class ProgressBoard:
    def __init__(self, records: Records, slack: SlackApi | None, github: GitHubApi | None,
                 metrics: Metrics | None = None, *, linear: LinearProgress | None = None) -> None:
        self.records, self.slack, self.github = records, slack, github
        self.linear = linear
        self.metrics = metrics or Metrics()
        self.streaming = True  # until Slack says it cannot stream here

    def shows(self, origin: Origin) -> bool:
        """Whether this origin gets a progress message at all."""
        if origin.reply.get("via") == "github":
            return self.github is not None
        if origin.reply.get("via") == "linear":
            return self.linear is not None and bool(origin.reply.get("session"))
        return origin.slack_thread() is not None and self.slack is not None and self.slack.can_post

    async def show(self, origin: Origin, key: str, texts: tuple[str, ...], activity: str | None) -> None:
        """Post or edit the progress message of the turn keyed `key` (reply target + message id)."""
        if not self.shows(origin):
            return
        if origin.reply.get("via") == "linear":
            await self._show_linear(origin, key, activity)
            return
        via = "github" if origin.reply.get("via") == "github" else "slack"
        try:
            every = GITHUB_EVERY if via == "github" else SLACK_EVERY
            if await self.records.create_record(LEASE_KIND, key, "1", every) is not None:
                return  # edited less than an interval ago (here or by another watcher)
            place = await self.place(key)
            if place is None:
                if await self.records.create_record(CLAIM_KIND, key, "1", CLAIM_TTL) is not None:
                    return  # another watcher is posting it
                place = await self._post(origin, texts, activity)
                await self.records.put_record(PLACE_KIND, key, json.dumps(place, separators=(",", ":")), TTL)
            else:
                await self._edit(origin, key, place, texts, activity)
            self.metrics.progress(via, "ok")
        except (UpstreamError, QueueUnavailable) as exc:
            self.metrics.progress(via, "error")
            log.warning("could not show progress", extra=fields(client_message_id=origin.client_message_id,
                                                                 error=str(exc)))

    async def _show_linear(self, origin: Origin, key: str, activity: str | None) -> None:
        """One activity per change of what the agent does (Linear's activities are a log, not a
        message to edit); the place record remembers the last one shown."""
        assert self.linear is not None
        try:
            if await self.records.create_record(LEASE_KIND, key, "1", LINEAR_EVERY) is not None:
                return
            shown = await self.place(key)
            if shown is not None and shown.get("activity") == activity:
                return
            await self.linear.progress(origin.reply["session"], activity)
            await self.records.put_record(PLACE_KIND, key, json.dumps({"via": "linear", "activity": activity}), TTL)
            self.metrics.progress("linear", "ok")
        except (UpstreamError, QueueUnavailable) as exc:
            self.metrics.progress("linear", "error")
            log.warning("could not show progress", extra=fields(client_message_id=origin.client_message_id,
                                                                 error=str(exc)))

    async def place(self, key: str) -> dict[str, Any] | None:
        """Where the turn's progress message is, if one was posted."""
        raw = await self.records.record(PLACE_KIND, key)
        try:
            place = json.loads(raw) if raw else None
        except ValueError:
            return None
        return place if isinstance(place, dict) else None

    async def _post(self, origin: Origin, texts: tuple[str, ...], activity: str | None) -> dict[str, Any]:
        if origin.reply.get("via") == "github":
            assert self.github is not None
            reply, body = origin.reply, github_comment(progress_text(texts, activity, "github"))
            return await self._post_github(reply, body)
        assert self.slack is not None
        thread = origin.slack_thread()
        assert thread is not None
        if self.streaming:
            said = joined(list(texts))
            task = task_of(activity, 1)
            try:
                ts = await self.slack.start_stream(thread[0], thread[1], origin.reply.get("team"),
                                                   origin.reply.get("user"), said,
                                                   [task_chunk(task, "in_progress")] if task else None)
                return {"via": "slack-stream", "channel": thread[0], "ts": ts, "sent": said, "task": task}
            except UpstreamError as exc:
                if exc.code not in STREAM_UNAVAILABLE:
                    raise
                self.streaming = False
                log.info("Slack will not stream here; progress is an edited message",
                         extra=fields(error=exc.code))
        ts = await self.slack.post_message(thread[0], {"text": progress_text(texts, activity, "slack")},
                                           thread_ts=thread[1])
        return {"via": "slack", "channel": thread[0], "ts": ts}

    async def _post_github(self, reply: dict[str, Any], body: str) -> dict[str, Any]:
        assert self.github is not None
        if reply["api"] == "pulls":
            comment_id = await self.github.reply_to_review_comment(reply["repository"], reply["number"],
                                                                   reply["comment_id"], body)
        else:
            comment_id = await self.github.comment(reply["repository"], reply["number"], body)
        return {"via": "github", "repository": reply["repository"], "api": reply["api"], "comment_id": comment_id}

    async def _edit(self, origin: Origin, key: str, place: dict[str, Any], texts: tuple[str, ...],
                    activity: str | None) -> None:
        if place.get("via") == "slack-stream" and self.slack is not None:
            said, sent = joined(list(texts)), str(place.get("sent", ""))
            more = said[len(sent):] if len(said) > len(sent) and said.startswith(sent) else ""  # it only grows
            done, task = place.get("task"), place.get("task")
            if activity and (done is None or done.get("title") != task_title(activity)):
                task = task_of(activity, int(done["id"].rsplit("-", 1)[1]) + 1 if done else 1)
            chunks = ([task_chunk(done, "complete")] if done and task is not done else []) + \
                ([task_chunk(task, "in_progress")] if task and task is not done else [])
            if more or chunks:
                await self.slack.append_stream(place["channel"], place["ts"], more, chunks or None)
                await self.records.put_record(PLACE_KIND, key, json.dumps({**place, "sent": said, "task": task},
                                                                          separators=(",", ":")), TTL)
        elif place.get("via") == "github" and self.github is not None:
            await self.github.edit_comment(place["repository"], place["api"], place["comment_id"],
                                           github_comment(progress_text(texts, activity, "github")))
        elif place.get("via") == "slack" and self.slack is not None:
            await self.slack.update_message(place["channel"], place["ts"],
                                            {"text": progress_text(texts, activity, "slack")})
