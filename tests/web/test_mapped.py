"""POST /hooks/mapped/{route}: a mapped webhook is verified by its route's scheme, queued once
per identity, and refused whole otherwise."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from relay.door_rules import HmacScheme, MappedRule
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.sources import mapped as source
from relay.template import parse
from relay.web import create_app
from tests.conftest import DEVICE
from tests.web.test_github import queued

pytestmark = pytest.mark.anyio
SAMPLE = (Path(__file__).resolve().parents[1] / "samples" / "mapped" / "pagerduty.incident.triggered.json").read_bytes()
SECRET = b"pd-subscription-secret"
SCHEME = HmacScheme("x-pagerduty-signature", prefix="v1=", separator=",")
RULE = MappedRule("hmac", parse("PagerDuty {{ event.event_type }}: {{ event.data.title }} {{ event.data.nope }}"),
                  ("event.id",), key=SECRET, hmac=SCHEME)


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    pagerduty = Route("pagerduty", Destination(agent_id="agent-oncall", device_id=DEVICE), mapped=RULE)
    app = create_app(replace(settings, routes=(*settings.routes, pagerduty)), queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


def signed(body: bytes = SAMPLE) -> dict[str, str]:
    return {"content-type": "application/json", "x-pagerduty-signature": source.sign_hmac(SCHEME, SECRET, body)}


async def test_a_signed_webhook_is_mapped_and_queued_once(http: httpx.AsyncClient, queue: Queue,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    first = await http.post("/hooks/mapped/pagerduty", content=SAMPLE, headers=signed())
    again = await http.post("/hooks/mapped/pagerduty", content=SAMPLE, headers={**signed(), "x-request-id": "new"})
    assert first.status_code == 202 and again.status_code == 200 and again.json()["duplicate"] is True
    [envelope] = await queued(queue)
    assert envelope.route == "pagerduty" and envelope.source == "mapped"
    assert envelope.message["content"] == "PagerDuty incident.triggered: A little bump in the road "
    [warning, _] = [r for r in caplog.records if r.name == "relay.web.mapped"]
    logged = json.dumps(warning.fields)  # type: ignore[attr-defined]
    assert "event.data.nope" in logged and "A little bump" not in logged  # the path, never the payload


@pytest.mark.parametrize("path, headers, body, status", [
    ("/hooks/mapped/nowhere", None, SAMPLE, 404),
    ("/hooks/mapped/default", None, SAMPLE, 404),
    ("/hooks/mapped/pagerduty", {}, SAMPLE, 401),
    ("/hooks/mapped/pagerduty", {"x-pagerduty-signature": "v1=" + "0" * 64}, SAMPLE, 401),
    ("/hooks/mapped/pagerduty", {"x-pagerduty-signature": "v1=" + "0" * 9000}, SAMPLE, 401),
    ("/hooks/mapped/pagerduty", None, b"[1]", 400),
    ("/hooks/mapped/pagerduty", None, json.dumps({"event": {"event_type": "x"}}).encode(), 400),
])
async def test_what_is_not_a_mapped_routes_signed_payload_is_refused(path: str, headers: dict[str, str] | None,
                                                                    body: bytes, status: int,
                                                                    http: httpx.AsyncClient, queue: Queue) -> None:
    sent = signed(body) if headers is None else {"content-type": "application/json", **headers}
    answer = await http.post(path, content=body, headers=sent)
    assert answer.status_code == status, answer.text
    assert await queued(queue) == []
