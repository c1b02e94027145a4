"""Real parts for tests: loopback HTTP servers in threads, Redis servers of the test's own,
signed requests, and key clean-up that touches only what a test wrote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import redis
from tenacity import wait_none

from relay.connections import ConnectionLimits
from relay.letta import LettaClient
from relay.metrics import Metrics
from relay.queue import Queue
from relay.replies import Replier
from relay.serving import EmbeddedServer, bound_socket, server_config
from relay.settings import Settings
from relay.sources.generic import signed_headers
from relay.worker import Worker

#: The Standard Webhooks spec's own example secret (24 bytes).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class ServerThread:
    """Serve an ASGI app on 127.0.0.1:<free port> from a background thread."""

    def __init__(self, app: Any, limits: ConnectionLimits | None = None,
                 closed: Callable[[str], None] | None = None) -> None:
        self.sock = bound_socket()
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        config = server_config(app, "127.0.0.1", 0, limits, closed)
        config.timeout_graceful_shutdown = 1  # tests leave deliberately hung requests behind
        self.server = EmbeddedServer(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("loopback server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server of the test's own, on a free port, with AOF fsync'd on every write."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what AOF already fsynced survives."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port and directory: Redis reloads its AOF."""
        self.start()


def unique_prefix() -> str:
    return f"relaytest-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def owned(client: Any, prefix: str) -> AsyncIterator[Any]:
    """Use a Redis client for one test: afterwards delete that test's keys and close it."""
    try:
        yield client
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


async def delete_prefix(client: Any, prefix: str) -> None:
    """Remove the keys under one test's prefix, and nothing else."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await client.delete(*keys)


def signed(body: dict[str, Any] | bytes, secret: bytes, *, webhook_id: str | None = None,
           timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    return raw, signed_headers(secret, msg_id, int(time.time()) if timestamp is None else timestamp, raw)


def is_relay_setting(name: str) -> bool:
    return name.startswith(("RELAY_", "LETTA_")) or name == "REDIS_URL"


def relay_env(**overrides: str) -> dict[str, str]:
    """The process environment minus any relay/Letta settings of the machine, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not is_relay_setting(k)}
    env.update(overrides)
    return env


def clear_relay_env(monkeypatch: Any) -> None:
    """Unset the machine's relay/Letta settings for an in-process `main()` call (a pytest MonkeyPatch)."""
    for name in list(os.environ):
        if is_relay_setting(name):
            monkeypatch.delenv(name)


@contextlib.asynccontextmanager
async def running_worker(redis_client: Any, prefix: str, settings: Settings, letta_url: str, *,
                         consumer: str = "worker-1", replier: Replier | None = None,
                         metrics: Metrics | None = None, api_key: str = "test-key") -> AsyncIterator[Worker]:
    """A worker delivering to `letta_url` for the duration of the block, as `relay worker` does
    (approvals over the status socket); stopped like SIGTERM."""
    from relay.approval_delivery import Deliverer

    queue = Queue(redis_client, prefix=prefix, consumer=consumer)
    letta = LettaClient(letta_url, api_key, timeout=settings.letta_timeout, retry_wait=wait_none(),
                        metrics=metrics)
    worker = Worker(queue, Deliverer(letta, settings, records=queue, answer_timeout=settings.letta_timeout),
                    settings, poll_interval=0.01, replier=replier, metrics=metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await letta.aclose()
