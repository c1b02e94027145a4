"""The long-running commands: relay serve, worker, watch and dev."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from typing import Any, AsyncIterator

from relay import serving
from relay.cli.common import (WATCH_METRICS_PORT, command_settings, listen, metrics_listener, open_queue,
                              require_redis, serving_metrics, warn_about_durability)
from relay.errors import ConfigError
from relay.settings import Settings


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

    settings = command_settings()
    url = require_redis(settings, "serve")
    for problem in settings_problems(settings):  # with Redis set: no source, or no destination
        raise ConfigError(f"{problem.what}: {problem.fix}")
    sock = listen(args.host, args.port)

    async def run() -> None:
        async with open_queue(url, settings, socket_timeout=5.0, dedup_window=settings.dedup_window) as queue:
            await warn_about_durability(queue)
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
    from relay.metrics import Metrics
    from relay.origins import Origins
    from relay.replies import Replier
    from relay.approval_delivery import Deliverer
    from relay.cards import cards_for
    from relay.enrich import Enricher
    from relay.worker import Worker, consumer_name

    settings = command_settings()
    url = require_redis(settings, "worker")
    if not settings.letta_api_key:
        raise ConfigError("LETTA_API_KEY is not set; `relay worker` needs it to deliver to Letta "
                          "(to try relay without an account, run `relay dev`)")
    metrics_sock = metrics_listener(settings)

    async def run() -> None:
        async with open_queue(url, settings, consumer=consumer_name(), dedup_window=settings.dedup_window) as queue:
            await warn_about_durability(queue)
            metrics = Metrics()
            metrics.watch(queue)
            stop = serving.stop_on_signals()
            async with outside_clients(settings, metrics) as (letta, slack, github, platforms), \
                    serving_metrics(metrics, metrics_sock):
                origins = Origins(queue.redis, settings.key_prefix, settings.origin_ttl)
                replier = Replier(slack, github, cards=cards_for(settings, queue, slack),
                                  others=platforms.repliers(settings, queue))
                await Worker(queue, Deliverer(letta, settings, records=queue), settings, replier=replier,
                             origins=origins, metrics=metrics,
                             enricher=Enricher(settings, queue, slack, github)).run(stop)

    serving.run(run())
    return 0


@contextlib.asynccontextmanager
async def outside_clients(settings: Settings, metrics: Any) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """Letta, Slack, GitHub and the other platforms' clients of a process, closed after the block."""
    from relay.github_api import GitHubApi
    from relay.letta import LettaClient
    from relay.platforms import Platforms
    from relay.slack_api import SlackApi

    letta = LettaClient.from_settings(settings, metrics=metrics)
    slack, github = SlackApi.from_settings(settings), GitHubApi.from_settings(settings)
    platforms = Platforms.from_settings(settings)  # Linear, GitLab, Discord
    try:
        yield letta, slack, github, platforms
    finally:
        await serving.close_all(letta, slack, github)
        await platforms.aclose()


def cmd_watch(args: argparse.Namespace) -> int:
    from relay.metrics import Metrics
    from relay.watch import watcher_for

    settings = command_settings()
    url = require_redis(settings, "watch")
    if not settings.letta_api_key:
        raise ConfigError("LETTA_API_KEY is not set; `relay watch` needs it to open Letta's status sockets")
    if not any(route.watched for route in settings.routes):
        raise ConfigError("no route opts in to `relay watch`: add [routes.NAME.watch] (slack_channel = \"C…\") "
                          "to the routes file (RELAY_ROUTES)")

    metrics_sock = metrics_listener(settings, WATCH_METRICS_PORT)

    async def run() -> None:
        async with open_queue(url, settings) as queue:
            metrics = Metrics()
            stop = serving.stop_on_signals()
            async with outside_clients(settings, metrics) as (letta, slack, github, platforms), \
                    serving_metrics(metrics, metrics_sock):
                await watcher_for(settings, queue.redis, queue, letta, slack, github, metrics=metrics,
                                  platforms=platforms).run(stop)

    serving.run(run())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from relay import dev

    settings = command_settings(log_format="text")
    serving.run(dev.run(settings, listen(args.host, args.port)))
    return 0
