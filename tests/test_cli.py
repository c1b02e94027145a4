"""The relay command: fail-fast settings, relay send, relay dlq, and relay dev end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from relay.cli import main
from relay.dev import DEV_HOOK_SECRET
from relay.messages import Inbound, client_message_id, envelope_for, user_message
from relay.queue import PARTITIONS, Queue, connect
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.sources.generic import decode_secret
from relay.web import create_app
from tests.support import ServerThread, delete_prefix, free_port, relay_env

ROOT = Path(__file__).parent.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A clean relay environment for in-process `main()` calls."""
    for name in list(os.environ):
        if name.startswith(("RELAY_", "LETTA_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_production_processes_refuse_to_start_without_redis(command: str, env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, command)
    assert code == 2
    assert err.count("\n") == 1 and "REDIS_URL" in err and "relay dev" in err


def test_worker_refuses_to_start_without_an_api_key(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    code, _, err = run_main(capsys, "worker")
    assert code == 2 and "LETTA_API_KEY" in err


def test_serve_refuses_to_start_without_a_source_secret(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setenv("LETTA_AGENT_ID", "agent-1")
    env.setenv("LETTA_DEVICE_ID", "device-1")
    code, _, err = run_main(capsys, "serve")
    assert code == 2 and "RELAY_HOOK_SECRET" in err


@pytest.mark.parametrize("name, value", [
    ("RELAY_RECLAIM_AFTER", "soon"), ("RELAY_CONCURRENCY", "-3"), ("RELAY_HOOK_SECRET", "not-base64!"),
    ("LETTA_BASE_URL", "ftp://x"), ("REDIS_URL", "localhost:6379")])
def test_malformed_setting_fails_fast_naming_it(name: str, value: str, env: Any, capsys: Any) -> None:
    env.setenv(name, value)
    code, _, err = run_main(capsys, "serve")
    assert code == 2 and name in err


# -- relay send ----------------------------------------------------------------------------------

@pytest.fixture
def relay_with_dev_secret(real_redis_url: str, prefix: str, settings: Settings) -> Iterator[tuple[str, Queue]]:
    dev = replace(settings, hook_secret=decode_secret(DEV_HOOK_SECRET))
    with ServerThread(create_app(dev, Queue(connect(real_redis_url), prefix=prefix))) as server:
        yield f"{server.url}/hooks/generic", Queue(connect(real_redis_url), prefix=prefix, consumer="check")
    asyncio.run(_cleanup(real_redis_url, prefix))


async def _cleanup(url: str, prefix: str) -> None:
    redis = connect(url)
    await delete_prefix(redis, prefix)
    await redis.aclose()


def queued_messages(url: str, prefix: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        redis = connect(url)
        queue = Queue(redis, prefix=prefix, consumer="check")
        await queue.ensure_groups()
        tokens = [t for p in range(PARTITIONS) for t in await queue.read(p, 100, 10)]
        heads = await queue.fetch(tokens)
        await redis.aclose()
        return [h.envelope.message for h in heads if h.envelope]

    return asyncio.run(read())


def test_send_signs_with_the_dev_secret_by_default(env: Any, capsys: Any, relay_with_dev_secret: Any,
                                                   real_redis_url: str, prefix: str) -> None:
    url, _ = relay_with_dev_secret
    code, out, err = run_main(capsys, "send", "deploy finished, please summarize", "--url", url)
    assert code == 0 and out.startswith("202 ")
    assert "development secret" in err
    [message] = queued_messages(real_redis_url, prefix)
    assert message["content"] == "deploy finished, please summarize"


def test_send_approve_and_deny_build_approval_messages(env: Any, capsys: Any, relay_with_dev_secret: Any,
                                                       real_redis_url: str, prefix: str) -> None:
    url, _ = relay_with_dev_secret
    assert run_main(capsys, "send", "--approve", "call_1", "--url", url, "--route", "ops")[0] == 0
    assert run_main(capsys, "send", "--deny", "call_2", "--reason", "not on prod", "--url", url)[0] == 0
    decisions = sorted((m["approvals"][0] for m in queued_messages(real_redis_url, prefix)),
                       key=lambda d: d["tool_call_id"])
    assert decisions == [
        {"type": "approval", "tool_call_id": "call_1", "approve": True},
        {"type": "approval", "tool_call_id": "call_2", "approve": False, "reason": "not on prod"},
    ]


def test_send_with_a_repeated_id_is_deduplicated(env: Any, capsys: Any, relay_with_dev_secret: Any) -> None:
    url, _ = relay_with_dev_secret
    first = run_main(capsys, "send", "hi", "--id", "msg_again", "--url", url)
    second = run_main(capsys, "send", "hi", "--id", "msg_again", "--url", url)
    assert first[1].startswith("202 ") and second[1].startswith("200 ") and '"duplicate":true' in second[1]


def test_send_uses_the_configured_secret_when_set(env: Any, capsys: Any, relay_with_dev_secret: Any) -> None:
    url, _ = relay_with_dev_secret
    env.setenv("RELAY_HOOK_SECRET", "whsec_" + "A" * 32)  # not what the server expects
    code, out, _ = run_main(capsys, "send", "hi", "--url", url)
    assert code == 1 and out.startswith("401 ")


def test_send_reports_an_unreachable_relay(env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, "send", "hi", "--url", f"http://127.0.0.1:{free_port()}/hooks/generic")
    assert code == 1 and "could not reach" in err


# -- relay dlq -----------------------------------------------------------------------------------

@pytest.fixture
def dead_letters(real_redis_url: str, prefix: str, env: Any) -> Iterator[list[str]]:
    env.setenv("REDIS_URL", real_redis_url)
    env.setenv("RELAY_KEY_PREFIX", prefix)

    async def make() -> list[str]:
        redis = connect(real_redis_url)
        queue = Queue(redis, prefix=prefix, consumer="w")
        await queue.ensure_groups()
        ids = []
        for n in range(2):
            message_id = client_message_id("test", f"dead-{n}")
            route = Route(f"r{n}", Destination(agent_id=f"agent-{n}", device_id="d"))
            await queue.enqueue(envelope_for(Inbound("test", str(n), message_id, user_message("x", message_id)),
                                             route, time.time()))
            ids.append(message_id)
        tokens = [t for p in range(PARTITIONS) for t in await queue.read(p, 10, 10)]
        for head in await queue.fetch(tokens):
            assert head.envelope is not None
            await queue.dead_letter(head.token, head.envelope.after_failure("HTTP 400: no"), "HTTP 400: no", "http_400")
        await redis.aclose()
        return ids

    yield asyncio.run(make())
    asyncio.run(_cleanup(real_redis_url, prefix))


def test_dlq_list_shows_each_dead_letter_with_its_reason(dead_letters: list[str], capsys: Any) -> None:
    code, out, err = run_main(capsys, "dlq", "list")
    assert code == 0 and "2 dead letter(s)" in err
    for message_id in dead_letters:
        assert message_id in out
    assert out.count("http_400: HTTP 400: no") == 2


def test_dlq_replay_requeues_with_the_same_id(dead_letters: list[str], capsys: Any,
                                              real_redis_url: str, prefix: str) -> None:
    code, out, _ = run_main(capsys, "dlq", "replay", dead_letters[0])
    assert code == 0 and f"{dead_letters[0]}  replayed" in out
    [message] = queued_messages(real_redis_url, prefix)
    assert message["client_message_id"] == dead_letters[0]
    code, out, _ = run_main(capsys, "dlq", "list", "--json")
    assert dead_letters[1] in out and dead_letters[0] not in out


def test_dlq_replay_all_and_unknown_ids(dead_letters: list[str], capsys: Any) -> None:
    assert run_main(capsys, "dlq", "replay", "no-such-id")[0] == 1
    assert run_main(capsys, "dlq", "replay")[0] == 2
    code, out, _ = run_main(capsys, "dlq", "replay", "--all")
    assert code == 0 and out.count("replayed") == 2


def test_dlq_drop_deletes_for_good(dead_letters: list[str], capsys: Any) -> None:
    code, out, _ = run_main(capsys, "dlq", "drop", dead_letters[1])
    assert code == 0 and "dropped" in out
    _, out, _ = run_main(capsys, "dlq", "list")
    assert dead_letters[1] not in out and dead_letters[0] in out


def test_dlq_needs_redis(env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, "dlq", "list")
    assert code == 2 and "REDIS_URL" in err


# -- relay dev (the README's first command) ------------------------------------------------------

def test_relay_dev_runs_the_whole_pipeline_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out, err = open(tmp_path / "out", "wb"), open(tmp_path / "err", "wb")
    dev = subprocess.Popen([sys.executable, "-m", "relay", "dev", "--port", str(port)], env=relay_env(),
                           stdout=out, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and dev.poll() is None, (tmp_path / "err").read_text()
            time.sleep(0.1)
        send = subprocess.run([sys.executable, "-m", "relay", "send", "hello from the readme",
                               "--url", f"{base}/hooks/generic"], env=relay_env(), capture_output=True, cwd=ROOT)
        assert send.returncode == 0, send.stderr
        while b"hello from the readme" not in (tmp_path / "out").read_bytes():
            assert time.monotonic() < deadline + 10, (tmp_path / "err").read_text()
            time.sleep(0.1)
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(timeout=30)
    banner = (tmp_path / "err").read_text()
    assert code == 0
    assert "NOTHING IS DURABLE" in banner and "NOTHING LEAVES THIS MACHINE" in banner
    assert "delivered" in banner
