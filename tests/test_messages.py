"""Message shapes, the queued envelope, encode/decode and client_message_id."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.messages import (
    ID_NAMESPACE,
    Envelope,
    Inbound,
    approval_decision,
    approval_message,
    client_message_id,
    decode,
    encode,
    envelope_for,
    user_message,
)
from relay.routing import Destination, Route

DEST = Destination(agent_id="agent-1", conversation_id="conv-1", device_id="dev-1")
DEST_NO_CONVERSATION = Destination(agent_id="agent-1", connection_name="box")
MSG_ID = "d4dfa94b-4e90-533b-b476-d3686e4cd9be"


def envelope(**changes: object) -> Envelope:
    base = Envelope(
        client_message_id=MSG_ID,
        kind="user",
        source="generic",
        delivery_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        route="ops",
        destination=DEST,
        message=user_message("deploy finished \u2713", MSG_ID),
        received_at=1_700_000_000.25,
        queued_at=1_700_000_000.25,
    )
    return replace(base, **changes)


# --- client_message_id ------------------------------------------------------------------


def test_client_message_id_is_deterministic() -> None:
    assert client_message_id("generic", "msg_1") == client_message_id("generic", "msg_1")


def test_client_message_id_is_a_canonical_uuid_string() -> None:
    value = client_message_id("generic", "msg_1")
    parsed = uuid.UUID(value)
    assert str(parsed) == value
    assert parsed.version == 5


def test_client_message_id_is_stable_across_releases() -> None:
    # Golden value: if this changes, every message already delivered gets a new id and
    # Letta can no longer de-duplicate a redelivery made across the upgrade.
    assert client_message_id("generic", "msg_p5jXN8AQM9LWM0D4loKWxJek") == MSG_ID


def test_client_message_id_differs_by_source() -> None:
    assert client_message_id("generic", "123") != client_message_id("github", "123")


@pytest.mark.parametrize(("a", "b"), [
    (("msg_1",), ("msg_2",)),
    (("T1", "C1", "100.1"), ("T1", "C1", "100.2")),
    (("T1", "C1"), ("C1", "T1")),
    (("T1", "C1"), ("T1", "C1", "")),
    (("T1",), ()),
])
def test_client_message_id_differs_by_identity(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert client_message_id("slack", *a) != client_message_id("slack", *b)


# --- message shapes ---------------------------------------------------------------------


def test_user_message_carries_the_id_as_client_message_id_and_otid() -> None:
    assert user_message("hi", "id-1") == {"role": "user", "client_message_id": "id-1",
                                          "content": "hi", "otid": "id-1"}


def test_approval_message_shape() -> None:
    decision = approval_decision("call-1", False, "no")
    assert approval_message([decision]) == {
        "type": "approval",
        "approvals": [{"type": "approval", "tool_call_id": "call-1", "approve": False, "reason": "no"}],
    }


@pytest.mark.parametrize("reason", [None, ""])
def test_approval_decision_without_reason_has_no_reason_key(reason: str | None) -> None:
    assert approval_decision("call-1", True, reason) == {"type": "approval", "tool_call_id": "call-1",
                                                         "approve": True}


# --- request_body -----------------------------------------------------------------------


def test_request_body_is_messages_agent_and_conversation() -> None:
    env = envelope()
    assert env.request_body() == {"messages": [env.message], "agentId": "agent-1",
                                  "conversationId": "conv-1"}


def test_request_body_omits_conversation_id_when_there_is_none() -> None:
    env = envelope(destination=DEST_NO_CONVERSATION)
    body = env.request_body()
    assert body == {"messages": [env.message], "agentId": "agent-1"}
    assert "conversationId" not in body


def test_request_body_never_carries_connection_selectors() -> None:
    body = json.dumps(envelope().request_body())
    assert "dev-1" not in body and "device" not in body.lower()


# --- encode / decode --------------------------------------------------------------------


@pytest.mark.parametrize("env", [
    envelope(),
    envelope(destination=DEST_NO_CONVERSATION, attempts=3, last_error="HTTP 503: busy"),
    envelope(kind="approval", message=approval_message([approval_decision("c-1", True)])),
    envelope(destination=Destination(agent_id="a", connection_id="conn-1"), received_at=5.0, queued_at=9.5),
], ids=["user", "failed-no-conversation", "approval", "connection-id"])
def test_encode_then_decode_gives_an_equal_envelope(env: Envelope) -> None:
    assert decode(encode(env)) == env


def test_decode_accepts_bytes() -> None:
    env = envelope(message=user_message("caf\u00e9 \U0001F600", MSG_ID))
    assert decode(encode(env).encode("utf-8")) == env


def test_encode_is_compact_json() -> None:
    text = encode(envelope())
    assert json.loads(text)["v"] == 1
    assert ", " not in text and ": " not in text


@pytest.mark.parametrize("text", [
    "", "garbage", "{", "[]", "null", "42", '"text"', "{}",
    '{"v": 1}',
    '{"v": 1, "id": "x", "kind": "user"}',
    b"\xff\xfe",
])
def test_decode_rejects_what_relay_did_not_write(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        decode(text)


def _encoded_with(**changes: object) -> str:
    data = json.loads(encode(envelope()))
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_decode_rejects_unknown_versions(version: object) -> None:
    with pytest.raises(ValueError, match="version"):
        decode(_encoded_with(v=version))


@pytest.mark.parametrize("changes", [
    {"received": "yesterday"}, {"queued": None}, {"attempts": "many"}, {"attempts": [1]},
], ids=["received", "queued", "attempts-str", "attempts-list"])
def test_decode_rejects_wrongly_typed_scalars(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decode(_encoded_with(**changes))


@pytest.mark.parametrize("dest", ["agent-1", ["agent-1"], 5, None])
def test_decode_rejects_a_destination_that_is_not_an_object(dest: object) -> None:
    with pytest.raises(ValueError):
        decode(_encoded_with(dest=dest))


def test_decode_rejects_a_destination_field_that_is_not_a_plain_value() -> None:
    with pytest.raises(ValueError):
        decode(_encoded_with(dest={"agent_id": "a", "device_id": ["dev-1"]}))


def test_decoding_many_destinations_keeps_few_in_memory() -> None:
    from relay import messages

    for n in range(3 * messages._DESTINATIONS_MAX):
        env = envelope(destination=Destination(agent_id=f"agent-{n}", device_id="dev-1"))
        assert decode(encode(env)).destination == env.destination
    assert len(messages._DESTINATIONS) <= messages._DESTINATIONS_MAX


# --- after_failure / replayed / envelope_for --------------------------------------------


def test_after_failure_counts_the_attempt_and_records_the_reason() -> None:
    env = envelope(attempts=2)
    failed = env.after_failure("HTTP 502")
    assert (failed.attempts, failed.last_error) == (3, "HTTP 502")
    assert replace(failed, attempts=2, last_error=None) == env
    assert (env.attempts, env.last_error) == (2, None)  # the original is untouched


def test_replayed_keeps_the_id_and_received_at_but_resets_the_retry_budget() -> None:
    env = envelope(attempts=7, last_error="expired", received_at=100.0, queued_at=200.0)
    again = env.replayed(now=5000.0)
    assert again.client_message_id == env.client_message_id
    assert again.attempts == 0
    assert again.queued_at == 5000.0
    assert again.received_at == 100.0
    assert (again.message, again.destination, again.route) == (env.message, env.destination, env.route)


def test_log_fields_name_the_message_but_carry_no_content() -> None:
    fields = envelope().log_fields()
    assert fields == {"client_message_id": MSG_ID, "source": "generic",
                      "delivery_id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "route": "ops"}


def test_envelope_for_a_user_message() -> None:
    inbound = Inbound("generic", "msg_1", "id-1", user_message("hi", "id-1"), route=None)
    env = envelope_for(inbound, Route("default", DEST), now=42.0)
    assert env == Envelope(client_message_id="id-1", kind="user", source="generic", delivery_id="msg_1",
                           route="default", destination=DEST, message=user_message("hi", "id-1"),
                           received_at=42.0, queued_at=42.0, attempts=0, last_error=None)


def test_envelope_for_an_approval_is_of_kind_approval() -> None:
    message = approval_message([approval_decision("c-1", True)])
    env = envelope_for(Inbound("generic", "msg_1", "id-1", message), Route("ops", DEST), now=1.0)
    assert env.kind == "approval"
    assert env.route == "ops"


def test_envelope_round_trips_text_in_any_script_and_integers_past_64_bits() -> None:
    message_id = client_message_id("test", "big")
    message = user_message("déploiement 完了 \U0001F680", message_id) | {"extra": 2**70}
    envelope = envelope_for(Inbound("test", "big", message_id, message), Route("r", Destination(agent_id="a")), 1.5)
    assert decode(encode(envelope)) == envelope


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.text(), max_size=3))
def test_client_message_id_is_exactly_uuid5_of_source_and_identity(source: str, identity: list[str]) -> None:
    name = "\x1f".join((source, *identity))
    try:
        expected = str(uuid.uuid5(ID_NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            client_message_id(source, *identity)
        return
    assert client_message_id(source, *identity) == expected
