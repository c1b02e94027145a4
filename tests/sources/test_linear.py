"""The Linear source: Linear-Signature, the signed timestamp's window, and what agent sessions
and comments become (recorded payloads in tests/samples/linear/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.errors import BadRequest, BadSignature
from relay.sources import linear
from relay.sources.linear import CommentEvent, Ignored, SessionEvent

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "linear"
SECRET = b"lin_wh_0123456789abcdef0123456789abcdef"
NOW = 1751361243.6


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def test_a_recorded_body_signed_with_the_secret_verifies() -> None:
    body = (SAMPLES / "comment.create.json").read_bytes()
    signature = linear.sign(SECRET, body)
    linear.verify({"Linear-Signature": signature}, body, SECRET)
    assert len(signature) == 64 and signature == signature.lower()


def test_a_known_answer_vector_verifies() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    body = b"what do ya want for nothing?"
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert linear.sign(b"Jefe", body) == expected
    linear.verify({"linear-signature": expected.upper()}, body, b"Jefe")


@pytest.mark.parametrize("signature, reason", [
    (None, "missing"), ("", "missing"), ("0" * 63, "64 hex"), ("0" * 65, "64 hex"), ("z" * 64, "64 hex"),
    ("sha256=" + "0" * 57, "64 hex"), ("0" * 64, "does not match"), ("9" * 10_000, "64 hex")])
def test_anything_but_the_bodys_signature_is_refused(signature: str | None, reason: str) -> None:
    headers = {} if signature is None else {"Linear-Signature": signature}
    with pytest.raises(BadSignature, match=reason):
        linear.verify(headers, b"{}", SECRET)


@pytest.mark.parametrize("stamp, ok", [(NOW * 1000, True), (NOW * 1000 - 59_000, True), (NOW * 1000 + 59_000, True),
                                       (NOW * 1000 - 61_000, False), (NOW * 1000 + 61_000, False)])
def test_the_signed_timestamp_must_be_within_a_minute(stamp: float, ok: bool) -> None:
    data = {"webhookTimestamp": int(stamp)}
    if ok:
        linear.fresh(data, NOW)
    else:
        with pytest.raises(BadSignature, match="window"):
            linear.fresh(data, NOW)


@pytest.mark.parametrize("stamp", [None, "1751361243518", 1751361243.5, True, -1, 10**30, [1]])
def test_a_timestamp_that_is_not_milliseconds_is_refused(stamp: Any) -> None:
    with pytest.raises(BadSignature, match="milliseconds"):
        linear.fresh({"webhookTimestamp": stamp} if stamp is not None else {}, NOW)


def test_a_new_agent_session_becomes_a_message_with_the_issue_and_prompt_context() -> None:
    event = linear.parse(sample("agent_session.created.json"))
    assert isinstance(event, SessionEvent) and event.action == "created"
    inbound = event.inbound()
    content = inbound.message["content"]
    assert content.startswith('Linear agent session on ENG-482 "Checkout times out for carts over 50 items" — '
                              "https://linear.app/acme/issue/ENG-482/")
    assert "started by Dana Reyes" in content and "<primary-directive-thread" in content
    assert inbound.reply == {"via": "linear", "session": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"}
    assert event.team == linear.Team("2c7a5b3e-1f0d-4f8e-9a4b-6d1e0c9f7a21", "ENG",
                                     "4b3a2918-7e6d-4c5b-8a39-2817e6d5c4b3")


def test_a_prompt_in_a_session_is_its_own_message_with_the_persons_words() -> None:
    created, prompted = linear.parse(sample("agent_session.created.json")), linear.parse(
        sample("agent_session.prompted.json"))
    assert isinstance(created, SessionEvent) and isinstance(prompted, SessionEvent)
    assert prompted.inbound().message["content"].endswith("Also check the payment provider's client timeout, please.")
    assert "Dana Reyes writes" in prompted.inbound().message["content"]
    assert created.message_id() != prompted.message_id()
    assert prompted.reply() == created.reply()  # the same session answers both


def test_identities_come_from_the_signed_body_and_are_stable() -> None:
    data = sample("agent_session.prompted.json")
    first = linear.parse(data)
    data["webhookTimestamp"] += 5000  # a redelivery, later
    data["webhookId"] = "another"
    again = linear.parse(data)
    assert isinstance(first, SessionEvent) and isinstance(again, SessionEvent)
    assert first.message_id() == again.message_id()
    other_tenant = dict(data, organizationId="9f8e7d6c-0000-4000-8000-000000000000")
    moved = linear.parse(other_tenant)
    assert isinstance(moved, SessionEvent) and moved.message_id() != first.message_id()


def test_a_stop_signal_is_said_in_the_message() -> None:
    data = sample("agent_session.prompted.json")
    data["agentActivity"]["signal"] = "stop"
    event = linear.parse(data)
    assert isinstance(event, SessionEvent) and event.stop and "asks the agent to stop" in event.inbound().message["content"]


def test_a_comment_is_read_with_its_issue_team_and_author() -> None:
    event = linear.parse(sample("comment.create.json"))
    assert isinstance(event, CommentEvent)
    assert (event.issue, event.team.key, event.author, event.by_a_person) == ("ENG-482", "ENG", "Dana Reyes", True)
    assert event.mentions("@agent") and not event.mentions("@age")
    inbound = event.inbound()
    assert inbound.reply == {"via": "linear", "issue": "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918",
                             "comment": "d4c3b2a1-0f9e-4d8c-b7a6-958473625140"}
    assert inbound.message["content"].endswith("@agent summarize the discussion so far")


def test_an_edit_is_a_new_message_only_when_its_text_changed_again() -> None:
    data = sample("comment.create.json")
    created = linear.parse(data)
    edited = linear.parse(dict(data, action="update", data=dict(data["data"], updatedAt="2025-07-01T10:05:00.000Z")))
    edited_again = linear.parse(dict(data, action="update", data=dict(data["data"], updatedAt="2025-07-01T10:06:00.000Z")))
    ids = {e.message_id() for e in (created, edited, edited_again) if isinstance(e, CommentEvent)}
    assert len(ids) == 3


def test_comments_by_integrations_and_relay_are_bots() -> None:
    data = sample("comment.create.json")
    by_app = linear.parse(dict(data, actor={"id": "x", "type": "oauthClient", "name": "Some app"}))
    own = linear.parse(dict(data, data=dict(data["data"], body="@agent answer\n\n" + linear.OWN_MARKER)))
    assert isinstance(by_app, CommentEvent) and by_app.written_by_a_bot
    assert isinstance(own, CommentEvent) and own.written_by_a_bot


@pytest.mark.parametrize("kind, action", [("Issue", "create"), ("AgentSessionEvent", "removed"),
                                          ("Comment", "remove"), (None, None), (["Comment"], "create")])
def test_other_webhooks_are_ignored(kind: Any, action: Any) -> None:
    assert isinstance(linear.parse({"type": kind, "action": action}), Ignored)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("agentSession"),
    lambda d: d["agentSession"].update(id=12),
    lambda d: d["agentSession"].update(id="../../x"),
    lambda d: d.pop("organizationId"),
    lambda d: d.update(agentSession=[1, 2]),
])
def test_a_session_event_without_what_relay_needs_is_400(mutate: Any) -> None:
    data = sample("agent_session.created.json")
    mutate(data)
    with pytest.raises(BadRequest):
        linear.parse(data)


def test_claimed_names_nothing_for_odd_values() -> None:
    assert linear.claimed({"organizationId": "x" * 500, "agentSession": {"issue": {"team": {"key": "E NG"}}}}) == \
        linear.Team("", "", "")
