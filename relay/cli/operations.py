"""The operator's commands: relay send, dlq, status and check."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from relay import serving
from relay.cli.common import admin_answer, admin_token, command_settings, open_queue
from relay.errors import ConfigError
from relay.settings import load


def cmd_send(args: argparse.Namespace) -> int:
    import httpx

    from relay.dev import DEV_HOOK_SECRET
    from relay.sources.generic import decode_secret, signed_headers

    configured = os.environ.get("RELAY_HOOK_SECRET", "")
    try:
        secret = decode_secret(configured or DEV_HOOK_SECRET)
    except ValueError as exc:
        raise ConfigError(f"RELAY_HOOK_SECRET {exc}") from None
    payload: dict[str, Any]
    if args.text is not None:
        payload = {"text": args.text}
    else:
        decision: dict[str, Any] = {"tool_call_id": args.approve or args.deny, "approve": bool(args.approve)}
        if args.reason:
            decision["reason"] = args.reason
        payload = {"approval": decision}
    if args.route:
        payload["route"] = args.route
    body = json.dumps(payload).encode()
    webhook_id = args.webhook_id or f"msg_{uuid.uuid4().hex}"
    headers = signed_headers(secret, webhook_id, int(time.time()), body)
    if not configured:
        print("relay send: signing with the development secret (RELAY_HOOK_SECRET is not set)", file=sys.stderr)
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        print(f"relay send: could not reach {args.url}: {exc} (is `relay dev` running?)", file=sys.stderr)
        return 1
    print(f"{response.status_code} {response.text}")
    return 0 if response.is_success else 1


class _RedisDeadLetters:
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    async def list(self) -> list[dict[str, Any]]:
        from relay.web.admin import dead_letter_view

        return [dead_letter_view(e) for e in await self.queue.dead_letters()]

    async def apply(self, verb: str, ids: list[str] | None, force: bool = False) -> Any:
        from relay.web.admin import settle

        return await settle(self.queue, verb, ids, force=force)


class _HttpDeadLetters:
    def __init__(self, http: Any, token: str) -> None:
        self.http, self.headers = http, {"authorization": f"Bearer {token}"}

    async def list(self) -> list[dict[str, Any]]:
        response = await self.http.get("/admin/dead-letters", headers=self.headers)
        return list(admin_answer(response)["dead_letters"])

    async def apply(self, verb: str, ids: list[str] | None, force: bool = False) -> Any:
        from relay.web.admin import Settled

        body: dict[str, Any] = {"all": True} if ids is None else {"ids": ids}
        if force:
            body["force"] = True
        data = admin_answer(await self.http.post(f"/admin/dead-letters/{verb}", json=body, headers=self.headers))
        return Settled(list(data["replayed" if verb == "replay" else "dropped"]), list(data["missing"]),
                       list(data.get("held", [])))


def _with_dead_letters(args: argparse.Namespace, action: Any) -> int:
    import httpx

    settings = command_settings()

    async def run() -> int:
        if settings.redis_url:
            async with open_queue(settings.redis_url, settings) as queue:
                return await action(_RedisDeadLetters(queue))
        token = admin_token(settings, "dlq", args.url)
        async with httpx.AsyncClient(base_url=args.url, timeout=10.0) as http:
            try:
                return await action(_HttpDeadLetters(http, token))
            except httpx.HTTPError as exc:
                raise ConfigError(f"could not reach relay at {args.url}: {exc} (is `relay dev` running?)") from None

    return asyncio.run(run())


def cmd_dlq_list(args: argparse.Namespace) -> int:
    async def action(dead: Any) -> int:
        entries = await dead.list()
        for e in entries:
            if args.json:
                print(json.dumps(e))
            else:
                when = datetime.fromtimestamp(e["at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                print(f"{e['client_message_id']}  {when}  {e['kind']:<8} route={e['route']} "
                      f"attempts={e['attempts']} {e['code']}: {e['reason'][:160]}")
        if not args.json:
            print(f"{len(entries)} dead letter(s)", file=sys.stderr)
        return 0

    return _with_dead_letters(args, action)


def _dlq_apply(args: argparse.Namespace, verb: str, every: bool) -> int:
    if not every and not args.ids:
        print(f"relay dlq {verb}: give one or more ids, or --all", file=sys.stderr)
        return 2

    async def action(dead: Any) -> int:
        from relay.web.admin import HELD_REASON

        ids = None if every else list(args.ids)
        out = await dead.apply(verb, ids, getattr(args, "force", False))
        state = {"replay": "replayed", "drop": "dropped"}[verb]
        for message_id in out.done:
            print(f"{message_id}  {state}")
        for message_id in sorted(set(ids or []) - set(out.done) - set(out.missing) - set(out.held)):
            print(f"{message_id}  already gone")
        for message_id in out.missing:
            print(f"{message_id}  not found among dead letters", file=sys.stderr)
        for message_id in out.held:
            print(f"{message_id}  NOT replayed: {HELD_REASON}; replay it anyway with "
                  f"`relay dlq replay --force {message_id}`", file=sys.stderr)
        return 1 if out.missing or out.held else 0

    return _with_dead_letters(args, action)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    return _dlq_apply(args, "replay", args.all)


def cmd_dlq_drop(args: argparse.Namespace) -> int:
    return _dlq_apply(args, "drop", False)


def seconds_above_zero(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above zero")
    return seconds


def cmd_status(args: argparse.Namespace) -> int:
    """From Redis with REDIS_URL; else from a running relay's GET /admin/stats (like relay dlq)."""
    import httpx

    from relay.check import redis_location
    from relay.errors import QueueUnavailable
    from relay.queue import QueueStats
    from relay.status import render

    settings = load(os.environ)

    async def run() -> int:
        async with contextlib.AsyncExitStack() as resources:
            if settings.redis_url:
                source = f"Redis {redis_location(settings.redis_url)}, prefix {settings.key_prefix}"
                queue = await resources.enter_async_context(open_queue(settings.redis_url, settings))
                fetch, where = queue.stats, queue.topology
            else:
                where = None
                token = admin_token(settings, "status", args.url)
                source = f"relay at {args.url}"
                http = await resources.enter_async_context(httpx.AsyncClient(base_url=args.url, timeout=10.0))

                async def fetch() -> QueueStats:
                    response = await http.get("/admin/stats", headers={"authorization": f"Bearer {token}"})
                    try:
                        return QueueStats.from_dict(admin_answer(response))
                    except ValueError:
                        raise ConfigError("relay's admin API answered something other than queue stats") from None
            # an event, not a cancellation: redis-py may swallow a CancelledError mid-command (redis/redis-py#2028)
            stop = serving.stop_on_signals()
            while not stop.is_set():
                try:
                    text = render(await fetch(), source=source, now=time.time())
                    if where is not None:  # where the partitions live, and their replicas
                        text += "\n\n" + "\n".join((await where()).describe())
                except (QueueUnavailable, httpx.HTTPError) as exc:
                    trouble = f"could not read the queue from {source}: {exc}"
                    if not args.watch:
                        raise ConfigError(trouble) from None
                    text = f"relay status: {trouble}; trying again in {args.interval:g}s"
                if args.watch and sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")  # clear the screen: the table redraws in place
                print(text, end="\n\n" if args.watch else "\n", flush=True)
                if not args.watch or await serving.wait(stop, args.interval):
                    return 0
            return 0  # Ctrl-C (or SIGTERM) is how --watch ends

    return asyncio.run(run())


def cmd_check(args: argparse.Namespace) -> int:
    from relay.check import run

    report = asyncio.run(run(os.environ))
    for line in report.ok:
        print(f"ok  {line}")
    for line in report.skipped:
        print(f"--  not checked: {line}")
    if not report.problems:
        return 0
    count = len(report.problems)
    print(f"\nrelay check: {count} problem{'' if count == 1 else 's'}")
    for number, problem in enumerate(report.problems, 1):
        print(f"{number:>2}. [{problem.severity}] {problem.what}")
        print(f"    fix: {problem.fix}")
    return 1
