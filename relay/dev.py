"""`relay dev`: the whole pipeline in one process, for trying relay on a laptop.

web + worker + an in-process fakeredis (unless REDIS_URL is set) + a local Letta stand-in
(unless LETTA_API_KEY is set): the same strict model of Letta's server and of a Letta Code
device the tests use. It prints what the device receives, and what it refuses as the real one
would; a message containing "!tool" makes its agent ask to run a tool first, to be decided
with `relay send --approve/--deny`. It says so loudly: nothing is durable and nothing leaves
the machine. With SLACK_APP_TOKEN it holds Slack's Socket Mode connection too, so a real Slack
workspace reaches a laptop without a public URL.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import socket
import sys
from dataclasses import replace

import fakeredis
from redis.asyncio.cluster import RedisCluster

from relay.connections import ConnectionLimits
from relay.errors import ConfigError
from relay.approval_delivery import Deliverer
from relay.cards import cards_for
from relay.enrich import Enricher
from relay.github_api import GitHubApi
from relay.letta import LettaClient
from relay.metrics import Metrics
from relay.origins import Origins
from relay.queue import Queue
from relay.redis_nodes import open_for
from relay.check import door_sources
from relay.platforms import Platforms
from relay.replies import Replier
from relay.routing import Destination, Route
from relay import serving
from relay.serving import EmbeddedServer, bound_socket, server_config
from relay.slack_api import SlackApi
from relay.socket_mode import socket_door_for
from relay.settings import Settings
from relay.sources.generic import decode_secret
from relay.standin import DEV_AGENT_ID, DEV_DEVICE_ID, Device, LettaStandIn
from relay.web import create_app
from relay.watch import watcher_for
from relay.worker import Worker, consumer_name

log = logging.getLogger("relay.dev")

#: Used by `relay dev` and `relay send` when RELAY_HOOK_SECRET is not set. Public on purpose.
DEV_HOOK_SECRET = "whsec_" + base64.b64encode(b"relay-dev-secret:not-for-production").decode()
#: Used by `relay dev` (and `relay dlq` talking to it) when RELAY_ADMIN_TOKEN is not set.
DEV_ADMIN_TOKEN = "relay-dev-admin-token-not-for-production"


def stand_in_devices(routes: tuple[Route, ...]) -> list[Device]:
    """One stand-in device per configured route, so every route resolves locally."""
    devices = []
    for route in routes:
        d = route.destination
        devices.append(Device(
            device_id=d.device_id or f"dev-{route.name}",
            connection_name=d.connection_name or route.name,
            connection_id=d.connection_id or f"conn-dev-{route.name}",
        ))
    return devices


def prepare(settings: Settings, host: str = "127.0.0.1") -> Settings:
    """Dev defaults: the development secret and admin token, and the stand-in's agent when no
    route is set. Those are public: with real deliveries (LETTA_API_KEY) or listening beyond
    loopback, anyone could sign webhooks or read the queue with them, so then relay dev wants
    RELAY_HOOK_SECRET of its own, refuses the public values, and serves the admin API only
    with a RELAY_ADMIN_TOKEN of its own."""
    exposed = _exposure(settings, host)
    if exposed is None:
        if settings.hook_secret is None:
            settings = replace(settings, hook_secret=decode_secret(DEV_HOOK_SECRET))
        if settings.admin_token is None:
            settings = replace(settings, admin_token=DEV_ADMIN_TOKEN)
    elif settings.hook_secret is None:
        raise ConfigError(f"relay dev {exposed}: set RELAY_HOOK_SECRET to a secret of your own (`relay secret` "
                          "makes one); the public development secret is for a laptop's loopback only")
    elif settings.hook_secret == decode_secret(DEV_HOOK_SECRET):
        raise ConfigError(f"relay dev {exposed}: RELAY_HOOK_SECRET is the public development secret, with "
                          "which anyone can sign webhooks; set one of your own (`relay secret` makes one)")
    elif settings.admin_token == DEV_ADMIN_TOKEN:
        raise ConfigError(f"relay dev {exposed}: RELAY_ADMIN_TOKEN is the public development token; "
                          "set one of your own, or leave it unset (no admin API)")
    if not settings.routes:
        if settings.letta_api_key:
            raise ConfigError("relay dev with LETTA_API_KEY delivers to the real Letta API: set "
                              "LETTA_AGENT_ID and one of LETTA_CONNECTION_ID / LETTA_DEVICE_ID / "
                              "LETTA_CONNECTION_NAME (or RELAY_ROUTES)")
        default = Route("default", Destination(agent_id=DEV_AGENT_ID, device_id=DEV_DEVICE_ID))
        settings = replace(settings, routes=(default,))
    return settings


def _exposure(settings: Settings, host: str) -> str | None:
    """Why the public development credentials would be unsafe here, or None on a laptop."""
    if settings.letta_api_key:
        return "with LETTA_API_KEY delivers to the real Letta API"
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return None if loopback else f"listens on {host}, beyond this machine"


def _print_block(text: str) -> None:
    print(text, flush=True)


async def run(settings: Settings, listener: socket.socket) -> None:
    """Run until SIGINT/SIGTERM, serving webhooks on `listener` (already bound)."""
    host, port = listener.getsockname()[:2]
    own_secret, own_token = settings.hook_secret is not None, settings.admin_token is not None
    settings = prepare(settings, host)
    notes = []
    if settings.redis_url:
        redis = await open_for(settings.redis_url, settings.redis_cluster)
        notes.append("queue: " + ("Redis Cluster" if isinstance(redis, RedisCluster) else "Redis") + " at REDIS_URL")
        notes += [f"WARNING {w}" for w in await Queue(redis).durability_warnings()]
    else:
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        notes.append("queue: in-process fakeredis. NOTHING IS DURABLE: queued messages vanish on exit")
        if settings.redis_min_replicas:
            notes.append("RELAY_REDIS_MIN_REPLICAS ignored: the in-process queue has no replicas")
            settings = replace(settings, redis_min_replicas=0)
    stand_in_server = None
    metrics = Metrics()  # one registry for the web and the worker: one process
    if settings.letta_api_key:
        letta = LettaClient.from_settings(settings, metrics=metrics)
        notes.append(f"letta: the real API at {settings.letta_base_url}")
    else:
        stand_in = LettaStandIn(stand_in_devices(settings.routes), echo=_print_block)
        sock = bound_socket()
        stand_in_url = "http://127.0.0.1:%d" % sock.getsockname()[1]
        stand_in_server = EmbeddedServer(server_config(stand_in.app, "127.0.0.1", 0))
        letta = LettaClient.from_settings(settings, base_url=stand_in_url, api_key="relay-dev", metrics=metrics)
        notes.append(f"letta: local stand-in at {stand_in_url}. NOTHING LEAVES THIS MACHINE")
    notes.append("hook secret: RELAY_HOOK_SECRET" if own_secret else
                 "hook secret: the public development secret (relay send finds it by itself)")
    notes.append("admin API (/admin/…): RELAY_ADMIN_TOKEN" if own_token else
                 "admin API (/admin/…): the public development token (relay dlq finds it by itself)"
                 if settings.admin_token else "admin API (/admin/…): off (set RELAY_ADMIN_TOKEN)")

    slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
    if slack is not None and settings.slack_signing_secret is not None:
        notes.append(f"slack: /slack/* with the Slack API at {settings.slack_api_base_url}")
    if settings.slack_app_token is not None:
        notes.append(f"slack: Socket Mode (SLACK_APP_TOKEN), no public URL needed; Slack API at "
                     f"{settings.slack_api_base_url}")
    if settings.serves_github:
        notes.append("github: /github/webhook" + (f" (reactions via {settings.github_api_url})" if github else ""))
    if door_sources(settings):  # Linear, GitLab, Discord, mapped webhooks
        notes.append("doors: " + ", ".join(door_sources(settings)))
    web_queue = Queue(redis, prefix=settings.key_prefix, dedup_window=settings.dedup_window,
                      min_replicas=settings.redis_min_replicas, replica_timeout=settings.redis_replica_timeout)
    worker_queue = Queue(redis, prefix=settings.key_prefix, consumer=consumer_name(),
                         dedup_window=settings.dedup_window, min_replicas=settings.redis_min_replicas,
                         replica_timeout=settings.redis_replica_timeout)
    await web_queue.ensure_groups()
    platforms = Platforms.from_settings(settings)  # Linear, GitLab, Discord
    app = create_app(settings, web_queue, slack_api=slack, github_api=github, metrics=metrics,
                     **platforms.web_apis())
    door = socket_door_for(settings, web_queue, slack, metrics) if slack is not None else None
    web = EmbeddedServer(server_config(app, host, port, ConnectionLimits.from_settings(settings),
                                       metrics.connection_closed))
    replier = Replier(slack, github, cards=cards_for(settings, worker_queue, slack),
                      others=platforms.repliers(settings, worker_queue))
    worker = Worker(worker_queue, Deliverer(letta, settings, records=worker_queue), settings, replier=replier,
                    origins=Origins(redis, settings.key_prefix, settings.origin_ttl), metrics=metrics,
                    enricher=Enricher(settings, worker_queue, slack, github))
    watcher = None
    if any(route.watched for route in settings.routes):
        watcher = watcher_for(settings, redis, Queue(redis, prefix=settings.key_prefix), letta, slack, github,
                              metrics=metrics, platforms=platforms)
        notes.append("watch: status sockets of " + ", ".join(r.name for r in watcher.routes))
    if settings.web_metrics:
        notes.append(f"metrics: http://{host}:{port}/metrics")

    stop = serving.stop_on_signals()
    _banner(notes, host, port, [r.name for r in settings.routes])

    tasks = [asyncio.create_task(web.serve(sockets=[listener])), asyncio.create_task(worker.run(stop))]
    if stand_in_server is not None:
        tasks.append(asyncio.create_task(stand_in_server.serve(sockets=[sock])))
    if watcher is not None:
        tasks.append(asyncio.create_task(watcher.run(stop)))
    if door is not None:
        tasks.append(asyncio.create_task(door.run(stop)))
    await stop.wait()
    web.should_exit = True
    await tasks[1]  # the worker drains while the stand-in still answers
    if stand_in_server is not None:
        stand_in_server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await serving.close_all(letta, slack, github)
    await platforms.aclose()
    await web_queue.aclose()
    await worker_queue.aclose()
    await redis.aclose()


def _banner(notes: list[str], host: str, port: int, routes: list[str]) -> None:
    rule = "=" * 78
    lines = [rule, " relay dev: EMBEDDED MODE, for trying relay; not for production"]
    lines += [f"  * {note}" for note in notes]
    lines += [
        f"  * webhooks: http://{host}:{port}/hooks/generic   routes: {', '.join(routes)}",
        "  Try it in another terminal:",
        '      relay send "deploy finished, please summarize"',
        '      relay send "please !tool"          (the stand-in agent asks to run a tool)',
        "      relay send --approve TOOL_CALL_ID  (or --deny TOOL_CALL_ID --reason \"…\")",
        rule,
    ]
    log.warning("\n" + "\n".join(lines))
    sys.stderr.flush()
