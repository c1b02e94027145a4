"""The `relay` command.

    relay serve [--host H] [--port P]   the web process (Procfile: web)
    relay worker                        the delivery process (Procfile: worker)
    relay dev [--host H] [--port P]     everything in one process, no Redis or Letta needed
    relay send TEXT | --approve ID | --deny ID [--reason R]   sign and post a generic webhook
    relay dlq list | replay ID…|--all | drop ID…             inspect and replay dead letters
    relay secret                        print a new whsec_ secret for RELAY_HOOK_SECRET
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Sequence

from relay import __version__
from relay.errors import ConfigError
from relay.logs import configure
from relay.settings import Settings, load

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Deliver webhooks to Letta agents.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, run, text in (("serve", cmd_serve, "run the web process (needs REDIS_URL)"),
                            ("dev", cmd_dev, "run everything in one process (no Redis or Letta needed)")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
        command.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
        command.set_defaults(run=run)

    worker = commands.add_parser("worker", help="run the delivery process (needs REDIS_URL, LETTA_API_KEY)")
    worker.set_defaults(run=cmd_worker)

    send = commands.add_parser("send", help="sign and post a generic webhook to a running relay")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="the message for the agent")
    what.add_argument("--approve", metavar="TOOL_CALL_ID", help="approve a pending tool call")
    what.add_argument("--deny", metavar="TOOL_CALL_ID", help="deny a pending tool call")
    send.add_argument("--reason", help="why (sent with --deny or --approve)")
    send.add_argument("--route", help="a route name from RELAY_ROUTES (default: the default destination)")
    send.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/hooks/generic",
                      help="where relay listens (default %(default)s)")
    send.add_argument("--id", dest="webhook_id", help="webhook-id to use (repeat one to see de-duplication)")
    send.set_defaults(run=cmd_send)

    dlq = commands.add_parser("dlq", help="dead letters: list, replay, drop (needs REDIS_URL)")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=cmd_dlq_list)
    replay = actions.add_parser("replay", help="queue dead letters again, keeping their client_message_id")
    replay.add_argument("ids", nargs="*", metavar="ID", help="client_message_id of each dead letter")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.set_defaults(run=cmd_dlq_replay)
    drop = actions.add_parser("drop", help="delete dead letters for good")
    drop.add_argument("ids", nargs="+", metavar="ID", help="client_message_id of each dead letter")
    drop.set_defaults(run=cmd_dlq_drop)

    secret = commands.add_parser("secret", help="print a new whsec_ secret for RELAY_HOOK_SECRET")
    secret.set_defaults(run=lambda args: print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()))
    return parser


# -- settings checks --------------------------------------------------------------------------

def _settings() -> Settings:
    settings = load(os.environ)
    configure(settings.log_level)
    return settings


def _listen(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a taken port is one clear line, not a traceback."""
    from relay.serving import bound_socket

    try:
        return bound_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose --host/--port)") from None


async def _warn_about_durability(queue: Any) -> None:
    import logging

    for warning in await queue.durability_warnings():
        logging.getLogger("relay.redis").warning(warning)


def _require_redis(settings: Settings, command: str,
                   hint: str = "to try relay without Redis or Letta, run `relay dev`") -> str:
    if not settings.redis_url:
        raise ConfigError(f"REDIS_URL is not set; `relay {command}` needs Redis ({hint})")
    return settings.redis_url


# -- processes ---------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from relay.github_api import GitHubApi
    from relay.queue import Queue, connect
    from relay.serving import server_config
    from relay.slack_api import SlackApi
    from relay.web import create_app

    settings = _settings()
    url = _require_redis(settings, "serve")
    if not (settings.hook_secret or settings.slack_signing_secret or settings.github_webhook_secret):
        raise ConfigError("no source is configured: set RELAY_HOOK_SECRET (`relay secret` makes one), "
                          "SLACK_SIGNING_SECRET and/or GITHUB_WEBHOOK_SECRET")
    if not settings.routes:
        raise ConfigError("no destination: set LETTA_AGENT_ID and one of LETTA_CONNECTION_ID / "
                          "LETTA_DEVICE_ID / LETTA_CONNECTION_NAME, or RELAY_ROUTES")
    sock = _listen(args.host, args.port)

    async def run() -> None:
        queue = Queue(connect(url, socket_timeout=5.0), prefix=settings.key_prefix,
                      dedup_window=settings.dedup_window)
        await _warn_about_durability(queue)
        slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
        app = create_app(settings, queue, slack_api=slack, github_api=github)
        try:
            await uvicorn.Server(server_config(app, args.host, args.port)).serve(sockets=[sock])
        finally:
            for client in (slack, github):
                if client is not None:
                    await client.aclose()
            await queue.redis.aclose()

    asyncio.run(run())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from relay.github_api import GitHubApi
    from relay.letta import LettaClient
    from relay.queue import Queue, connect
    from relay.replies import Replier
    from relay.slack_api import SlackApi
    from relay.worker import Worker, consumer_name

    settings = _settings()
    url = _require_redis(settings, "worker")
    if not settings.letta_api_key:
        raise ConfigError("LETTA_API_KEY is not set; `relay worker` needs it to deliver to Letta "
                          "(to try relay without an account, run `relay dev`)")

    async def run() -> None:
        redis = connect(url)
        queue = Queue(redis, prefix=settings.key_prefix, consumer=consumer_name(),
                      dedup_window=settings.dedup_window)
        await _warn_about_durability(queue)
        letta = LettaClient.from_settings(settings)
        slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await Worker(queue, letta, settings, replier=Replier(slack, github)).run(stop)
        finally:
            for client in (letta, slack, github):
                if client is not None:
                    await client.aclose()
            await redis.aclose()

    asyncio.run(run())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from relay import dev

    settings = _settings()
    asyncio.run(dev.run(settings, _listen(args.host, args.port)))
    return 0


# -- relay send --------------------------------------------------------------------------------

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


# -- relay dlq ---------------------------------------------------------------------------------

def _with_queue(action: Any) -> int:
    from relay.queue import Queue, connect

    settings = _settings()
    url = _require_redis(settings, "dlq", "`relay dev` without REDIS_URL keeps its queue inside its own process")

    async def run() -> int:
        redis = connect(url)
        try:
            return await action(Queue(redis, prefix=settings.key_prefix))
        finally:
            await redis.aclose()

    return asyncio.run(run())


def cmd_dlq_list(args: argparse.Namespace) -> int:
    async def action(queue: Any) -> int:
        entries = await queue.dead_letters()
        for e in entries:
            if args.json:
                print(json.dumps({"client_message_id": e.client_message_id, "at": e.at, "code": e.code,
                                  "reason": e.reason, "route": e.envelope.route, "source": e.envelope.source,
                                  "delivery_id": e.envelope.delivery_id, "kind": e.envelope.kind,
                                  "attempts": e.envelope.attempts}))
            else:
                when = datetime.fromtimestamp(e.at, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
                print(f"{e.client_message_id}  {when}  {e.envelope.kind:<8} route={e.envelope.route} "
                      f"attempts={e.envelope.attempts} {e.code}: {e.reason[:160]}")
        if not args.json:
            print(f"{len(entries)} dead letter(s)", file=sys.stderr)
        return 0

    return _with_queue(action)


def _select(entries: list[Any], ids: list[str], every: bool) -> tuple[list[Any], list[str]]:
    if every:
        return entries, []
    wanted = set(ids)
    chosen = [e for e in entries if e.client_message_id in wanted]
    missing = sorted(wanted - {e.client_message_id for e in chosen})
    return chosen, missing


def _dlq_apply(args: argparse.Namespace, verb: str, every: bool) -> int:
    if not every and not args.ids:
        print(f"relay dlq {verb}: give one or more ids, or --all", file=sys.stderr)
        return 2

    async def action(queue: Any) -> int:
        chosen, missing = _select(await queue.dead_letters(), args.ids, every)
        for entry in chosen:
            done = await (queue.replay(entry) if verb == "replay" else queue.drop(entry))
            state = {"replay": "replayed", "drop": "dropped"}[verb] if done else "already gone"
            print(f"{entry.client_message_id}  {state}")
        for message_id in missing:
            print(f"{message_id}  not found among dead letters", file=sys.stderr)
        return 1 if missing else 0

    return _with_queue(action)


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    return _dlq_apply(args, "replay", args.all)


def cmd_dlq_drop(args: argparse.Namespace) -> int:
    return _dlq_apply(args, "drop", False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
