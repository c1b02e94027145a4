"""Logs: one JSON object per line by default (key=value text for `relay dev`), every line
carrying source, delivery_id and client_message_id, so one message can be followed."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from relay.cli import common as cli
from relay.errors import ConfigError
from relay.logs import JsonFormatter, KeyValueFormatter, configure, fields
from relay.queue import Queue
from relay.settings import Settings, load
from relay.web import create_app
from tests.support import SPEC_SECRET, clear_relay_env, free_port, relay_env, running_worker, signed

SECRET = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"ts", "level", "logger", "event", "source", "delivery_id", "client_message_id"}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure() replaces the root handlers (pytest's among them); put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def record(message: str, severity: int = logging.INFO, exc_info: Any = None, **values: Any) -> logging.LogRecord:
    made = logging.LogRecord("relay.test", severity, __file__, 1, message, None, exc_info)
    if values:
        made.fields = values  # what `extra=fields(...)` sets
    return made


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_line_has_the_base_fields_and_the_events_own() -> None:
    line = JsonFormatter().format(record("delivered", source="generic", delivery_id="msg_1",
                                         client_message_id="c-1", attempt=2, route="ops"))
    parsed = json.loads(line)
    assert REQUIRED <= set(parsed)
    assert (parsed["level"], parsed["logger"], parsed["event"]) == ("INFO", "relay.test", "delivered")
    assert (parsed["source"], parsed["delivery_id"], parsed["client_message_id"]) == ("generic", "msg_1", "c-1")
    assert (parsed["attempt"], parsed["route"]) == (2, "ops")
    assert parsed["ts"].endswith("Z") and "T" in parsed["ts"]


def test_a_line_about_no_message_still_has_the_message_keys_as_null() -> None:
    parsed = json.loads(JsonFormatter().format(record("worker started", concurrency=32)))
    assert REQUIRED <= set(parsed)
    assert parsed["source"] is parsed["delivery_id"] is parsed["client_message_id"] is None


def test_a_field_named_like_a_base_key_does_not_replace_it() -> None:
    parsed = json.loads(JsonFormatter().format(record("rejected", event="spoofed", level="DEBUG")))
    assert (parsed["event"], parsed["level"]) == ("rejected", "INFO")
    assert (parsed["field_event"], parsed["field_level"]) == ("spoofed", "DEBUG")


def test_multi_line_events_and_tracebacks_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(record("first\nsecond", logging.ERROR, exc_info=exc_info, odd=object()))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["event"] == "first\nsecond"
    assert "ValueError: boom" in parsed["exc"]
    assert parsed["odd"].startswith("<object object")


def test_json_renders_only_what_the_call_site_passed(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure("DEBUG", "json")
    logging.getLogger("relay.test").info("accepted", extra={"body": "never-rendered", **fields(source="generic")})
    [parsed] = json_lines(capsys.readouterr().err)
    assert "never-rendered" not in json.dumps(parsed) and parsed["source"] == "generic"


def test_configure_installs_json_or_text(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO", "json")
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    configure("INFO", "text")
    assert isinstance(logging.getLogger().handlers[0].formatter, KeyValueFormatter)
    logging.getLogger("relay.test").info("accepted", extra=fields(source="generic", client_message_id="c-1"))
    assert capsys.readouterr().err.rstrip().endswith("INFO relay.test accepted source=generic client_message_id=c-1")
    with pytest.raises(ValueError):
        configure("INFO", "xml")


def test_log_format_setting_is_read_and_checked() -> None:
    assert load({}).log_format is None
    assert load({"RELAY_LOG_FORMAT": "text"}).log_format == "text"
    assert load({"RELAY_LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(ConfigError, match="RELAY_LOG_FORMAT"):
        load({"RELAY_LOG_FORMAT": "yaml"})


@pytest.mark.parametrize("env, command_default, expected", [
    ({}, "json", JsonFormatter), ({}, "text", KeyValueFormatter),  # serve/worker; dev
    ({"RELAY_LOG_FORMAT": "json"}, "text", JsonFormatter), ({"RELAY_LOG_FORMAT": "text"}, "json", KeyValueFormatter),
])
def test_commands_log_json_unless_dev_or_the_setting_says_otherwise(
        env: dict[str, str], command_default: str, expected: type, root_logging: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    clear_relay_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cli.command_settings(command_default)
    assert type(logging.getLogger().handlers[0].formatter) is expected


@pytest.mark.anyio
async def test_one_message_is_followed_from_ingest_to_delivery(
        root_logging: None, capsys: pytest.CaptureFixture[str], queue: Queue, redis_client: Any, prefix: str,
        settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    configure("INFO", "json")
    body_marker = "BODY-MARKER-follow-me"
    app = create_app(settings, queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        raw, headers = signed({"text": body_marker}, SECRET, webhook_id="msg_follow")
        answer = await http.post("/hooks/generic", content=raw, headers=headers)
        raw, headers = signed({"text": body_marker}, b"w" * 32, webhook_id="msg_forged")
        assert (await http.post("/hooks/generic", content=raw, headers=headers)).status_code == 401
    async with running_worker(redis_client, prefix, settings, letta_url):
        deadline = time.monotonic() + 15
        while not standin.delivered() or (await queue.depth()).in_flight:  # delivered and acked
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    text = capsys.readouterr().err
    lines = json_lines(text)  # every line is a JSON object
    assert lines and all(REQUIRED <= set(line) for line in lines)
    message_id = answer.json()["client_message_id"]
    followed = [line for line in lines if line["client_message_id"] == message_id]
    assert [(line["logger"], line["event"]) for line in followed] == [("relay.intake", "accepted"),
                                                                      ("relay.worker", "delivered")]
    assert {(line["source"], line["delivery_id"]) for line in followed} == {("generic", "msg_follow")}
    [rejected] = [line for line in lines if line["event"] == "rejected"]
    assert (rejected["source"], rejected["delivery_id"], rejected["client_message_id"]) == ("generic",
                                                                                          "'msg_forged'", None)
    assert body_marker not in text


def test_relay_worker_logs_json_by_default(real_redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = relay_env(REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix, LETTA_API_KEY="test-key",
                    LETTA_BASE_URL=f"http://127.0.0.1:{free_port()}", RELAY_METRICS_PORT="0")
    log = tmp_path / "log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "relay", "worker"], env=env, stdout=out, stderr=out, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while b"worker started" not in log.read_bytes():
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.1)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0, log.read_text()
    lines = json_lines(log.read_text())
    assert all(REQUIRED <= set(line) for line in lines)
    assert [line["event"] for line in lines if line["logger"] == "relay.worker"][:1] == ["worker started"]
