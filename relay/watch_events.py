"""What `relay watch` does with the events of one conversation's status socket.

In order, off the socket loop (acks never wait on Slack or GitHub):

- an approval request → remember its request id (the worker's approval delivery answers by it,
  without a sync) → ask where the turn started: a card in the Slack thread of a mention or DM;
  a prompt comment on the issue or pull request of a GitHub comment (and a card in the route's
  `slack_channel` too, when it has one); a Discord card in the channel of a Discord command
  (discord_cards.py; and a Slack card in `slack_channel` when there is one); else a card in
  `slack_channel`;
- a request that ended elsewhere → its card and prompt say so;
- a running turn → its progress message, edited as it goes (`progress.py`);
- a turn that ended → its answer (with the stop reason and error of a failed turn) where each of
  relay's messages in it came from, replacing the progress message there; once per reply
  target, across watcher replicas.

Redis records (through `Queue`, under the key prefix; 7 days):
    rec:socket-request:{tool call key}  the pending request to answer, and where
    rec:watch-pending:{route}           the requests the route's watcher saw pending
    rec:answered:{reply target}:{id}    claimed by the one watcher that posts a reply
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict
from typing import Any, Awaitable, Callable, Protocol

from relay.approval_delivery import REQUEST_KIND
from relay.errors import QueueUnavailable, UpstreamError
from relay.comment_prompts import CommentPrompts
from relay.logs import fields
from relay.messages import ApprovalRequest, tool_call_key
from relay.metrics import Metrics
from relay.origins import Origin
from relay.progress import ProgressBoard
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.status_session import ApprovalClosed, ApprovalRequested, Event, TurnEnded, TurnProgress

log = logging.getLogger("relay.watch")

PENDING_KIND = "watch-pending"
ANSWERED_KIND = "answered"
RECORD_TTL = 7 * 24 * 3600.0
#: Stop reasons that are a normal end; after any other, an empty turn still gets a note.
QUIET_STOPS = frozenset({None, "end_turn", "tool_rule", "requires_approval", "cancelled"})
PROMPT_ATTEMPTS = 3
#: How long a stopping watcher waits for the answers it is posting (each is claimed before it is
#: posted, so one cut short is posted by no other watcher).
REPLY_DRAIN = 10.0


class CardDesk(Protocol):
    async def ask(self, route: Route, request: ApprovalRequest, channel: str,
                  thread_ts: str | None) -> tuple[Any, bool]: ...

    async def close(self, destination: Destination, tool_call_id: str, note: str) -> bool: ...


class DiscordDesk(Protocol):
    async def ask(self, route: Route, request: ApprovalRequest, channel: str) -> tuple[Any, bool]: ...

    async def close(self, destination: Destination, tool_call_id: str, note: str) -> bool: ...


class Recaller(Protocol):
    async def recall(self, client_message_id: str) -> Origin | None: ...


class Answerer(Protocol):
    async def answer(self, origin: Origin, texts: list[str], place: dict[str, Any] | None = None) -> bool: ...


def reply_texts(turn: TurnEnded) -> list[str]:
    """What to post for a turn: its assistant messages, then what went wrong if it failed."""
    texts = list(turn.texts)
    if turn.error:
        texts.append(f"The agent's turn ended with an error (stop reason: {turn.stop_reason or 'error'}): "
                     f"{turn.error}")
    elif turn.stop_reason not in QUIET_STOPS and not texts:
        texts.append(f"The agent stopped without answering (stop reason: {turn.stop_reason}).")
    return texts


def reply_target(origin: Origin) -> str:
    """One key per place a reply goes, so a turn answering two messages of one thread posts once."""
    where = json.dumps(origin.reply, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(where.encode(), digest_size=12).hexdigest()


class EventActions:
    """One watched route's actions; `act` takes the session's events in order."""

    def __init__(self, route: Route, queue: Queue, origins: Recaller, replier: Answerer, *,
                 cards: CardDesk | None = None, prompts: CommentPrompts | None = None,
                 progress: ProgressBoard | None = None, metrics: Metrics | None = None,
                 recall_wait: float = 2.0, pending: Callable[[], dict[str, ApprovalRequest]] = dict,
                 connection: Callable[[], str | None] = lambda: None,
                 discord_cards: DiscordDesk | None = None) -> None:
        self.route, self.destination, self.queue = route, route.destination, queue
        self.origins, self.replier, self.cards, self.prompts = origins, replier, cards, prompts
        self.progress, self.metrics = progress, metrics or Metrics()
        self.recall_wait, self.pending, self.connection = recall_wait, pending, connection
        self.discord_cards = discord_cards  # cards for turns a Discord command started
        self._tasks: set[asyncio.Task[None]] = set()
        self._chains: dict[str, asyncio.Task[None]] = {}  # progress key → its latest update

    def _log(self, **extra: Any) -> dict[str, Any]:
        return {"extra": fields(route=self.route.name, connection=self.connection(), **extra)}

    async def act(self, event: Event) -> None:
        if isinstance(event, ApprovalRequested):
            await self._requested(event.request)
        elif isinstance(event, ApprovalClosed):
            await self._closed(event)
        elif isinstance(event, TurnProgress):
            self._spawn(self._progressed(event))
        elif isinstance(event, TurnEnded):
            self._spawn(self._reply(event))

    async def drain(self) -> None:
        """Let the answers and progress in flight finish (bounded)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=REPLY_DRAIN)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- approvals -----------------------------------------------------------------------

    async def _requested(self, request: ApprovalRequest) -> None:
        log.info("approval requested", **self._log(tool_call_id=request.tool_call_id, tool=request.tool_name))
        record = json.dumps({"request_id": request.request_id, "tool_call_id": request.tool_call_id,
                             "route": self.route.name, "agent_id": request.agent_id,
                             "conversation_id": request.conversation_id, "connection_id": self.connection()},
                            separators=(",", ":"))
        key = tool_call_key(request.agent_id, request.conversation_id, request.tool_call_id)
        await self.queue.put_record(REQUEST_KIND, key, record, RECORD_TTL)
        await self.save_pending()
        origin = await self._recall(request.turn_message_id) if request.turn_message_id else None
        channel = self.route.watch.slack_channel if self.route.watch else None
        thread = origin.slack_thread() if origin is not None else None
        asked = False
        if origin is not None and self.prompts is not None and self.prompts.asks(origin):
            prompts, via = self.prompts, str(origin.reply["via"])
            asked = await self._ask(via, request, lambda: prompts.ask(self.route, request, origin))
            thread = None  # and a card in the route's channel, when it has one
        if origin is not None and origin.reply.get("via") == "discord" and self.discord_cards is not None:
            desk, in_channel = self.discord_cards, str(origin.reply.get("channel") or "")
            asked = await self._ask("discord", request, lambda: self._discord_card(desk, request, in_channel))
        where = thread or ((channel, None) if channel else None)
        if where is not None and self.cards is not None:
            cards = self.cards
            asked = await self._ask("slack", request, lambda: self._card(cards, request, where)) or asked
        if not asked and where is None:
            log.warning("no place for the approval request: set slack_channel in [routes.NAME.watch]",
                        **self._log(tool_call_id=request.tool_call_id))

    async def _discord_card(self, desk: DiscordDesk, request: ApprovalRequest, channel: str) -> bool:
        _card, posted = await desk.ask(self.route, request, channel)
        return bool(posted)

    async def _card(self, cards: CardDesk, request: ApprovalRequest, where: tuple[str, str | None]) -> bool:
        _card, posted = await cards.ask(self.route, request, *where)
        return bool(posted)

    async def _ask(self, where: str, request: ApprovalRequest, post: Callable[[], Awaitable[bool]]) -> bool:
        for attempt in range(PROMPT_ATTEMPTS):
            try:
                posted = await post()
                self.metrics.card(where, "posted" if posted else "already")
                log.info("approval prompt posted" if posted else "approval prompt already posted",
                         **self._log(tool_call_id=request.tool_call_id, where=where))
                return True
            except UpstreamError as exc:
                self.metrics.card(where, "error")
                log.warning("could not post the approval prompt", **self._log(
                    tool_call_id=request.tool_call_id, where=where, error=exc.code, attempt=attempt + 1))
                await asyncio.sleep(2.0 ** attempt)
        return False

    async def _closed(self, event: ApprovalClosed) -> None:
        log.info("approval closed", **self._log(tool_call_id=event.tool_call_id, reason=event.reason))
        await self.save_pending()
        if self.cards is not None and await self.cards.close(self.destination, event.tool_call_id, event.reason):
            self.metrics.card("slack", "closed")
        if self.prompts is not None and await self.prompts.close(self.route, self.destination, event.tool_call_id,
                                                                 event.reason):
            self.metrics.card("comment", "closed")
        if self.discord_cards is not None and await self.discord_cards.close(self.destination, event.tool_call_id,
                                                                             event.reason):
            self.metrics.card("discord", "closed")

    async def save_pending(self) -> None:
        value = json.dumps([asdict(r) for r in self.pending().values()], separators=(",", ":"))
        await self.queue.put_record(PENDING_KIND, self.route.name, value, RECORD_TTL)

    async def remembered(self) -> list[ApprovalRequest]:
        """The requests the route's watcher saw pending before a restart."""
        try:
            raw = await self.queue.record(PENDING_KIND, self.route.name)
            return [ApprovalRequest(**item) for item in json.loads(raw)] if raw else []
        except (QueueUnavailable, ValueError, TypeError) as exc:
            log.warning("could not read the pending approvals of the last run", **self._log(error=str(exc)))
            return []

    # -- turns ---------------------------------------------------------------------------

    async def _progressed(self, event: TurnProgress) -> None:
        if self.progress is None:
            return
        message_id = event.client_message_ids[0]
        origin = await self._recall(message_id)
        if origin is None or not self.progress.shows(origin):
            return
        key = f"{reply_target(origin)}:{message_id}"
        previous, current = self._chains.get(key), asyncio.current_task()
        assert current is not None
        self._chains[key] = current  # type: ignore[assignment]
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # one progress message: its updates go in order
        if await self.queue.record(ANSWERED_KIND, key) is not None:
            return  # the answer is out (here or from another watcher): it must stay
        await self.progress.show(origin, key, event.texts, event.activity)

    async def _reply(self, turn: TurnEnded) -> None:
        texts = reply_texts(turn)
        if not turn.client_message_ids or not texts:
            return
        try:
            answered: set[str] = set()
            for message_id in turn.client_message_ids:
                origin = await self._recall(message_id)
                if origin is None:
                    continue  # not a message relay delivered
                target = reply_target(origin)
                if target in answered:
                    continue
                answered.add(target)
                key = f"{target}:{message_id}"
                if await self.queue.create_record(ANSWERED_KIND, key, "1", RECORD_TTL) is not None:
                    continue  # another watcher has it
                place = await self._progress_place(key)
                posted = await self.replier.answer(origin, texts, place)
                self.metrics.answer(str(origin.reply.get("via", "none")), "ok" if posted else "error")
        except QueueUnavailable as exc:
            log.warning("could not reply: redis unavailable", **self._log(error=str(exc)))
        except Exception:
            log.exception("replying failed", **self._log())

    async def _progress_place(self, key: str) -> dict[str, Any] | None:
        """The turn's progress message (to be replaced by the answer), once its updates are done."""
        if self.progress is None:
            return None
        pending = self._chains.pop(key, None)
        if pending is not None and not pending.done():
            await asyncio.wait([pending])
        return await self.progress.place(key)

    async def _recall(self, message_id: str) -> Origin | None:
        """A message's origin; the worker records it just after delivery (and the device starts the
        turn before the worker hears its REST answer), so wait a moment."""
        deadline = time.monotonic() + self.recall_wait
        while True:
            origin = await self.origins.recall(message_id)
            if origin is not None or time.monotonic() >= deadline:
                return origin
            await asyncio.sleep(0.1)
