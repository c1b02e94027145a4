"""The fault rig: real parts end to end.

A redis-server of the test's own (AOF, appendfsync always), the Letta stand-in on loopback,
relay's web on loopback for ingest (so "accepted" means answered 2xx), and `relay worker`
subprocesses (plain, or armed to SIGKILL themselves at a point). Each scenario's ledger figures
are collected into tests/faults/last-run.json and printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
import pytest

from relay.queue import DeadEntry, Queue, connect
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.sources.generic import signed_headers
from relay.standin import Device, LettaStandIn
from relay.web import create_app
from tests.conftest import DEVICE
from tests.faults.ledger import Ledger
from tests.support import SPEC_SECRET, RedisServer, ServerThread, relay_env

ROOT = Path(__file__).parent.parent.parent
REPORT = Path(__file__).parent / "last-run.json"
SECRET = __import__("base64").b64decode(SPEC_SECRET.removeprefix("whsec_"))
CONVERSATIONS = 12
_results: list[dict[str, Any]] = []
T = TypeVar("T")

WORKER_SETTINGS = {"RELAY_RECLAIM_AFTER": "1", "RELAY_RETRY_BASE": "0.05", "RELAY_RETRY_CAP": "0.5",
                   "RELAY_LETTA_TIMEOUT": "2", "RELAY_SHUTDOWN_GRACE": "1", "RELAY_CONCURRENCY": "8"}


def conversation_route(i: int) -> Route:
    return Route(f"c{i}", Destination(agent_id=f"agent-{i}", device_id=DEVICE))


@dataclass
class Rig:
    scenario: str
    redis: RedisServer
    standin: LettaStandIn
    letta_url: str
    prefix: str
    tmp: Path
    web_url: str = ""
    ledger: Ledger = field(init=False)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.scenario)
        self._http = httpx.Client(timeout=10)

    # -- processes --------------------------------------------------------------------------------

    def worker(self, crash_at: str | None = None, **settings: str) -> subprocess.Popen[bytes]:
        env = relay_env(REDIS_URL=self.redis.url, LETTA_API_KEY="fault-key", LETTA_BASE_URL=self.letta_url,
                        RELAY_KEY_PREFIX=self.prefix, **{**WORKER_SETTINGS, **settings})
        command = ([sys.executable, "-m", "tests.faults.crashing_worker", crash_at] if crash_at
                   else [sys.executable, "-m", "relay", "worker"])
        with open(self.tmp / "workers.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=ROOT)
        self.workers.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.ledger.fault("SIGKILL worker")

    def terminate(self, process: subprocess.Popen[bytes]) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)

    def log(self) -> str:
        path = self.tmp / "workers.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    # -- traffic ---------------------------------------------------------------------------------

    def ingest(self, conversation: int, seq: int, route: str | None = None) -> httpx.Response:
        """Post one signed webhook; a 202 enters the ledger."""
        body = json.dumps({"text": f"c{conversation}:{seq}", "route": route or f"c{conversation}"}).encode()
        headers = signed_headers(SECRET, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        response = self._http.post(f"{self.web_url}/hooks/generic", content=body, headers=headers)
        if response.status_code == 202:
            self.ledger.accept(response.json()["client_message_id"], f"c{conversation}", seq)
        return response

    def wait(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{self.scenario}: {what} not reached\n{self.log()}"
            time.sleep(0.05)

    def settled(self) -> bool:
        """Every accepted message delivered or dead-lettered."""
        done = set(self.standin.delivered_ids()) | {d.client_message_id for d in self.dead_letters()}
        return set(self.ledger.accepted) <= done

    def _ask(self, question: Callable[[Queue], Awaitable[T]]) -> T:
        """One question to the queue, from the test's thread, on a connection of its own."""
        async def ask() -> T:
            client = connect(self.redis.url)
            try:
                return await question(Queue(client, prefix=self.prefix))
            finally:
                await client.aclose()
        return asyncio.run(ask())

    def depth(self) -> Any:
        return self._ask(lambda queue: queue.depth())

    def pause(self) -> float:
        """The shared Retry-After pause, as published in Redis (0 when none)."""
        return self._ask(lambda queue: queue.pause_of(0))

    def dead_letters(self) -> list[DeadEntry]:
        return self._ask(lambda queue: queue.dead_letters())

    def finish(self) -> dict[str, Any]:
        """Wait until everything settled, then check and record the ledger."""
        self.wait(self.settled, what="every accepted message delivered or dead-lettered")
        result = self.ledger.check(self.standin, self.dead_letters())
        _results.append(result)
        return result

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self._http.close()


@pytest.fixture
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    redis = RedisServer(tmp_path).start()
    standin = LettaStandIn([Device(DEVICE, "fault-box", "conn-fault")], seed=20261125)
    prefix = "relayfault"
    with ServerThread(standin.app) as letta:
        rig = Rig(request.node.name, redis, standin, letta.url, prefix, tmp_path)
        settings = Settings(hook_secret=SECRET, key_prefix=prefix,
                            routes=(*(conversation_route(i) for i in range(CONVERSATIONS)),
                                    Route("unresolvable", Destination(agent_id="agent-x", device_id="no-such-device")),
                                    Route("late", Destination(agent_id="agent-late", device_id="late-device"))))
        web_queue = Queue(connect(redis.url, socket_timeout=2.0), prefix=prefix)
        with ServerThread(create_app(settings, web_queue)) as web:
            rig.web_url = web.url
            try:
                yield rig
            finally:
                rig.close()
    redis.stop()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _results:
        REPORT.write_text(json.dumps(_results, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    terminalreporter.section("reliability ledger")
    terminalreporter.line(f"{'scenario':<58} {'accepted':>8} {'deliv.':>6} {'dead':>5} {'lost':>5} "
                          f"{'resent':>6} {'new id':>6} {'faults':>6}")
    for r in _results:
        terminalreporter.line(f"{r['scenario'][:58]:<58} {r['accepted']:>8} {r['delivered']:>6} "
                              f"{r['dead_lettered']:>5} {r['lost']:>5} {r['resent_same_id']:>6} "
                              f"{r['new_ids']:>6} {r['faults']:>6}")
