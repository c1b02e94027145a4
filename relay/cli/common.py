"""What the relay commands share: settings, listeners, the queue, the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from typing import Any, AsyncIterator

from relay.errors import ConfigError
from relay.logs import configure
from relay.settings import Settings, load

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_METRICS_PORT = 9100  # relay worker's; relay watch's is the next one
WATCH_METRICS_PORT = 9101


def command_settings(log_format: str = "json") -> Settings:
    """The settings, with logging configured: RELAY_LOG_FORMAT, else the command's own format."""
    settings = load(os.environ)
    configure(settings.log_level, settings.log_format or log_format)
    return settings


def listen(host: str, port: int) -> socket.socket:
    """Bind before starting anything, so a taken port is one clear line, not a traceback."""
    from relay.serving import bound_socket

    try:
        return bound_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose --host/--port)") from None


def metrics_listener(settings: Settings, default_port: int | None = None) -> socket.socket | None:
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


async def serving_metrics(metrics: Any, sock: socket.socket | None) -> AsyncIterator[None]:
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


async def warn_about_durability(queue: Any) -> None:
    import logging

    for warning in await queue.durability_warnings():
        logging.getLogger("relay.redis").warning(warning)


@contextlib.asynccontextmanager


async def open_queue(url: str, settings: Settings, *, socket_timeout: float = 10.0,
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


def require_redis(settings: Settings, command: str,
                   hint: str = "to try relay without Redis or Letta, run `relay dev`") -> str:
    if not settings.redis_url:
        raise ConfigError(f"REDIS_URL is not set; `relay {command}` needs Redis ({hint})")
    return settings.redis_url


def admin_answer(response: Any) -> dict[str, Any]:
    """A 200 from relay's admin API, as JSON; anything else a ConfigError naming the status."""
    if response.status_code != 200:
        raise ConfigError(f"relay's admin API answered {response.status_code}: {response.text[:200]}")
    data = response.json()
    if not isinstance(data, dict):
        raise ConfigError("relay's admin API answered something other than a JSON object")
    return data


def admin_token(settings: Settings, command: str, url: str) -> str:
    """Without REDIS_URL, dlq and status ask a running relay's admin API: say so, and with which token."""
    from relay.dev import DEV_ADMIN_TOKEN

    print(f"relay {command}: REDIS_URL is not set; asking the relay at {url}"
          + ("" if settings.admin_token else " with the development admin token"), file=sys.stderr)
    return settings.admin_token or DEV_ADMIN_TOKEN
