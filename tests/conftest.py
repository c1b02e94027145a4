"""Shared fixtures.

Queue and worker tests run twice: against fakeredis and against a real Redis server.
The real server is RELAY_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); when none
answers there, the session starts a redis-server of its own. Every test writes under a
unique key prefix and deletes only those keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis

from relay.queue import Queue
from relay.redis_nodes import open_redis
from relay.settings import Settings
from relay.standin import Device, LettaStandIn
from relay.sources.generic import decode_secret
from tests.github_standin import GitHubStandIn
from tests.redis_cluster import Cluster
from tests.slack_standin import SlackStandIn
from tests.socket_mode_standin import SocketModeStandIn
from tests.support import SPEC_SECRET, RedisServer, ServerThread, owned, redis_answers, unique_prefix

AGENT = "agent-test"
DEVICE = "device-test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """relay.logs.configure (run by in-process CLI calls) replaces the root handlers with one
    bound to this test's captured stderr; later tests must not write to that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def real_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("RELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real Redis Cluster on loopback: three masters, one replica each (one per test process)."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server owned by one test (crash and restart tests)."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return unique_prefix()


@pytest.fixture(params=["fakeredis", "redis"])
async def redis_client(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Any]:
    async with client_for(request, prefix) as client:
        yield client


@contextlib.asynccontextmanager
async def client_for(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Any]:
    """A client of the kind the fixture's param names: "fakeredis", "redis" (a real server) or
    "cluster" (a real Redis Cluster; modules opt in by overriding `redis_client`)."""
    if request.param == "fakeredis":
        client: Any = fakeredis.FakeAsyncRedis(decode_responses=True)
    elif request.param == "redis":
        client = aioredis.Redis.from_url(request.getfixturevalue("real_redis_url"), decode_responses=True)
    else:
        client = await open_redis(request.getfixturevalue("redis_cluster").url)
    async with owned(client, prefix):
        yield client


@pytest.fixture
async def real_redis(real_redis_url: str, prefix: str) -> AsyncIterator[Any]:
    """A client of the real Redis server; the test's keys are deleted afterwards."""
    async with owned(aioredis.Redis.from_url(real_redis_url, decode_responses=True), prefix) as client:
        yield client


@pytest.fixture
async def queue(redis_client: Any, prefix: str) -> Queue:
    q = Queue(redis_client, prefix=prefix, consumer="consumer-a")
    await q.ensure_groups()
    return q


@pytest.fixture
def settings() -> Settings:
    """Fast settings for tests: short backoff and reclaim time, test destination."""
    from relay.routing import Destination, Route

    return Settings(
        hook_secret=decode_secret(SPEC_SECRET),
        routes=(Route("default", Destination(agent_id=AGENT, device_id=DEVICE)),
                Route("ops", Destination(agent_id="agent-ops", conversation_id="conv-ops",
                                         connection_name="ops-box"))),
        retry_base=0.05, retry_cap=0.2, reclaim_after=1.0, concurrency=8,
        letta_timeout=2.0, resolve_ttl=30.0, shutdown_grace=2.0,
    )


@pytest.fixture
def stand_in() -> Iterator[tuple[LettaStandIn, str]]:
    """A Letta stand-in on a real loopback port: (stand-in, base URL)."""
    standin = LettaStandIn([Device(DEVICE, "test-box", "conn-test"),
                            Device("device-ops", "ops-box", "conn-ops")])
    with ServerThread(standin.app) as server:
        yield standin, server.url


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TEAM = "T0001"
SLACK_CHANNEL = "C0001"
APPROVER = "U0APPROVER"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


@pytest.fixture
def slack_stand_in() -> Iterator[SlackStandIn]:
    """The Slack Web API and response_url endpoints on a real loopback port."""
    standin = SlackStandIn(groups={"S0APPROVERS": ["U0GROUPMEMBER"]})
    with ServerThread(standin.app) as server:
        standin.base_url = server.url
        yield standin


@pytest.fixture
def socket_stand_in(slack_stand_in: SlackStandIn) -> Iterator[SocketModeStandIn]:
    """Slack's Socket Mode on loopback, handed out by the Slack stand-in's apps.connections.open;
    unacknowledged envelopes come again after two seconds (more than relay ever needs to ack,
    even on a busy machine, so an envelope comes again only when a test makes it)."""
    standin = SocketModeStandIn(ack_timeout=2.0)
    with ServerThread(standin.app) as server:
        standin.base_url = server.url.replace("http://", "ws://")
        slack_stand_in.socket = standin
        yield standin
        slack_stand_in.socket = None


@pytest.fixture
def slack_settings(settings: Settings, slack_stand_in: SlackStandIn) -> Settings:
    """`settings` plus Slack: one workspace, an incidents channel route with approvers, and a
    workspace-wide route without approvers."""
    from dataclasses import replace

    from relay.routing import Destination, Route, SlackRule

    incidents = Route("incidents", Destination(agent_id="agent-incidents", device_id=DEVICE),
                      slack=SlackRule(teams=(SLACK_TEAM,), channels=(SLACK_CHANNEL,), approvers=(APPROVER,),
                                      approver_groups=("S0APPROVERS",)))
    everywhere = Route("everywhere", Destination(agent_id=AGENT, device_id=DEVICE),
                       slack=SlackRule(teams=(SLACK_TEAM,)))
    return replace(settings, routes=(*settings.routes, incidents, everywhere), slack_signing_secret=SLACK_SECRET,
                   slack_bot_token="xoxb-test-token", slack_api_base_url=slack_stand_in.api_url,
                   slack_hooks_url=slack_stand_in.hooks_url, admin_token=ADMIN_TOKEN)


GITHUB_SECRET = b"It's a Secret to Everybody"
REPOSITORY = "Codertocat/Hello-World"


@pytest.fixture
def github_stand_in() -> Iterator[GitHubStandIn]:
    standin = GitHubStandIn()
    with ServerThread(standin.app) as server:
        standin.base_url = server.url
        yield standin


@pytest.fixture
def github_settings(settings: Settings, github_stand_in: GitHubStandIn) -> Settings:
    """`settings` plus GitHub: Codertocat/Hello-World to a route with an approver, and the rest
    of Codertocat's repositories to a wildcard route."""
    from dataclasses import replace

    from relay.routing import Destination, GitHubRule, Route

    repo = Route("hello", Destination(agent_id="agent-hello", device_id=DEVICE),
                 github=GitHubRule(repositories=(REPOSITORY,), approvers=("Codertocat",)))
    owner = Route("codertocat", Destination(agent_id="agent-codertocat", device_id=DEVICE),
                  github=GitHubRule(repositories=("codertocat/*",), trigger="@relay-bot"))
    return replace(settings, routes=(*settings.routes, repo, owner), github_webhook_secret=GITHUB_SECRET,
                   github_token="ghp_test_token", github_api_url=github_stand_in.base_url)
