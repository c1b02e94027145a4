"""The `relay` command.

    relay serve [--host H] [--port P]   the web process (Procfile: web); with SLACK_APP_TOKEN it
                                        also holds Slack's Socket Mode connection
    relay worker                        the delivery process (Procfile: worker)
    relay watch                         carry agents' approval requests and replies back to chat
                                        (Procfile: watch; routes opt in with [routes.NAME.watch])
    relay dev [--host H] [--port P]     everything in one process, no Redis or Letta needed
    relay send TEXT | --approve ID | --deny ID [--reason R]   sign and post a generic webhook
    relay dlq list | replay ID…|--all | drop ID…             inspect and replay dead letters
                                        (REDIS_URL, or a running relay's /admin API)
    relay status [--watch] [--interval S]   queue depths, oldest message, dead letters, failures
    relay check                         settings, routes, Redis and (with LETTA_API_KEY) destinations
    relay secret                        print a new whsec_ secret for RELAY_HOOK_SECRET
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Sequence

from relay import __version__, serving
from relay.errors import ConfigError
from relay.logs import configure
from relay.settings import Settings, load

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 9100  # relay worker's; relay watch's is the next one
WATCH_METRICS_PORT = 9101


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

    watch = commands.add_parser("watch", help="carry agents' approval requests and replies back to chat "
                                              "(needs REDIS_URL, LETTA_API_KEY, routes with [routes.NAME.watch])")
    watch.set_defaults(run=cmd_watch)

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

    dlq = commands.add_parser("dlq", help="dead letters: list, replay, drop")
    dlq.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                     help="a running relay to ask when REDIS_URL is not set (default %(default)s)")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=cmd_dlq_list)
    replay = actions.add_parser("replay", help="queue dead letters again, keeping their client_message_id")
    replay.add_argument("ids", nargs="*", metavar="ID", help="client_message_id of each dead letter")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--force", action="store_true",
                        help="replay even a message an earlier attempt may have delivered over an hour ago "
                             "(the device has forgotten its id by then: the agent may see it twice)")
    replay.set_defaults(run=cmd_dlq_replay)
    drop = actions.add_parser("drop", help="delete dead letters for good")
    drop.add_argument("ids", nargs="+", metavar="ID", help="client_message_id of each dead letter")
    drop.set_defaults(run=cmd_dlq_drop)

    status = commands.add_parser("status", help="queue depths, oldest waiting message, dead letters, failures")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=_seconds, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch (default %(default)s)")
    status.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                        help="a running relay to ask when REDIS_URL is not set (default %(default)s)")
    status.set_defaults(run=cmd_status)

    check = commands.add_parser("check", help="check settings, routes, Redis and Letta destinations")
    check.set_defaults(run=cmd_check)

    secret = commands.add_parser("secret", help="print a new whsec_ secret for RELAY_HOOK_SECRET")
    secret.set_defaults(run=lambda args: print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()))
    return parser


# -- settings checks --------------------------------------------------------------------------

def _settings(log_format: str = "json") -> Settings:
    """The settings, with logging configured: RELAY_LOG_FORMAT, else the command's own format."""
    settings = load(os.environ)
    configure(settings.log_level, settings.log_format or log_format)
    return settings


def _listen(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a taken port is one clear line, not a traceback."""
    from relay.serving import bound_socket

    try:
        return bound_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose --host/--port)") from None


def _metrics_listener(settings: Settings, default_port: int | None = None) -> socket.socket | None:
    """The metrics socket of the worker (or watcher). The default port, when taken (two workers on
    one host), is skipped with a warning: delivering matters more than being scraped. A port
    chosen with RELAY_METRICS_PORT must be free."""
    import logging

    from relay.serving import bound_socket

    if settings.metrics_port == 0:
        return None
    port = settings.metrics_port or default_port or DEFAULT_METRICS_PORT
    try:
        return bound_socket(settings.metrics_host, port)
    except OSError as exc:
        problem = f"cannot listen on {settings.metrics_host}:{port} for metrics: {exc.strerror or exc}"
        if settings.metrics_port is None:
            logging.getLogger("relay.metrics").warning(
                f"{problem}; this worker serves no metrics (set RELAY_METRICS_PORT, or 0 for none)")
            return None
        raise ConfigError(f"{problem} (choose another RELAY_METRICS_PORT, or 0 for none)") from None


@contextlib.asynccontextmanager
async def _serving_metrics(metrics: Any, sock: socket.socket | None) -> AsyncIterator[None]:
    """Serve `metrics` on `sock` (if any) for the duration of the block."""
    from relay.serving import EmbeddedServer, server_config

    if sock is None:
        yield
        return
    host, port = sock.getsockname()[:2]
    exporter = EmbeddedServer(server_config(metrics.app(), host, port))
    task = asyncio.create_task(exporter.serve(sockets=[sock]))
    try:
        yield
    finally:
        exporter.should_exit = True
        await task


async def _warn_about_durability(queue: Any) -> None:
    import logging

    for warning in await queue.durability_warnings():
        logging.getLogger("relay.redis").warning(warning)


@contextlib.asynccontextmanager
async def _queue(url: str, settings: Settings, *, socket_timeout: float = 10.0,
                 **options: Any) -> AsyncIterator[Any]:
    """A Queue under settings.key_prefix on its own Redis connection (`queue.redis`; a cluster
    client on a Redis Cluster), closed after the block."""
    from relay.queue import Queue
    from relay.redis_nodes import open_for

    redis = await open_for(url, settings.redis_cluster, socket_timeout=socket_timeout)
    queue = Queue(redis, prefix=settings.key_prefix, min_replicas=settings.redis_min_replicas,
                  replica_timeout=settings.redis_replica_timeout, **options)
    try:
        yield queue
    finally:
        await queue.aclose()
        await redis.aclose()


def _require_redis(settings: Settings, command: str,
                   hint: str = "to try relay without Redis or Letta, run `relay dev`") -> str:
    if not settings.redis_url:
        raise ConfigError(f"REDIS_URL is not set; `relay {command}` needs Redis ({hint})")
    return settings.redis_url


# -- processes ---------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from relay.check import settings_problems
    from relay.connections import ConnectionLimits
    from relay.github_api import GitHubApi
    from relay.metrics import Metrics
    from relay.platforms import Platforms
    from relay.serving import server_config
    from relay.slack_api import SlackApi
    from relay.socket_mode import socket_door_for
    from relay.web import create_app

    settings = _settings()
    url = _require_redis(settings, "serve")
    for problem in settings_problems(settings):  # with Redis set: no source, or no destination
        raise ConfigError(f"{problem.what}: {problem.fix}")
    sock = _listen(args.host, args.port)

    async def run() -> None:
        async with _queue(url, settings, socket_timeout=5.0, dedup_window=settings.dedup_window) as queue:
            await _warn_about_durability(queue)
            slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
            metrics = Metrics()
            platforms = Platforms.from_settings(settings)  # Linear, GitLab, Discord
            app = create_app(settings, queue, slack_api=slack, github_api=github, metrics=metrics,
                             **platforms.web_apis())
            config = server_config(app, args.host, args.port, ConnectionLimits.from_settings(settings),
                                   metrics.connection_closed)
            door = socket_door_for(settings, queue, slack, metrics) if slack is not None else None
            try:
                if door is None:
                    await uvicorn.Server(config).serve(sockets=[sock])
                else:
                    await _serve_beside(door, config, sock)
            finally:
                await serving.close_all(slack, github)
                await platforms.aclose()

    serving.run(run())
    return 0


async def _serve_beside(door: Any, config: Any, sock: socket.socket) -> None:
    """The web and the Socket Mode door until SIGINT/SIGTERM, then both stop gracefully (the door
    acknowledges what it has stored). uvicorn's own signal handling would raise the signal again
    once the web stopped, ending the process before the door could."""
    stop = serving.stop_on_signals()
    server = serving.EmbeddedServer(config)
    web = asyncio.create_task(server.serve(sockets=[sock]))
    socket_mode = asyncio.create_task(door.run(stop))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({web, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.should_exit = True
    await asyncio.gather(web, socket_mode, stopped)


def cmd_worker(args: argparse.Namespace) -> int:
    from relay.github_api import GitHubApi
    from relay.letta import LettaClient
    from relay.metrics import Metrics
    from relay.origins import Origins
    from relay.platforms import Platforms
    from relay.replies import Replier
    from relay.slack_api import SlackApi
    from relay.approval_delivery import Deliverer
    from relay.cards import cards_for
    from relay.enrich import Enricher
    from relay.worker import Worker, consumer_name

    settings = _settings()
    url = _require_redis(settings, "worker")
    if not settings.letta_api_key:
        raise ConfigError("LETTA_API_KEY is not set; `relay worker` needs it to deliver to Letta "
                          "(to try relay without an account, run `relay dev`)")
    metrics_sock = _metrics_listener(settings)

    async def run() -> None:
        async with _queue(url, settings, consumer=consumer_name(), dedup_window=settings.dedup_window) as queue:
            await _warn_about_durability(queue)
            metrics = Metrics()
            metrics.watch(queue)
            letta = LettaClient.from_settings(settings, metrics=metrics)
            slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
            platforms = Platforms.from_settings(settings)  # Linear, GitLab, Discord
            stop = serving.stop_on_signals()
            try:
                async with _serving_metrics(metrics, metrics_sock):
                    origins = Origins(queue.redis, settings.key_prefix, settings.origin_ttl)
                    replier = Replier(slack, github, cards=cards_for(settings, queue, slack),
                                      others=platforms.repliers(settings, queue))
                    await Worker(queue, Deliverer(letta, settings, records=queue), settings, replier=replier,
                                 origins=origins, metrics=metrics,
                                 enricher=Enricher(settings, queue, slack, github)).run(stop)
            finally:
                await serving.close_all(letta, slack, github)
                await platforms.aclose()

    serving.run(run())
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from relay.github_api import GitHubApi
    from relay.letta import LettaClient
    from relay.metrics import Metrics
    from relay.platforms import Platforms
    from relay.slack_api import SlackApi
    from relay.watch import watcher_for

    settings = _settings()
    url = _require_redis(settings, "watch")
    if not settings.letta_api_key:
        raise ConfigError("LETTA_API_KEY is not set; `relay watch` needs it to open Letta's status sockets")
    if not any(route.watched for route in settings.routes):
        raise ConfigError("no route opts in to `relay watch`: add [routes.NAME.watch] (slack_channel = \"C…\") "
                          "to the routes file (RELAY_ROUTES)")

    metrics_sock = _metrics_listener(settings, WATCH_METRICS_PORT)

    async def run() -> None:
        async with _queue(url, settings) as queue:
            metrics = Metrics()
            letta = LettaClient.from_settings(settings, metrics=metrics)
            slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
            platforms = Platforms.from_settings(settings)  # Linear, GitLab, Discord
            stop = serving.stop_on_signals()
            try:
                async with _serving_metrics(metrics, metrics_sock):
                    await watcher_for(settings, queue.redis, queue, letta, slack, github, metrics=metrics,
                                      platforms=platforms).run(stop)
            finally:
                await serving.close_all(letta, slack, github)
                await platforms.aclose()

    serving.run(run())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from relay import dev

    settings = _settings(log_format="text")
    serving.run(dev.run(settings, _listen(args.host, args.port)))
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
#
# With REDIS_URL, straight from Redis; without it, through a running relay's /admin API
# (`relay dev` serves one with the development admin token).

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
        return list(_admin_answer(response)["dead_letters"])

    async def apply(self, verb: str, ids: list[str] | None, force: bool = False) -> Any:
        from relay.web.admin import Settled

        body: dict[str, Any] = {"all": True} if ids is None else {"ids": ids}
        if force:
            body["force"] = True
        data = _admin_answer(await self.http.post(f"/admin/dead-letters/{verb}", json=body, headers=self.headers))
        return Settled(list(data["replayed" if verb == "replay" else "dropped"]), list(data["missing"]),
                       list(data.get("held", [])))


def _admin_answer(response: Any) -> dict[str, Any]:
    """A 200 from relay's admin API, as JSON; anything else a ConfigError naming the status."""
    if response.status_code != 200:
        raise ConfigError(f"relay's admin API answered {response.status_code}: {response.text[:200]}")
    data = response.json()
    if not isinstance(data, dict):
        raise ConfigError("relay's admin API answered something other than a JSON object")
    return data


def _admin_token(settings: Settings, command: str, url: str) -> str:
    """Without REDIS_URL, dlq and status ask a running relay's admin API: say so, and with which token."""
    from relay.dev import DEV_ADMIN_TOKEN

    print(f"relay {command}: REDIS_URL is not set; asking the relay at {url}"
          + ("" if settings.admin_token else " with the development admin token"), file=sys.stderr)
    return settings.admin_token or DEV_ADMIN_TOKEN


def _with_dead_letters(args: argparse.Namespace, action: Any) -> int:
    import httpx

    settings = _settings()

    async def run() -> int:
        if settings.redis_url:
            async with _queue(settings.redis_url, settings) as queue:
                return await action(_RedisDeadLetters(queue))
        token = _admin_token(settings, "dlq", args.url)
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


# -- relay status and relay check --------------------------------------------------------------

def _seconds(value: str) -> float:
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
                queue = await resources.enter_async_context(_queue(settings.redis_url, settings))
                fetch, where = queue.stats, queue.topology
            else:
                where = None
                token = _admin_token(settings, "status", args.url)
                source = f"relay at {args.url}"
                http = await resources.enter_async_context(httpx.AsyncClient(base_url=args.url, timeout=10.0))

                async def fetch() -> QueueStats:
                    response = await http.get("/admin/stats", headers={"authorization": f"Bearer {token}"})
                    try:
                        return QueueStats.from_dict(_admin_answer(response))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
