"""The Discord source: Ed25519 over timestamp + body (RFC 8032 known answers), and what
interactions become (recorded payloads in tests/samples/discord/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.errors import BadRequest, BadSignature
from relay.sources import discord
from relay.sources.discord import Click, Command, Ignored, Ping, ReasonGiven
from relay.sources.signatures import ed25519_valid

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "discord"
# RFC 8032, section 7.1, TEST 1 and TEST 2.
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_EMPTY_SIGNATURE = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                                    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
RFC2_PUBLIC = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC2_SIGNATURE = bytes.fromhex("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
                               "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
NOW = 1700000000
PING_BODY = b'{"type":1}'
#: RFC 8032's first key signing "1700000000" + PING_BODY, as Discord would sign it.
PING_SIGNATURE = ("1695961a47c91a1ec033b819b7e87e3dbc583dd0cee6d1fd0216f58ac87b6228"
                  "ae531ddbf91fb7bc28d7edf7f08604da16f54624f38a6bc0614e4dc13cd47f0f")


def sample(name: str, card_id: str = "") -> bytes:
    return (SAMPLES / name).read_bytes().replace(b"CARD_ID", card_id.encode())


def headers(body: bytes, timestamp: int = NOW, seed: bytes = RFC_SEED) -> dict[str, str]:
    return {"X-Signature-Ed25519": discord.sign(seed, timestamp, body), "X-Signature-Timestamp": str(timestamp)}


def test_rfc_8032_vectors_verify_and_nothing_else_does() -> None:
    assert ed25519_valid(RFC_PUBLIC, RFC_EMPTY_SIGNATURE, b"")
    assert ed25519_valid(RFC2_PUBLIC, RFC2_SIGNATURE, b"\x72")
    assert not ed25519_valid(RFC_PUBLIC, RFC2_SIGNATURE, b"\x72")
    assert not ed25519_valid(RFC2_PUBLIC, RFC2_SIGNATURE, b"\x73")
    assert not ed25519_valid(RFC_PUBLIC[:31], RFC_EMPTY_SIGNATURE, b"")
    assert discord.public_key_of(RFC_SEED) == RFC_PUBLIC


def test_a_discord_shaped_known_answer_verifies() -> None:
    assert discord.sign(RFC_SEED, NOW, PING_BODY) == PING_SIGNATURE
    discord.verify({"x-signature-ed25519": PING_SIGNATURE.upper(), "x-signature-timestamp": str(NOW)}, PING_BODY,
                   RFC_PUBLIC, NOW)


@pytest.mark.parametrize("case", ["other key", "body changed", "timestamp changed", "truncated", "not hex", "huge",
                                  "missing signature", "missing timestamp", "stale", "future", "odd timestamp",
                                  "huge timestamp"])
def test_anything_but_a_fresh_signature_of_the_application_is_refused(case: str) -> None:
    body, sent = PING_BODY, headers(PING_BODY)
    now = NOW
    if case == "other key":
        sent = headers(body, seed=b"\x02" * 32)
    elif case == "body changed":
        body = b'{"type": 1}'
    elif case == "timestamp changed":
        sent["X-Signature-Timestamp"] = str(NOW + 1)
    elif case == "truncated":
        sent["X-Signature-Ed25519"] = sent["X-Signature-Ed25519"][:-2]
    elif case == "not hex":
        sent["X-Signature-Ed25519"] = "g" * 128
    elif case == "huge":
        sent["X-Signature-Ed25519"] = "a" * 100_000
    elif case == "missing signature":
        del sent["X-Signature-Ed25519"]
    elif case == "missing timestamp":
        del sent["X-Signature-Timestamp"]
    elif case in ("stale", "future"):
        now = NOW + 301 if case == "stale" else NOW - 301
    elif case == "odd timestamp":
        sent["X-Signature-Timestamp"] = "1.7e9"
    elif case == "huge timestamp":
        sent["X-Signature-Timestamp"] = "9" * 5000
    with pytest.raises(BadSignature):
        discord.verify(sent, body, RFC_PUBLIC, now)


def test_ping_is_a_ping() -> None:
    assert isinstance(discord.parse(sample("ping.json")), Ping)


def test_a_slash_command_becomes_a_message_from_the_member_in_the_channel() -> None:
    command = discord.parse(sample("command.agent.json"))
    assert isinstance(command, Command)
    assert (command.who.guild, command.who.channel, command.who.user, command.who.roles) == \
        ("1300000000000000001", "1400000000000000002", "1800000000000000006", ("1700000000000000005",))
    inbound = command.inbound()
    assert inbound.message["content"] == ("Discord /agent from @mo.okafor (<@1800000000000000006>) in "
                                          "<#1400000000000000002>:\nsummarize the incident in #incidents")
    assert inbound.reply == {"via": "discord", "application": "1100000000000000001",
                             "token": "aW50ZXJhY3Rpb246MTYwMDAwMDAwMDAwMDAwMDAwNDpUMGtlbl9mb3JfdGVzdHM",
                             "channel": "1400000000000000002"}


def test_a_commands_identity_is_its_interaction_id() -> None:
    data = json.loads(sample("command.agent.json"))
    first = discord.parse(json.dumps(data).encode())
    data["token"] = "another-token"
    same = discord.parse(json.dumps(data).encode())
    data["id"] = "1600000000000000099"
    other = discord.parse(json.dumps(data).encode())
    assert isinstance(first, Command) and isinstance(same, Command) and isinstance(other, Command)
    assert first.inbound().client_message_id == same.inbound().client_message_id != other.inbound().client_message_id


def test_card_buttons_and_the_reason_form_are_read() -> None:
    card = "0b1c2d3e-4f50-5617-8a9b-0c1d2e3f4a5b"
    click = discord.parse(sample("component.approve.json", card))
    assert isinstance(click, Click) and (click.action, click.card_id) == ("approve", card)
    reason = discord.parse(sample("modal.reason.json", card))
    assert isinstance(reason, ReasonGiven) and reason.reason == "not on production, please"


@pytest.mark.parametrize("body, reason", [
    (b'{"type": 4}', "interaction type 4"), (b'{"type": "2"}', "interaction type"),
    (sample("component.approve.json", "not-a-card"), "component"),
])
def test_other_interactions_are_ignored(body: bytes, reason: str) -> None:
    ignored = discord.parse(body)
    assert isinstance(ignored, Ignored) and reason in ignored.reason


@pytest.mark.parametrize("change", [
    lambda d: d.pop("token"), lambda d: d.update(token="a b"), lambda d: d.update(channel_id=12),
    lambda d: d.update(guild_id="../x"), lambda d: d.update(application_id=None), lambda d: d.update(id="x"),
    lambda d: d["member"].update(user={"id": "not-a-snowflake"}), lambda d: d.update(member=None, user=None),
])
def test_an_interaction_without_what_relay_needs_is_400(change: Any) -> None:
    data = json.loads(sample("command.agent.json"))
    change(data)
    with pytest.raises(BadRequest):
        discord.parse(json.dumps(data).encode())


def test_messages_relay_sends_mention_nobody_and_fit_discord() -> None:
    message = discord.message("@everyone " + "x" * 3000)
    assert message["allowed_mentions"] == {"parse": []} and len(message["content"]) == 2000
