"""The relay command: fail-fast settings, relay send, relay dlq, and relay dev end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
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
from tests.support import SPEC_SECRET, ServerThread, clear_relay_env, delete_prefix, free_port, relay_env

ROOT = Path(__file__).parent.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A clean relay environment for in-process `main()` calls."""
    clear_relay_env(monkeypatch)
    return monkeypatch


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["serve", "worker", "watch"])
def test_production_processes_refuse_to_start_without_redis(command: str, env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, command)
    assert code == 2
    assert err.count("\n") == 1 and "REDIS_URL" in err and "relay dev" in err


def test_worker_refuses_to_start_without_an_api_key(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    code, _, err = run_main(capsys, "worker")
    assert code == 2 and "LETTA_API_KEY" in err


def test_watch_refuses_to_start_without_an_api_key(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    code, _, err = run_main(capsys, "watch")
    assert code == 2 and "LETTA_API_KEY" in err and "status sockets" in err


def test_watch_refuses_to_start_when_no_route_opts_in(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setenv("LETTA_API_KEY", "key")
    env.setenv("LETTA_AGENT_ID", "agent-1")
    env.setenv("LETTA_DEVICE_ID", "device-1")
    code, _, err = run_main(capsys, "watch")
    assert code == 2 and err.count("\n") == 1 and "[routes.NAME.watch]" in err


def test_watch_opens_the_status_socket_of_opted_in_routes_and_stops_on_sigterm(
        tmp_path: Path, real_redis_url: str, prefix: str) -> None:
    from relay.standin import Device, LettaStandIn

    sockets = LettaStandIn([Device("device-w", "w-box", "conn-w")], api_key="real-key")
    routes = tmp_path / "routes.toml"
    routes.write_text('[routes.ops]\nagent_id = "agent-w"\ndevice_id = "device-w"\n\n'
                      '[routes.ops.watch]\nslack_channel = "C0OPS"\n')
    metrics_port = free_port()
    with ServerThread(sockets.app) as server, open(tmp_path / "err", "wb") as err:
        watch = subprocess.Popen([sys.executable, "-m", "relay", "watch"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=err, env=relay_env(REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix,
                                                           LETTA_API_KEY="real-key", LETTA_BASE_URL=server.url,
                                                           RELAY_ROUTES=str(routes),
                                                           RELAY_METRICS_PORT=str(metrics_port),
                                                           RELAY_METRICS_HOST="127.0.0.1"))
        try:
            assert sockets.wait_for_open(1, ("agent-w", "default"), timeout=20), (tmp_path / "err").read_text()
            deadline = time.monotonic() + 10
            while 'relay_watch_frames_total{type="sync_response"}' not in (
                    scraped := httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text):
                assert time.monotonic() < deadline, scraped
                time.sleep(0.1)
            assert "relay_watch_sockets_open 1.0" in scraped
        finally:
            watch.send_signal(signal.SIGTERM)
            code = watch.wait(timeout=30)
            asyncio.run(_cleanup(real_redis_url, prefix))
    assert code == 0, (tmp_path / "err").read_text()
    log = (tmp_path / "err").read_text()
    assert "status socket open" in log and "watch stopped" in log and "real-key" not in log
    assert sockets.refused == []


def test_serve_refuses_to_start_without_a_source_secret(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setenv("LETTA_AGENT_ID", "agent-1")
    env.setenv("LETTA_DEVICE_ID", "device-1")
    code, _, err = run_main(capsys, "serve")
    assert code == 2 and "RELAY_HOOK_SECRET" in err


def test_serve_refuses_to_start_without_a_destination(env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setenv("RELAY_HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    code, _, err = run_main(capsys, "serve")
    assert code == 2 and err.count("\n") == 1 and "no destination" in err and "LETTA_AGENT_ID" in err


@pytest.mark.parametrize("name, value", [
    ("RELAY_RECLAIM_AFTER", "soon"), ("RELAY_CONCURRENCY", "-3"), ("RELAY_HOOK_SECRET", "not-base64!"),
    ("LETTA_BASE_URL", "ftp://x"), ("REDIS_URL", "localhost:6379")])
def test_malformed_setting_fails_fast_naming_it(name: str, value: str, env: Any, capsys: Any) -> None:
    env.setenv(name, value)
    code, _, err = run_main(capsys, "serve")
    assert code == 2 and name in err


@pytest.mark.parametrize("command", ["serve", "dev"])
def test_taken_port_is_one_clear_line(command: str, env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    env.setenv("RELAY_HOOK_SECRET", DEV_HOOK_SECRET)
    env.setenv("LETTA_AGENT_ID", "agent-1")
    env.setenv("LETTA_DEVICE_ID", "device-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_main(capsys, command, "--port", str(port))
    assert code == 2
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err


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


def test_dlq_replay_of_a_message_the_device_may_have_forgotten_warns_and_says_how_to_force(
        real_redis_url: str, prefix: str, env: Any, capsys: Any) -> None:
    env.setenv("REDIS_URL", real_redis_url)
    env.setenv("RELAY_KEY_PREFIX", prefix)

    async def bury() -> str:
        from dataclasses import replace as changed

        queue = Queue(connect(real_redis_url), prefix=prefix, consumer="w")
        await queue.ensure_groups()
        message_id = client_message_id("test", "timed-out-long-ago")
        envelope = envelope_for(Inbound("test", "t", message_id, user_message("x", message_id)),
                                Route("r", Destination(agent_id="a", device_id="d")), time.time() - 7200)
        await queue.enqueue(envelope)
        [head] = await queue.fetch([t for p in range(PARTITIONS) for t in await queue.read(p, 10, 10)])
        await queue.dead_letter(head.token, changed(envelope, attempts=4), "timeout: no answer", "expired")
        await queue.redis.aclose()
        return message_id

    message_id = asyncio.run(bury())
    try:
        code, out, err = run_main(capsys, "dlq", "replay", message_id)
        assert code == 1 and "replayed" not in out
        assert "may see it twice" in err and f"relay dlq replay --force {message_id}" in err
        code, out, _ = run_main(capsys, "dlq", "replay", "--force", message_id)
        assert code == 0 and f"{message_id}  replayed" in out
    finally:
        asyncio.run(_cleanup(real_redis_url, prefix))


def test_dlq_drop_deletes_for_good(dead_letters: list[str], capsys: Any) -> None:
    code, out, _ = run_main(capsys, "dlq", "drop", dead_letters[1])
    assert code == 0 and "dropped" in out
    _, out, _ = run_main(capsys, "dlq", "list")
    assert dead_letters[1] not in out and dead_letters[0] in out


def test_dlq_without_redis_asks_a_running_relay_and_says_when_none_answers(env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, "dlq", "--url", f"http://127.0.0.1:{free_port()}", "list")
    assert code == 2
    assert "REDIS_URL is not set; asking the relay at" in err and "could not reach relay" in err


def test_dlq_over_the_admin_api_lists_replays_and_drops(dead_letters: list[str], capsys: Any, env: Any,
                                                         real_redis_url: str, prefix: str, settings: Settings) -> None:
    env.delenv("REDIS_URL")  # the CLI must go through the relay, not Redis
    env.setenv("RELAY_ADMIN_TOKEN", "admin-token-for-tests-0123456789")
    admin = replace(settings, admin_token="admin-token-for-tests-0123456789")
    with ServerThread(create_app(admin, Queue(connect(real_redis_url), prefix=prefix))) as server:
        code, out, _ = run_main(capsys, "dlq", "--url", server.url, "list", "--json")
        assert code == 0 and {json.loads(line)["client_message_id"] for line in out.splitlines()} == set(dead_letters)
        code, out, _ = run_main(capsys, "dlq", "--url", server.url, "replay", dead_letters[0])
        assert code == 0 and f"{dead_letters[0]}  replayed" in out
        code, out, _ = run_main(capsys, "dlq", "--url", server.url, "drop", dead_letters[1])
        assert code == 0 and f"{dead_letters[1]}  dropped" in out
        code, _, err = run_main(capsys, "dlq", "--url", server.url, "drop", "no-such-id")
        assert code == 1 and "not found" in err
    [message] = queued_messages(real_redis_url, prefix)
    assert message["client_message_id"] == dead_letters[0]


# -- relay dev (the README's first command) ------------------------------------------------------

@contextlib.contextmanager
def relay_dev(tmp_path: Path, **settings: str) -> Iterator[str]:
    """`relay dev` in a subprocess; yields its hooks URL once it is ready. Stops it with SIGINT."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        dev = subprocess.Popen([sys.executable, "-m", "relay", "dev", "--port", str(port)],
                               env=relay_env(**settings), stdout=out, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(base):
            assert time.monotonic() < deadline and dev.poll() is None, (tmp_path / "err").read_text()
            time.sleep(0.1)
        yield f"{base}/hooks/generic"
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=30) == 0, (tmp_path / "err").read_text()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def send(url: str, text: str, **settings: str) -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "send", text, "--url", url],
                            env=relay_env(**settings), capture_output=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_relay_dev_runs_the_whole_pipeline_and_stops_cleanly(tmp_path: Path) -> None:
    # A replica count meant for production does not stop the in-process queue: it is set aside.
    with relay_dev(tmp_path, RELAY_REDIS_MIN_REPLICAS="1") as url:
        send(url, "hello from the readme")
        deadline = time.monotonic() + 10
        while b"hello from the readme" not in (tmp_path / "out").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            time.sleep(0.1)
    log = (tmp_path / "err").read_text()
    assert "NOTHING IS DURABLE" in log and "NOTHING LEAVES THIS MACHINE" in log
    assert "RELAY_REDIS_MIN_REPLICAS ignored" in log
    assert "delivered" in log


def test_relay_dev_s_stand_in_asks_for_an_approval_and_takes_the_decision_as_the_device_would(
        tmp_path: Path) -> None:
    def shown(text: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in (tmp_path / "out").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "out").read_text() + (tmp_path / "err").read_text()
            time.sleep(0.1)

    with relay_dev(tmp_path) as url:
        send(url, "please clean up !tool")
        shown(b"decide with: relay send --approve tool-call-stand-in-1")
        result = subprocess.run([sys.executable, "-m", "relay", "send", "--approve", "tool-call-stand-in-1",
                                 "--url", url], env=relay_env(), capture_output=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        shown(b"the device accepted a decision")
        shown(b"the agent says: The tool ran; done.")
    out = (tmp_path / "out").read_text()
    assert "protocol violation" not in out.lower()


def test_relay_dev_runs_the_watcher_for_routes_that_opt_in(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text('[routes.default]\nagent_id = "agent-relay-dev"\ndevice_id = "relay-dev-device"\n\n'
                      '[routes.default.watch]\nslack_channel = "C0DEV"\n')
    with relay_dev(tmp_path, RELAY_ROUTES=str(routes)) as url:
        deadline = time.monotonic() + 15
        while b"status socket open" not in (tmp_path / "err").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            time.sleep(0.1)
        send(url, "hello watcher")
        while b"hello watcher" not in (tmp_path / "out").read_bytes():
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            time.sleep(0.1)
    log = (tmp_path / "err").read_text()
    assert "watch: status sockets of default" in log and "watch stopped" in log
    assert "status socket failed" not in log and "refused" not in log


def test_relay_dev_uses_real_redis_and_letta_when_configured(tmp_path: Path, real_redis_url: str,
                                                             prefix: str, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in  # plays the real Letta API
    secret = SPEC_SECRET  # real deliveries: relay dev refuses the public development secret
    settings = dict(REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix, LETTA_API_KEY="real-key",
                    LETTA_BASE_URL=letta_url, LETTA_AGENT_ID="agent-real", LETTA_DEVICE_ID="device-test",
                    RELAY_HOOK_SECRET=secret)
    try:
        with relay_dev(tmp_path, **settings) as url:
            send(url, "to the real thing", RELAY_HOOK_SECRET=secret)
            assert standin.wait_for(lambda s: len(s.delivered()) == 1, 10), (tmp_path / "err").read_text()
            keys = asyncio.run(_count_keys(real_redis_url, prefix))
    finally:
        asyncio.run(_cleanup(real_redis_url, prefix))
    [attempt] = standin.delivered()
    assert attempt.authorization == "Bearer real-key"
    assert attempt.body["agentId"] == "agent-real" and attempt.body["messages"][0]["content"] == "to the real thing"
    assert keys > 0  # the queue lived in the real Redis
    log = (tmp_path / "err").read_text()
    assert "NOTHING IS DURABLE" not in log and "the real API" in log
    assert (tmp_path / "out").read_text() == ""  # no stand-in printing


async def _count_keys(url: str, prefix: str) -> int:
    redis = connect(url)
    count = len([k async for k in redis.scan_iter(match=f"{prefix}:*")])
    await redis.aclose()
    return count


def test_serve_warns_at_start_when_redis_could_evict_queued_work(redis_server: Any, tmp_path: Path) -> None:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).config_set("maxmemory-policy", "volatile-lru")
    port = free_port()
    env = relay_env(REDIS_URL=redis_server.url, RELAY_HOOK_SECRET=DEV_HOOK_SECRET,
                    LETTA_AGENT_ID="agent-1", LETTA_DEVICE_ID="device-1")
    with open(tmp_path / "err", "wb") as err:
        serve = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--port", str(port)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(f"http://127.0.0.1:{port}"):
            assert time.monotonic() < deadline and serve.poll() is None, (tmp_path / "err").read_text()
            time.sleep(0.1)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=20)
    log = (tmp_path / "err").read_text()
    assert "maxmemory-policy is volatile-lru" in log and "noeviction" in log


# -- relay status --------------------------------------------------------------------------------

def table_rows(out: str) -> dict[str, str]:
    import re

    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines()
                if line.startswith("  ") and re.search(r"\S\s{2,}\S", line))


def test_status_reads_redis_and_shows_dead_letters_by_reason_and_failures(dead_letters: list[str], capsys: Any,
                                                                           prefix: str) -> None:
    code, out, _ = run_main(capsys, "status")
    assert code == 0
    assert out.startswith("relay status: Redis 127.0.0.1:") and f"prefix {prefix}" in out.splitlines()[0]
    rows = table_rows(out)
    assert (rows["ready"], rows["in flight"], rows["dead letters"], rows["oldest waiting"]) == ("0", "0", "2", "none")
    assert rows["http_400"] == "2"
    assert rows["agent agent-0 via device_id=d"] == rows["agent agent-1 via device_id=d"] == "1"


def test_status_over_the_admin_api_and_with_a_wrong_token(dead_letters: list[str], capsys: Any, env: Any,
                                                          real_redis_url: str, prefix: str, settings: Settings) -> None:
    env.delenv("REDIS_URL")  # the CLI must go through the relay, not Redis
    env.setenv("RELAY_ADMIN_TOKEN", "admin-token-for-tests-0123456789")
    admin = replace(settings, admin_token="admin-token-for-tests-0123456789")
    with ServerThread(create_app(admin, Queue(connect(real_redis_url), prefix=prefix))) as server:
        code, out, err = run_main(capsys, "status", "--url", server.url)
        assert code == 0 and f"asking the relay at {server.url}" in err
        assert out.startswith(f"relay status: relay at {server.url}")
        assert table_rows(out)["http_400"] == "2"
        env.setenv("RELAY_ADMIN_TOKEN", "another-token-of-enough-length")
        code, _, err = run_main(capsys, "status", "--url", server.url)
        assert code == 2 and "admin API answered 401" in err


def test_status_without_redis_says_when_no_relay_answers(env: Any, capsys: Any) -> None:
    code, _, err = run_main(capsys, "status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "could not read the queue from relay at" in err


def test_status_watch_redraws_until_interrupted(real_redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = relay_env(REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix)
    with open(tmp_path / "out", "wb") as out:
        watch = subprocess.Popen([sys.executable, "-m", "relay", "status", "--watch", "--interval", "0.1"],
                                 env=env, stdout=out, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while (tmp_path / "out").read_text().count("relay status: ") < 3:
            assert time.monotonic() < deadline and watch.poll() is None
            time.sleep(0.05)
    finally:
        watch.send_signal(signal.SIGINT)
        code = watch.wait(timeout=10)
    assert code == 0
    assert "\x1b[" not in (tmp_path / "out").read_text()  # not a terminal: no screen clearing


def test_status_interval_must_be_positive(env: Any, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["status", "--watch", "--interval", "0"])
    assert "above zero" in capsys.readouterr().err
