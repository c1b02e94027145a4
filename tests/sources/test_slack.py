"""The Slack source: request signatures, slash commands, Events API callbacks, interactions, cards."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, quote, urlencode

import pytest

from relay.errors import BadRequest, BadSignature, Rejected
from relay.messages import kind_of
from relay.routing import Destination
from relay.sources.slack import (
    ENVELOPE_ID_MAX,
    REASON_MAX,
    SECTION_TEXT_MAX,
    Card,
    Challenge,
    Click,
    Command,
    Decision,
    Ignored,
    Mention,
    ReasonGiven,
    SocketEnvelope,
    card_id_for,
    card_message,
    closed_message,
    decided_message,
    from_socket,
    parse_command,
    parse_event,
    parse_interaction,
    reason_modal,
    response_url_allowed,
    sign,
    signed_headers,
    socket_envelope,
    verify,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "slack"

# Slack's published example (https://api.slack.com/authentication/verifying-requests-from-slack).
KNOWN_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
KNOWN_TIMESTAMP = 1531420618
KNOWN_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
KNOWN_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
OTHER_SECRET = b"0000000000000000000000000000000a"

TEAM = "T0001"
CHANNEL = "C0001"
DM = "D0001"
ALICE = "U0001"
BOT_USER = "UBOT"
MENTION_TS = "1715000000.000100"
CARD_ID = "bea72b3c-45fe-57da-91cc-2a240203b5f0"
ACTIONS_URL = "https://hooks.slack.com/actions/T0001/7012345678901/AbCdEfGhIjKlMnOpQrStUvWx"

DESTINATION = Destination(agent_id="agent-00000000-0000-0000-0000-000000000000", device_id="ops-laptop")
TOOL_CALL = "toolu_01AbCdEfGhIjKlMnOpQrStUv"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def sample_json(name: str) -> dict[str, Any]:
    return json.loads(sample(name))


def known_headers() -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": str(KNOWN_TIMESTAMP), "X-Slack-Signature": KNOWN_SIGNATURE}


def changed(name: str, change: Callable[[dict[str, Any]], Any]) -> bytes:
    """A recorded JSON sample with one change applied, as body bytes."""
    data = copy.deepcopy(sample_json(name))
    change(data)
    return json.dumps(data).encode()


def event_with(name: str, **fields: Any) -> bytes:
    return changed(name, lambda data: data["event"].update(fields))


def form(payload: dict[str, Any]) -> bytes:
    """An interaction as Slack posts it: payload=<url-encoded JSON>."""
    return urlencode({"payload": json.dumps(payload)}).encode()


def interaction(name: str, change: Callable[[dict[str, Any]], Any] | None = None) -> bytes:
    data = copy.deepcopy(sample_json(name))
    if change is not None:
        change(data)
    return form(data)


def command_form(**fields: str | None) -> bytes:
    """The recorded slash command with fields replaced (None removes one)."""
    data = {k: v[-1] for k, v in parse_qs(sample("command.txt").decode(), keep_blank_values=True).items()}
    for key, value in fields.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return urlencode(data).encode()


def make_card(**fields: Any) -> Card:
    values: dict[str, Any] = dict(
        card_id=card_id_for(DESTINATION, TOOL_CALL), tool_call_id=TOOL_CALL, tool_name="run_shell",
        arguments={"command": "kubectl rollout restart deploy/api", "namespace": "prod"}, route="incidents",
        destination=DESTINATION, channel=CHANNEL, thread_ts=MENTION_TS, ts="1715000200.000300")
    values.update(fields)
    return Card(**values)


APPROVED = Decision(approve=True, user="U0002", user_name="bob", at=1715000250.5)
DENIED = Decision(approve=False, user="U0003", user_name="carol", at=1715000260.0,
                  reason="Not during the change freeze")


def texts(value: Any) -> Iterator[str]:
    """Every text object's text in a Block Kit structure."""
    if isinstance(value, dict):
        if value.get("type") in ("mrkdwn", "plain_text") and isinstance(value.get("text"), str):
            yield value["text"]
        for item in value.values():
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def section_texts(message: dict[str, Any]) -> list[str]:
    return [block["text"]["text"] for block in message["blocks"] if block["type"] == "section"]


# --- sign / verify ----------------------------------------------------------------------


def test_sign_matches_slacks_known_answer() -> None:
    assert sign(KNOWN_SECRET, KNOWN_TIMESTAMP, KNOWN_BODY) == KNOWN_SIGNATURE


def test_verify_accepts_slacks_known_answer() -> None:
    assert verify(known_headers(), KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP) is None


def test_signed_headers_carry_the_known_signature_and_content_type() -> None:
    headers = signed_headers(KNOWN_SECRET, KNOWN_TIMESTAMP, KNOWN_BODY, "application/x-www-form-urlencoded")
    assert headers == {"x-slack-request-timestamp": "1531420618", "x-slack-signature": KNOWN_SIGNATURE,
                       "content-type": "application/x-www-form-urlencoded"}
    verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("offset", [-300, -299.5, -1, 0, 1, 299.5, 300])
def test_timestamp_up_to_five_minutes_away_is_accepted(offset: float) -> None:
    verify(known_headers(), KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP + offset)


@pytest.mark.parametrize("offset", [-301, 301, -300.5, 300.5, -86400, 86400])
def test_timestamp_outside_five_minutes_is_rejected(offset: float) -> None:
    # offset > 0: the request is stale (a replay); offset < 0: it claims to come from the future.
    with pytest.raises(BadSignature) as caught:
        verify(known_headers(), KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP + offset)
    assert "X-Slack-Request-Timestamp" in caught.value.reason
    assert caught.value.status == 401


@pytest.mark.parametrize("name", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_missing_header_is_rejected_naming_it(name: str) -> None:
    headers = known_headers()
    del headers[name]
    with pytest.raises(BadSignature) as caught:
        verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)
    assert name.lower() in caught.value.reason.lower()


@pytest.mark.parametrize("name", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_empty_header_counts_as_missing(name: str) -> None:
    with pytest.raises(BadSignature) as caught:
        verify({**known_headers(), name: ""}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)
    assert name.lower() in caught.value.reason.lower()


def test_no_headers_at_all_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify({}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["1531420618.0", "1.531420618e9", "-1531420618", "+1531420618",
                                       " 1531420618", "1531420618 ", "0x5B47A40A", "soon",
                                       "\u0661\u0665\u0663\u0661\u0664\u0662\u0660\u0666\u0661\u0668",
                                       "\uff11\uff15\uff13\uff11\uff14\uff12\uff10\uff16\uff11\uff18"])
def test_non_integer_timestamp_is_rejected(timestamp: str) -> None:
    # Signed over that exact timestamp string, so only its format can be the reason.
    headers = {"X-Slack-Request-Timestamp": timestamp,
               "X-Slack-Signature": sign(KNOWN_SECRET, timestamp, KNOWN_BODY)}  # type: ignore[arg-type]
    with pytest.raises(BadSignature, match="not an integer"):
        verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["9" * 20, "9" * 300, "1" + "0" * 400, "9" * 4301, "9" * 5000, "0" * 5000],
                         ids=lambda t: f"{len(t)}-digits")
def test_a_timestamp_of_absurd_length_is_401_not_a_crash(timestamp: str) -> None:
    headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": "v0=" + "0" * 64}
    with pytest.raises(BadSignature, match="X-Slack-Request-Timestamp"):
        verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("signature", ["v0=" + "0" * 100_000, "v0=" + "g" * 64, "v1=" + "0" * 64, "v0=" + "0" * 63,
                                       "v0=\u00e9" + "0" * 63, "x" * 5000])
def test_a_signature_that_is_not_v0_and_64_hex_digits_is_401(signature: str) -> None:
    with pytest.raises(BadSignature, match="X-Slack-Signature"):
        verify({**known_headers(), "X-Slack-Signature": signature}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify(known_headers(), KNOWN_BODY, OTHER_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("body", [
    KNOWN_BODY.replace(b"text=", b"text=hi"),
    KNOWN_BODY + b"&x=1",
    KNOWN_BODY[:-1],
    KNOWN_BODY.replace(b"%2Fwebhook-collect", b"/webhook-collect"),  # same form, other bytes
    b"",
])
def test_body_altered_after_signing_is_rejected(body: bytes) -> None:
    with pytest.raises(BadSignature):
        verify(known_headers(), body, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


def test_timestamp_is_part_of_what_is_signed() -> None:
    headers = {**known_headers(), "X-Slack-Request-Timestamp": str(KNOWN_TIMESTAMP + 1)}
    with pytest.raises(BadSignature):
        verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


HEX = KNOWN_SIGNATURE.removeprefix("v0=")


@pytest.mark.parametrize("signature", [
    HEX,                             # no scheme
    "v1=" + HEX,                     # another scheme
    "V0=" + HEX,
    "v0:" + HEX,
    "v0 =" + HEX,
    "v0=" + HEX[:-2],                # truncated
    "v0=" + HEX + "00",              # trailing garbage
    " " + KNOWN_SIGNATURE,
    "v0=" + "0" * 64,                # right shape, wrong value
    "v0=",
    f"v1=abc, {KNOWN_SIGNATURE}",    # Slack sends exactly one signature
])
def test_signature_of_the_wrong_scheme_or_shape_is_rejected(signature: str) -> None:
    with pytest.raises(BadSignature):
        verify({**known_headers(), "X-Slack-Signature": signature}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("signature", [
    "v0=" + "\u00e9" * 64,
    "v0=" + HEX[:-1] + "\u00ff",
    "\u2603",
    "v0=" + HEX[:-1] + "\ufffd",
    "v0=\udcff" + HEX[1:],
])
def test_non_ascii_signature_is_a_bad_signature_not_a_unicode_error(signature: str) -> None:
    with pytest.raises(BadSignature):
        verify({**known_headers(), "X-Slack-Signature": signature}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


@pytest.mark.parametrize("spell", [str.lower, str.upper, str.title, lambda s: s.replace("Slack", "sLaCk")])
def test_header_names_match_in_any_case(spell: Callable[[str], str]) -> None:
    headers = {spell(k): v for k, v in known_headers().items()}
    verify(headers, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)


def test_rejection_reason_never_contains_the_signature() -> None:
    bad = "v0=" + "ab" * 32
    with pytest.raises(BadSignature) as caught:
        verify({**known_headers(), "X-Slack-Signature": bad}, KNOWN_BODY, KNOWN_SECRET, now=KNOWN_TIMESTAMP)
    assert "abab" not in caught.value.reason
    assert HEX[:12] not in caught.value.reason


# --- slash commands ---------------------------------------------------------------------


def test_recorded_command_is_parsed() -> None:
    assert parse_command(sample("command.txt")) == Command(
        team=TEAM, channel=CHANNEL, user=ALICE, user_name="alice", command="/agent",
        text="summarize the incident & list the owners",
        response_url="https://hooks.slack.com/commands/T0001/7012345678000/QwErTyUiOpAsDfGhJkLzXcVb",
        trigger_id="7012345678000.1234567890123.4e5f60718293a4b5c6d7e8f9a0b1c2d3",
    )


def test_slacks_known_answer_body_is_a_command_with_empty_text() -> None:
    command = parse_command(KNOWN_BODY)
    assert (command.team, command.channel, command.user, command.command, command.text) == (
        "T1DC2JH3J", "G8PSS9T3V", "U2CERLKJA", "/webhook-collect", "")


def test_command_client_message_id_is_a_uuid_and_the_otid() -> None:
    inbound = parse_command(sample("command.txt")).inbound()
    assert str(uuid.UUID(inbound.client_message_id)) == inbound.client_message_id
    assert inbound.message["client_message_id"] == inbound.client_message_id
    assert inbound.message["otid"] == inbound.client_message_id
    assert inbound.message["role"] == "user"
    assert set(inbound.message) == {"role", "client_message_id", "content", "otid"}


def test_same_trigger_gives_the_same_client_message_id_whatever_else_differs() -> None:
    first = parse_command(sample("command.txt")).inbound()
    again = parse_command(command_form(text="something else", user_id="U0009", channel_id="C0009",
                                       response_url="https://hooks.slack.com/commands/T0001/1/other")).inbound()
    assert first.client_message_id == again.client_message_id


def test_another_trigger_gives_another_client_message_id() -> None:
    first = parse_command(sample("command.txt")).inbound()
    other = parse_command(command_form(trigger_id="7012345678999.1234567890123.ffff")).inbound()
    assert first.client_message_id != other.client_message_id


def test_the_same_trigger_in_another_workspace_gives_another_client_message_id() -> None:
    first = parse_command(sample("command.txt")).inbound()
    other = parse_command(command_form(team_id="T0002")).inbound()
    assert first.client_message_id != other.client_message_id


def test_command_content_carries_the_text_the_user_and_the_channel() -> None:
    content = parse_command(sample("command.txt")).inbound().message["content"]
    assert "summarize the incident & list the owners" in content
    assert ALICE in content
    assert CHANNEL in content


def test_command_reply_goes_to_the_response_url() -> None:
    inbound = parse_command(sample("command.txt")).inbound()
    assert inbound.reply == {"via": "response_url",
                             "url": "https://hooks.slack.com/commands/T0001/7012345678000/QwErTyUiOpAsDfGhJkLzXcVb"}
    assert (inbound.source, inbound.route) == ("slack", None)
    assert "7012345678000.1234567890123.4e5f60718293a4b5c6d7e8f9a0b1c2d3" in inbound.delivery_id


@pytest.mark.parametrize("field", ["team_id", "channel_id", "user_id", "command", "response_url", "trigger_id"])
@pytest.mark.parametrize("value", [None, ""], ids=["absent", "empty"])
def test_command_without_a_required_field_is_rejected_naming_it(field: str, value: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_command(command_form(**{field: value}))
    assert field in caught.value.reason
    assert caught.value.status == 400


@pytest.mark.parametrize("text", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_command_without_text_is_kept_with_empty_text(text: str | None) -> None:
    # The web layer answers an empty command with usage instead of queueing it.
    assert parse_command(command_form(text=text)).text == ""


def test_command_text_is_stripped_but_otherwise_kept() -> None:
    assert parse_command(command_form(text="  1+1 = <2>  \n")).text == "1+1 = <2>"


@pytest.mark.parametrize("body", [b"team_id=T0001&&x", b"\xff\xfe", b"team_id=T0001&=x"])
def test_command_body_that_is_not_a_form_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_command(body)


# --- Events API -------------------------------------------------------------------------


def mention_event() -> Mention:
    event = parse_event(sample("event_app_mention.json"))
    assert isinstance(event, Mention)
    return event


def test_url_verification_is_a_challenge() -> None:
    assert parse_event(sample("url_verification.json")) == Challenge(
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")


@pytest.mark.parametrize("challenge", [None, 5, ["x"]])
def test_url_verification_without_a_string_challenge_is_a_bad_request(challenge: Any) -> None:
    body = changed("url_verification.json", lambda data: data.update(challenge=challenge))
    with pytest.raises(BadRequest):
        parse_event(body)


def test_app_mention_is_a_mention_without_the_leading_bot_mention() -> None:
    assert parse_event(sample("event_app_mention.json")) == Mention(
        team=TEAM, channel=CHANNEL, user=ALICE, text="summarize the incident", ts=MENTION_TS,
        event_id="Ev0000000001", kind="mention")


@pytest.mark.parametrize("text", ["<@UBOT|relay> summarize the incident", "  <@UBOT>\nsummarize the incident  ",
                                  "<@UBOT>summarize the incident"])
def test_leading_bot_mention_is_stripped_in_every_spelling(text: str) -> None:
    event = parse_event(event_with("event_app_mention.json", text=text))
    assert isinstance(event, Mention)
    assert event.text == "summarize the incident"


def test_a_mention_later_in_the_text_is_kept() -> None:
    event = parse_event(event_with("event_app_mention.json", text="hey <@UBOT> summarize the incident"))
    assert isinstance(event, Mention)
    assert event.text == "hey <@UBOT> summarize the incident"


def test_a_leading_mention_of_another_person_is_kept() -> None:
    event = parse_event(event_with("event_app_mention.json", text="<@U0002> please review, <@UBOT> fyi"))
    assert isinstance(event, Mention)
    assert event.text == "<@U0002> please review, <@UBOT> fyi"


def test_direct_message_is_a_dm_mention() -> None:
    assert parse_event(sample("event_message_im.json")) == Mention(
        team=TEAM, channel=DM, user=ALICE, text="what changed in the last deploy?", ts="1715000100.000200",
        event_id="Ev0000000003", kind="dm")


def test_the_channel_copy_of_a_mention_is_ignored() -> None:
    mention = json.loads(sample("event_app_mention.json"))["event"]
    copy_ = json.loads(sample("event_message_channel.json"))["event"]
    assert (copy_["channel"], copy_["ts"], copy_["text"]) == (mention["channel"], mention["ts"], mention["text"])
    assert isinstance(parse_event(sample("event_message_channel.json")), Ignored)


@pytest.mark.parametrize("channel_type", ["channel", "group", "mpim", None])
def test_messages_outside_a_dm_are_ignored(channel_type: str | None) -> None:
    body = event_with("event_message_im.json", channel_type=channel_type)
    assert isinstance(parse_event(body), Ignored)


def test_dm_and_app_mention_of_the_same_message_share_one_client_message_id() -> None:
    # Slack may deliver one message as both; same team + channel + ts is one message.
    dm = parse_event(event_with("event_message_im.json", channel=CHANNEL, ts=MENTION_TS))
    assert isinstance(dm, Mention)
    mention = mention_event()
    assert dm.event_id != mention.event_id
    assert dm.inbound().client_message_id == mention.inbound().client_message_id


@pytest.mark.parametrize("change", [{"ts": "1715000000.000101"}, {"channel": "C0002"}, {"team": "T0002"}])
def test_another_message_gives_another_client_message_id(change: dict[str, str]) -> None:
    def apply(data: dict[str, Any]) -> None:
        data["event"].update(change)
        if "team" in change:
            data["team_id"] = change["team"]

    other = parse_event(changed("event_app_mention.json", apply))
    assert isinstance(other, Mention)
    assert other.inbound().client_message_id != mention_event().inbound().client_message_id


def test_a_retried_event_gives_the_same_client_message_id() -> None:
    first = mention_event().inbound()
    retry = mention_event().inbound()
    assert first.client_message_id == retry.client_message_id
    assert first.delivery_id == retry.delivery_id == "Ev0000000001"


def test_client_message_id_does_not_depend_on_the_text_or_event_id() -> None:
    body = changed("event_app_mention.json",
                   lambda data: (data["event"].update(text="<@UBOT> edited"), data.update(event_id="Ev9")))
    other = parse_event(body)
    assert isinstance(other, Mention)
    assert other.inbound().client_message_id == mention_event().inbound().client_message_id


def test_mention_becomes_a_user_message_with_a_reaction_reply() -> None:
    inbound = mention_event().inbound()
    assert inbound.reply == {"via": "reaction", "channel": CHANNEL, "ts": MENTION_TS, "team": TEAM, "user": ALICE}
    assert inbound.message["otid"] == inbound.message["client_message_id"] == inbound.client_message_id
    assert inbound.message["role"] == "user"
    assert "summarize the incident" in inbound.message["content"]
    assert ALICE in inbound.message["content"]
    assert (inbound.source, inbound.route) == ("slack", None)


def test_mention_inside_a_thread_remembers_the_thread_for_answers() -> None:
    body = changed("event_app_mention.json", lambda data: data["event"].update(thread_ts="1714999999.000900"))
    event = parse_event(body)
    assert isinstance(event, Mention)
    assert event.inbound().reply == {"via": "reaction", "channel": CHANNEL, "ts": MENTION_TS, "team": TEAM,
                                     "user": ALICE, "thread_ts": "1714999999.000900"}
    assert event.inbound().context == {"slack_thread": {"team": TEAM, "channel": CHANNEL,
                                                        "thread_ts": "1714999999.000900", "ts": MENTION_TS}}
    assert event.inbound().client_message_id == mention_event().inbound().client_message_id


def test_mention_that_starts_a_thread_needs_no_thread_ts() -> None:
    body = changed("event_app_mention.json", lambda data: data["event"].update(thread_ts=MENTION_TS))
    event = parse_event(body)
    assert isinstance(event, Mention)
    assert "thread_ts" not in event.inbound().reply


def test_dm_reply_reacts_in_the_dm() -> None:
    event = parse_event(sample("event_message_im.json"))
    assert isinstance(event, Mention)
    reply = event.inbound().reply
    assert reply is not None and (reply["via"], reply["channel"], reply["ts"]) == ("reaction", DM, "1715000100.000200")


@pytest.mark.parametrize("name", ["event_bot_message.json", "event_message_changed.json",
                                  "event_message_deleted.json", "event_own_bot_message.json"])
def test_recorded_non_person_messages_are_ignored(name: str) -> None:
    assert isinstance(parse_event(sample(name)), Ignored)


def test_the_bots_own_message_is_ignored_because_of_authorizations() -> None:
    # The same message from anyone else would be addressed to the bot.
    assert isinstance(parse_event(event_with("event_own_bot_message.json", user=ALICE)), Mention)
    no_bot = changed("event_own_bot_message.json",
                     lambda data: data["authorizations"][0].update(is_bot=False))
    assert isinstance(parse_event(no_bot), Mention)


@pytest.mark.parametrize("name", ["event_app_mention.json", "event_message_im.json"])
@pytest.mark.parametrize("fields", [{"bot_id": "B0002"}, {"subtype": "bot_message"},
                                    {"bot_profile": {"id": "B0002", "name": "other-app", "app_id": "A0002"}}],
                         ids=["bot_id", "subtype", "bot_profile"])
def test_any_event_from_a_bot_is_ignored(name: str, fields: dict[str, Any]) -> None:
    assert isinstance(parse_event(event_with(name, **fields)), Ignored)


@pytest.mark.parametrize("subtype", ["message_changed", "message_deleted", "channel_join", "message_replied",
                                     "bot_message", "tombstone"])
def test_message_subtypes_that_are_not_a_person_writing_are_ignored(subtype: str) -> None:
    assert isinstance(parse_event(event_with("event_message_im.json", subtype=subtype)), Ignored)


@pytest.mark.parametrize("subtype", ["file_share", "thread_broadcast"])
def test_a_person_sharing_a_file_or_broadcasting_a_reply_is_a_mention(subtype: str) -> None:
    assert isinstance(parse_event(event_with("event_message_im.json", subtype=subtype)), Mention)


@pytest.mark.parametrize("event", [
    {"type": "reaction_added", "user": ALICE, "reaction": "eyes", "item_user": BOT_USER,
     "item": {"type": "message", "channel": CHANNEL, "ts": MENTION_TS}, "event_ts": "1715000001.000100"},
    {"type": "member_joined_channel", "user": ALICE, "channel": CHANNEL, "channel_type": "C", "team": TEAM},
    {"type": "app_home_opened", "user": ALICE, "channel": DM, "tab": "messages", "event_ts": "1715000002.1"},
    {"type": "app_uninstalled"},
], ids=["reaction_added", "member_joined_channel", "app_home_opened", "app_uninstalled"])
def test_other_event_types_are_ignored(event: dict[str, Any]) -> None:
    assert isinstance(parse_event(changed("event_app_mention.json", lambda data: data.update(event=event))),
                      Ignored)


@pytest.mark.parametrize("kind", ["app_rate_limited", "block_actions", None])
def test_other_callback_types_are_ignored(kind: str | None) -> None:
    assert isinstance(parse_event(changed("event_app_mention.json", lambda data: data.update(type=kind))),
                      Ignored)


@pytest.mark.parametrize("text", ["<@UBOT>", "<@UBOT>   ", "  <@UBOT|relay> \n", ""])
def test_an_empty_mention_is_ignored(text: str) -> None:
    assert isinstance(parse_event(event_with("event_app_mention.json", text=text)), Ignored)


def test_an_empty_dm_is_ignored() -> None:
    assert isinstance(parse_event(event_with("event_message_im.json", text="  \n ")), Ignored)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"{'type': 'event_callback'}", b"\xff\xfe"])
def test_malformed_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_event(body)


@pytest.mark.parametrize("body", [b"[]", b'"event_callback"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match="object"):
        parse_event(body)


def test_deeply_nested_json_is_a_bad_request_not_a_recursion_error() -> None:
    with pytest.raises(BadRequest):
        parse_event(b"[" * 100_000)


@pytest.mark.parametrize("event", [None, "app_mention", ["x"]], ids=["absent", "string", "list"])
def test_event_callback_without_an_event_object_is_a_bad_request(event: Any) -> None:
    def change(data: dict[str, Any]) -> None:
        if event is None:
            del data["event"]
        else:
            data["event"] = event

    with pytest.raises(BadRequest, match="event"):
        parse_event(changed("event_app_mention.json", change))


@pytest.mark.parametrize("field", ["channel", "user", "ts"])
def test_a_mention_without_channel_user_or_ts_is_a_bad_request_naming_it(field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        parse_event(changed("event_app_mention.json", lambda data: data["event"].pop(field)))


def test_a_mention_without_any_team_is_a_bad_request() -> None:
    def change(data: dict[str, Any]) -> None:
        del data["team_id"]
        del data["event"]["team"]

    with pytest.raises(BadRequest, match="team"):
        parse_event(changed("event_app_mention.json", change))


@pytest.mark.parametrize("change", [
    lambda data: data.update(authorizations=5),
    lambda data: data.update(authorizations=[{"user_id": ["UBOT"], "is_bot": True}]),
    lambda data: data["event"].update(subtype=["file_share"]),
], ids=["authorizations-int", "authorization-user-list", "subtype-list"])
def test_malformed_fields_in_an_event_are_rejected_not_a_crash(change: Callable[[dict[str, Any]], Any]) -> None:
    try:
        parse_event(changed("event_app_mention.json", change))
    except Rejected:
        pass


# --- interactions -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "action", "user", "user_name", "trigger_id"), [
    ("block_actions_approve.json", "approve", "U0002", "bob",
     "7012345678901.1234567890123.0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
    ("block_actions_deny.json", "deny", "U0003", "carol",
     "7012345678902.1234567890123.1b2c3d4e5f60718293a4b5c6d7e8f9a0"),
    ("block_actions_deny_with_reason.json", "deny_with_reason", "U0002", "bob",
     "7012345678903.1234567890123.2c3d4e5f60718293a4b5c6d7e8f9a0b1"),
])
def test_recorded_button_clicks_are_parsed(name: str, action: str, user: str, user_name: str,
                                           trigger_id: str) -> None:
    assert parse_interaction(interaction(name)) == Click(
        action=action, card_id=CARD_ID, team=TEAM, user=user, user_name=user_name,  # type: ignore[arg-type]
        response_url=ACTIONS_URL, trigger_id=trigger_id)


def test_the_card_id_comes_from_the_button_value() -> None:
    body = interaction("block_actions_approve.json", lambda data: data["actions"][0].update(value="card-xyz"))
    click = parse_interaction(body)
    assert isinstance(click, Click) and click.card_id == "card-xyz"


def test_the_recorded_card_id_is_the_card_id_of_the_recorded_tool_call() -> None:
    assert card_id_for(DESTINATION, TOOL_CALL) == CARD_ID


def test_a_form_encoded_with_percent_twenty_spaces_is_read_the_same() -> None:
    body = b"payload=" + quote(json.dumps(sample_json("block_actions_approve.json")), safe="").encode()
    assert parse_interaction(body) == parse_interaction(interaction("block_actions_approve.json"))


@pytest.mark.parametrize("action_id", ["approve", "relay_approve_all", "", None])
def test_an_unknown_action_is_ignored(action_id: str | None) -> None:
    body = interaction("block_actions_approve.json", lambda data: data["actions"][0].update(action_id=action_id))
    assert isinstance(parse_interaction(body), Ignored)


def test_block_actions_without_actions_are_ignored() -> None:
    assert isinstance(parse_interaction(interaction("block_actions_approve.json",
                                                    lambda data: data.update(actions=[]))), Ignored)


@pytest.mark.parametrize("change", [
    lambda data: data["actions"][0].pop("value"),
    lambda data: data["actions"][0].update(value=5),
    lambda data: data.pop("response_url"),
    lambda data: data.update(response_url=""),
], ids=["no-value", "numeric-value", "no-response-url", "empty-response-url"])
def test_a_card_button_without_a_value_or_response_url_is_a_bad_request(
        change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(interaction("block_actions_approve.json", change))


def test_the_reason_modal_submission_is_parsed_with_the_reason_stripped() -> None:
    assert parse_interaction(interaction("view_submission_reason.json")) == ReasonGiven(
        card_id=CARD_ID, team=TEAM, user="U0002", user_name="bob",
        reason="Not during the change freeze; wait for Monday.")


def set_reason(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["view"]["state"]["values"]["reason"]["reason_input"]["value"] = value
    return change


def test_the_reason_is_capped_at_reason_max() -> None:
    given = parse_interaction(interaction("view_submission_reason.json", set_reason("  " + "x" * 1500 + "  ")))
    assert isinstance(given, ReasonGiven)
    assert given.reason == "x" * REASON_MAX


def test_a_reason_of_exactly_reason_max_is_kept_whole() -> None:
    reason = "y" * (REASON_MAX - 1) + "z"
    given = parse_interaction(interaction("view_submission_reason.json", set_reason(reason)))
    assert isinstance(given, ReasonGiven) and given.reason == reason


@pytest.mark.parametrize("value", [None, "", "   \n", 5])
def test_a_reason_modal_without_a_reason_is_a_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest, match="reason"):
        parse_interaction(interaction("view_submission_reason.json", set_reason(value)))


@pytest.mark.parametrize("change", [
    lambda data: data["view"].update(state={}),
    lambda data: data["view"].update(state={"values": {"reason": "x"}}),
    lambda data: data["view"].update(state={"values": []}),
    lambda data: data["view"].update(private_metadata=""),
], ids=["no-values", "block-not-object", "values-list", "no-card-id"])
def test_a_malformed_reason_modal_is_a_bad_request(change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(interaction("view_submission_reason.json", change))


@pytest.mark.parametrize("callback_id", ["other_view", "", None])
def test_a_view_with_another_callback_id_is_ignored(callback_id: str | None) -> None:
    body = interaction("view_submission_reason.json", lambda data: data["view"].update(callback_id=callback_id))
    assert isinstance(parse_interaction(body), Ignored)


@pytest.mark.parametrize("kind", ["view_closed", "shortcut", "message_action", "block_suggestion"])
def test_other_interaction_types_are_ignored(kind: str) -> None:
    body = interaction("block_actions_approve.json", lambda data: data.update(type=kind))
    assert isinstance(parse_interaction(body), Ignored)


@pytest.mark.parametrize("body", [b"", b"token=x&type=block_actions", b"payload="])
def test_a_form_without_a_payload_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match="payload"):
        parse_interaction(body)


@pytest.mark.parametrize("body", [b"payload", b"payload=%7B%7D&&x", b"payload=\xff"])
def test_a_body_that_is_not_a_form_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(body)


@pytest.mark.parametrize("payload", ["not json", "{", "{'type': 'block_actions'}"])
def test_a_payload_that_is_not_json_is_a_bad_request(payload: str) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(urlencode({"payload": payload}).encode())


@pytest.mark.parametrize("payload", ["[]", '"block_actions"', "1"])
def test_a_payload_that_is_not_an_object_is_a_bad_request(payload: str) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(urlencode({"payload": payload}).encode())


@pytest.mark.parametrize("change", [
    lambda data: data.pop("user"),
    lambda data: data.update(user="U0002"),
    lambda data: data["user"].pop("id"),
    lambda data: (data.pop("team"), data["user"].pop("team_id")),
    lambda data: (data.update(team=None), data["user"].pop("team_id")),
], ids=["no-user", "user-not-object", "no-user-id", "no-team", "null-team"])
@pytest.mark.parametrize("name", ["block_actions_approve.json", "view_submission_reason.json"])
def test_an_interaction_without_a_user_or_team_is_a_bad_request(name: str,
                                                               change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(interaction(name, change))


def test_the_team_falls_back_to_the_users_team() -> None:
    # Org-wide installs send "team": null; the user's team_id still names the workspace.
    click = parse_interaction(interaction("block_actions_approve.json", lambda data: data.update(team=None)))
    assert isinstance(click, Click) and click.team == TEAM


@pytest.mark.parametrize("change", [
    lambda data: data["user"].update(id=5),
    lambda data: data["team"].update(id=7),
], ids=["user-id-int", "team-id-int"])
def test_an_interaction_whose_ids_are_not_strings_is_a_bad_request(change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest):
        parse_interaction(interaction("block_actions_approve.json", change))


@pytest.mark.parametrize("response_url", [{"url": "https://hooks.slack.com/x"}, ["https://hooks.slack.com/x"], 7,
                                          True, "", "https://hooks.slack.com/\nx", "h" * 3000])
def test_a_click_whose_response_url_is_not_a_url_string_is_a_bad_request(response_url: Any) -> None:
    body = interaction("block_actions_approve.json", lambda data: data.update(response_url=response_url))
    with pytest.raises(BadRequest, match="response_url"):
        parse_interaction(body)


@pytest.mark.parametrize("response_url", ["", "https://hooks.slack.com/\nx", "h" * 3000])
def test_a_command_whose_response_url_is_not_a_url_string_is_a_bad_request(response_url: str) -> None:
    with pytest.raises(BadRequest, match="response_url"):
        parse_command(command_form(response_url=response_url))


@pytest.mark.parametrize("url", ["https://hooks.slack.com/commands/T1/2/x", "https://hooks.slack.com/actions/T1/2/y",
                                 "https://hooks.slack.com/"])
def test_response_urls_under_slacks_hooks_origin_are_allowed(url: str) -> None:
    assert response_url_allowed(url, "https://hooks.slack.com/")


@pytest.mark.parametrize("url", ["https://hooks.slack.com.evil.example/x", "https://evil.example/https://hooks.slack.com/",
                                 "http://hooks.slack.com/commands/x", "https://hooks.slack.com@evil.example/x",
                                 "https://hooks.slack.com:8443/x", "https://HOOKS.slack.com/x/../../evil",
                                 "https://evil.example/", "http://169.254.169.254/latest/meta-data/", "hooks.slack.com/x",
                                 "https://hooks.slack.com\\@evil.example/", "https://hooks.slack.com", "//hooks.slack.com/x",
                                 "https://hooks.slack.com/x\r\nHost: evil"])
def test_any_other_response_url_is_not_allowed(url: str) -> None:
    assert not response_url_allowed(url, "https://hooks.slack.com/")


def test_the_allowed_prefix_may_point_at_a_stand_in() -> None:
    assert response_url_allowed("http://127.0.0.1:8123/response/k", "http://127.0.0.1:8123/response/")
    assert not response_url_allowed("http://127.0.0.1:8124/response/k", "http://127.0.0.1:8123/response/")
    assert not response_url_allowed("http://127.0.0.1:8123/api/k", "http://127.0.0.1:8123/response/")


def test_an_action_id_that_is_not_a_string_is_rejected_not_a_crash() -> None:
    body = interaction("block_actions_approve.json", lambda data: data["actions"][0].update(action_id=["x"]))
    try:
        parse_interaction(body)
    except Rejected:
        pass


# --- cards ------------------------------------------------------------------------------


@pytest.mark.parametrize("card", [
    make_card(),
    make_card(decision=APPROVED),
    make_card(decision=DENIED),
    make_card(thread_ts=None, ts=None, arguments={}),
    make_card(destination=Destination(agent_id="agent-2", conversation_id="conv-2", connection_name="box"),
              arguments={"nested": {"list": [1, 2.5, None, True], "unicode": "caf\u00e9 \U0001F600"}}),
], ids=["pending", "approved", "denied-with-reason", "unposted", "nested"])
def test_card_round_trips_through_json(card: Card) -> None:
    text = card.to_json()
    assert isinstance(json.loads(text), dict)
    assert Card.from_json(text) == card


def test_card_with_request_id_and_close_note_round_trips_through_json() -> None:
    card = make_card(request_id="req-7", closed="Answered in the terminal.")
    assert Card.from_json(card.to_json()) == card


def test_card_stored_before_request_ids_still_loads() -> None:
    stored = json.loads(make_card().to_json())
    assert "request_id" not in stored and "closed" not in stored  # unset fields are not written
    assert Card.from_json(json.dumps(stored)) == make_card()


def test_card_decided_keeps_everything_else() -> None:
    card = make_card()
    decided = card.decided(DENIED)
    assert decided.decision == DENIED
    assert card.decision is None
    assert decided == make_card(decision=DENIED)


def test_card_id_is_deterministic() -> None:
    same_destination = Destination(agent_id="agent-00000000-0000-0000-0000-000000000000", device_id="ops-laptop")
    assert card_id_for(DESTINATION, TOOL_CALL) == card_id_for(same_destination, TOOL_CALL)
    assert str(uuid.UUID(card_id_for(DESTINATION, TOOL_CALL))) == card_id_for(DESTINATION, TOOL_CALL)


def test_card_id_differs_by_agent_and_by_tool_call() -> None:
    base = card_id_for(DESTINATION, TOOL_CALL)
    assert card_id_for(Destination(agent_id="agent-other", device_id="ops-laptop"), TOOL_CALL) != base
    assert card_id_for(DESTINATION, TOOL_CALL + "x") != base
    assert card_id_for(DESTINATION, "toolu_other") != base


def test_card_id_is_one_per_agent_and_tool_call_whatever_the_connection() -> None:
    other_connection = Destination(agent_id=DESTINATION.agent_id, connection_name="build-box")
    assert card_id_for(other_connection, TOOL_CALL) == card_id_for(DESTINATION, TOOL_CALL)


@pytest.mark.parametrize("decision", [APPROVED, DENIED,
                                      Decision(approve=True, user="U0009", user_name="zed", at=1.0),
                                      Decision(approve=False, user="U0002", user_name="bob", at=2.0, reason="no")])
def test_every_decision_on_a_card_has_the_same_client_message_id(decision: Decision) -> None:
    # So only the first decision on a card is ever delivered.
    card = make_card()
    assert card.decision_inbound(decision).client_message_id == card.decision_inbound(APPROVED).client_message_id


def test_decisions_on_different_cards_have_different_client_message_ids() -> None:
    one = make_card().decision_inbound(APPROVED)
    other = make_card(card_id=card_id_for(DESTINATION, "toolu_other"), tool_call_id="toolu_other")
    assert other.decision_inbound(APPROVED).client_message_id != one.client_message_id


def test_approval_is_exactly_the_letta_approval_message() -> None:
    inbound = make_card().decision_inbound(APPROVED)
    assert inbound.message == {"type": "approval",
                               "approvals": [{"type": "approval", "tool_call_id": TOOL_CALL, "approve": True}]}
    assert kind_of(inbound.message) == "approval"


def test_denial_with_a_reason_carries_the_reason() -> None:
    inbound = make_card().decision_inbound(DENIED)
    assert inbound.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": TOOL_CALL, "approve": False,
         "reason": "Not during the change freeze"}]}


def test_denial_without_a_reason_has_no_reason_key() -> None:
    inbound = make_card().decision_inbound(Decision(approve=False, user="U0003", user_name="carol", at=1.0))
    assert inbound.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": TOOL_CALL, "approve": False}]}


def test_decision_goes_to_the_cards_route_and_replies_on_the_card() -> None:
    inbound = make_card().decision_inbound(APPROVED)
    assert inbound.reply == {"via": "card", "channel": CHANNEL, "ts": "1715000200.000300"}
    assert inbound.route == "incidents"
    assert inbound.source == "slack"
    assert str(uuid.UUID(inbound.client_message_id)) == inbound.client_message_id


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [element for block in message["blocks"] if block["type"] == "actions" for element in block["elements"]]


def test_card_message_has_approve_deny_and_deny_with_reason_buttons_carrying_the_card_id() -> None:
    card = make_card()
    found = buttons(card_message(card))
    assert [(b["action_id"], b["text"]["text"], b["type"]) for b in found] == [
        ("relay_approve", "Approve", "button"), ("relay_deny", "Deny", "button"),
        ("relay_deny_with_reason", "Deny with reason…", "button")]
    assert {b["value"] for b in found} == {card.card_id}
    assert all(len(b["value"]) < 2000 for b in found)


def test_card_message_names_the_tool_the_agent_and_the_arguments() -> None:
    message = card_message(make_card())
    shown = "\n".join(texts(message["blocks"]))
    assert "run_shell" in shown and DESTINATION.agent_id in shown
    assert "kubectl rollout restart deploy/api" in shown and TOOL_CALL in shown
    assert "run_shell" in message["text"]


@pytest.mark.parametrize("arguments", [
    {"script": "x" * 100_000},
    {"script": "<&>" * 35_000},
    {f"key{i}": "value " * 50 for i in range(400)},
], ids=["100KB", "100KB-of-escapes", "many-keys"])
def test_every_card_text_fits_block_kit_even_for_huge_arguments(arguments: dict[str, Any]) -> None:
    card = make_card(arguments=arguments, tool_call_id="t" * 256, tool_name="n" * 256)
    for message in (card_message(card), decided_message(card.decided(APPROVED))):
        assert all(len(text) <= SECTION_TEXT_MAX for text in section_texts(message))
        assert all(len(text) <= SECTION_TEXT_MAX for text in texts(message["blocks"]))
    assert len(json.dumps(card_message(card))) < 20_000


def test_huge_arguments_are_shown_truncated() -> None:
    message = card_message(make_card(arguments={"script": "x" * 100_000}))
    assert any("more characters" in text for text in section_texts(message))


def test_tool_name_and_arguments_are_escaped_in_the_card() -> None:
    card = make_card(tool_name="<!channel> & run", arguments={"cmd": "a < b && c > d", "who": "<@U0001>"},
                     route="r&d", tool_call_id="call<1>")
    for message in (card_message(card), decided_message(card.decided(APPROVED))):
        shown = "\n".join(texts([b for b in message["blocks"] if b["type"] != "header"]))
        assert "<!channel>" not in shown and "<@U0001>" not in shown and "a < b" not in shown
        assert "&lt;!channel&gt; &amp; run" in shown
        assert "a &lt; b &amp;&amp; c &gt; d" in shown
        assert "&lt;@U0001&gt;" in shown
        assert "r&amp;d" in shown and "call&lt;1&gt;" in shown


def test_the_fallback_text_is_escaped_too() -> None:
    card = make_card(tool_name="<!channel> & run")
    for message in (card_message(card), decided_message(card.decided(APPROVED))):
        assert "<!channel>" not in message["text"]
        assert "&lt;!channel&gt; &amp; run" in message["text"]


def test_decided_card_has_no_buttons() -> None:
    for decision in (APPROVED, DENIED):
        message = decided_message(make_card().decided(decision))
        assert all(block["type"] != "actions" for block in message["blocks"])
        assert buttons(message) == []


def test_closed_card_shows_the_note_and_has_no_buttons() -> None:
    message = closed_message(make_card().closed_with("Answered in the terminal <by alice>."))
    shown = "\n".join(texts(message["blocks"]))
    assert buttons(message) == [] and all(block["type"] != "actions" for block in message["blocks"])
    assert "Answered in the terminal &lt;by alice&gt;." in shown
    assert "No longer pending" in message["text"] and "run_shell" in shown


def test_closed_decided_card_keeps_the_decision_and_adds_the_note() -> None:
    message = closed_message(make_card().decided(APPROVED).closed_with("The agent no longer waits for this."))
    shown = "\n".join(texts(message["blocks"]))
    assert "<@U0002>" in shown and "Approved" in message["text"]
    assert "The agent no longer waits for this." in shown
    assert buttons(message) == []


def test_a_huge_close_note_still_fits_block_kit() -> None:
    message = closed_message(make_card().closed_with("<" * 5000))
    assert all(len(text) <= SECTION_TEXT_MAX for text in section_texts(message))


def test_approved_card_names_the_approver_and_the_verdict() -> None:
    message = decided_message(make_card().decided(APPROVED))
    shown = "\n".join(texts(message["blocks"]))
    assert "<@U0002>" in shown
    assert "Approved" in shown and "Denied" not in shown
    assert "Approved" in message["text"]


def test_denied_card_names_the_decider_the_verdict_and_the_reason() -> None:
    message = decided_message(make_card().decided(DENIED))
    shown = "\n".join(texts(message["blocks"]))
    assert "<@U0003>" in shown
    assert "Denied" in shown and "Approved" not in shown
    assert "Not during the change freeze" in shown
    assert "Denied" in message["text"]


def test_the_reason_on_a_decided_card_is_escaped() -> None:
    decision = Decision(approve=False, user="U0003", user_name="carol", at=1.0, reason="<!here> a & b")
    shown = "\n".join(texts(decided_message(make_card().decided(decision))["blocks"]))
    assert "<!here>" not in shown
    assert "&lt;!here&gt; a &amp; b" in shown


@pytest.mark.parametrize("reason", ["<" * REASON_MAX, "&" * REASON_MAX, "<b>&</b>" * 125],
                         ids=["lt", "amp", "pasted-html"])
def test_the_longest_reason_still_fits_block_kit(reason: str) -> None:
    decision = Decision(approve=False, user="U0003", user_name="carol", at=1.0, reason=reason[:REASON_MAX])
    message = decided_message(make_card().decided(decision))
    assert all(len(text) <= SECTION_TEXT_MAX for text in section_texts(message))


def test_reason_modal_asks_for_the_reason_for_this_card() -> None:
    card = make_card()
    modal = reason_modal(card)
    assert modal["type"] == "modal"
    assert modal["callback_id"] == "relay_deny_reason"
    assert modal["private_metadata"] == card.card_id
    inputs = [block for block in modal["blocks"] if block["type"] == "input"]
    assert [block["block_id"] for block in inputs] == ["reason"]
    assert inputs[0]["element"]["action_id"] == "reason_input"
    assert inputs[0]["element"]["max_length"] == REASON_MAX
    assert len(modal["title"]["text"]) <= 24  # Block Kit's limit for a modal title


def test_reason_modal_escapes_the_tool_name() -> None:
    shown = "\n".join(texts(reason_modal(make_card(tool_name="<!channel>"))["blocks"]))
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown


def test_submitting_the_reason_modal_as_slack_echoes_it_gives_the_reason() -> None:
    # The recorded view_submission is the modal relay built, echoed back; reading it back closes the loop.
    card = make_card()
    recorded = sample_json("view_submission_reason.json")
    modal = reason_modal(card)
    assert recorded["view"]["callback_id"] == modal["callback_id"]
    assert recorded["view"]["private_metadata"] == modal["private_metadata"]
    given = parse_interaction(form(recorded))
    assert isinstance(given, ReasonGiven) and given.card_id == card.card_id


# -- Socket Mode: envelopes, and the same parsers as the HTTP door ---------------------------------


def envelope(kind: str, payload: Any, **fields: Any) -> SocketEnvelope:
    found = socket_envelope({"envelope_id": "57d6a792-4d35-4d0b-b6aa-3361493e1caf", "type": kind,
                             "payload": payload, **fields})
    assert found is not None
    return found


@pytest.mark.parametrize("message", [
    {"type": "hello", "num_connections": 1, "connection_info": {"app_id": "A0001"}},
    {"type": "disconnect", "reason": "refresh_requested"},
    {},
])
def test_socket_messages_without_an_envelope_carry_none(message: dict[str, Any]) -> None:
    assert socket_envelope(message) is None


def test_an_envelope_keeps_its_id_type_retry_and_whether_it_takes_a_payload() -> None:
    found = envelope("slash_commands", {}, accepts_response_payload=True, retry_attempt=2, retry_reason="timeout")
    assert found == SocketEnvelope("57d6a792-4d35-4d0b-b6aa-3361493e1caf", "slash_commands", {},
                                   accepts_response_payload=True, retry_attempt=2)


@pytest.mark.parametrize("fields", [{"accepts_response_payload": "yes"}, {"accepts_response_payload": 1},
                                    {"retry_attempt": True}, {"retry_attempt": "2"}, {"type": 5}])
def test_an_envelope_s_odd_flags_read_as_their_safe_value(fields: dict[str, Any]) -> None:
    found = envelope("events_api", {}, **fields)
    assert found.accepts_response_payload is False and found.retry_attempt == 0


@pytest.mark.parametrize("envelope_id", [None, 5, "", "x" * (ENVELOPE_ID_MAX + 1), "id\nwith a newline", "é"])
def test_an_envelope_id_that_cannot_be_acknowledged_is_refused(envelope_id: Any) -> None:
    with pytest.raises(BadRequest, match="envelope_id"):
        socket_envelope({"envelope_id": envelope_id, "type": "events_api", "payload": {}})


def test_a_slash_command_over_the_socket_is_the_command_of_the_http_form() -> None:
    fields = {k: v[-1] for k, v in parse_qs(sample("command.txt").decode()).items()}
    assert from_socket(envelope("slash_commands", fields)) == parse_command(sample("command.txt"))


@pytest.mark.parametrize("name", ["event_app_mention.json", "event_message_im.json", "event_bot_message.json",
                                  "url_verification.json"])
def test_an_event_over_the_socket_is_the_event_of_the_http_body(name: str) -> None:
    assert from_socket(envelope("events_api", sample_json(name))) == parse_event(sample(name))


@pytest.mark.parametrize("name", ["block_actions_approve.json", "block_actions_deny_with_reason.json",
                                  "view_submission_reason.json"])
def test_an_interaction_over_the_socket_is_the_interaction_of_the_http_form(name: str) -> None:
    assert from_socket(envelope("interactive", sample_json(name))) == parse_interaction(interaction(name))


def test_an_envelope_type_relay_does_not_read_is_ignored() -> None:
    assert isinstance(from_socket(envelope("app_rate_limited", {"minute_rate_limited": 1})), Ignored)


@pytest.mark.parametrize("payload", [None, [], "text", 5])
def test_an_envelope_without_a_payload_object_is_a_bad_request(payload: Any) -> None:
    with pytest.raises(BadRequest, match="payload object"):
        from_socket(envelope("events_api", payload))


@pytest.mark.parametrize("field, value", [("team_id", 5), ("trigger_id", ["x"]), ("text", {"a": 1}),
                                          ("user_name", 7), ("response_url", "not a url")])
def test_a_socket_slash_command_with_a_field_that_is_not_text_is_a_bad_request(field: str, value: Any) -> None:
    fields = {k: v[-1] for k, v in parse_qs(sample("command.txt").decode()).items()}
    with pytest.raises(BadRequest):
        from_socket(envelope("slash_commands", {**fields, field: value}))
