"""The Discord source: interactions over HTTP (slash commands, and the buttons and form of an
approval card) → messages and decisions.

Verification (Discord's "Security and Authorization"): `X-Signature-Ed25519` is the hex Ed25519
signature, by the application's key, of `X-Signature-Timestamp` followed by the raw body;
relay checks it with the application's public key (DISCORD_PUBLIC_KEY), and the timestamp must
be within ±300 s so a captured request cannot be replayed later.

Identities come from the signed body: a slash command's is the application and the
interaction's id (a snowflake Discord never reuses), so a re-sent request is one message.

Pure: headers, bytes, a public key and a clock in; values out. The card's components are built
here too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from relay.errors import BadRequest, BadSignature, quoted
from relay.messages import Inbound, client_message_id, user_message
from relay.sources.payloads import json_object
from relay.sources.signatures import ed25519_public, ed25519_sign, ed25519_valid

SOURCE = "discord"
TOLERANCE_SECONDS = 300
MAX_TIMESTAMP_DIGITS = 12
_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")
_SNOWFLAKE = re.compile(r"[0-9]{1,20}")
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,500}")

PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Interaction callback types.
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE, MODAL = 1, 4, 5, 7, 9
EPHEMERAL = 64
CUSTOM_ID = re.compile(r"relay:(approve|deny|reason):([0-9a-f-]{36})")
REASON_INPUT = "reason"
REASON_MAX = 1000


# -- verification ------------------------------------------------------------------------------

def sign(private_seed: bytes, timestamp: int | str, body: bytes) -> str:
    """What the application's key signs (for tests and the stand-in: relay only verifies)."""
    return ed25519_sign(private_seed, str(timestamp).encode() + body).hex()


def public_key_of(private_seed: bytes) -> bytes:
    return ed25519_public(private_seed)


def signature_headers(headers: Mapping[str, str], now: float, tolerance: int = TOLERANCE_SECONDS) -> tuple[bytes, str]:
    """The signature and timestamp headers, bounded, well-formed and fresh (not yet checked
    against a body). Raises BadSignature: the web refuses with it before reading a body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature, timestamp = lowered.get("x-signature-ed25519", ""), lowered.get("x-signature-timestamp", "")
    if not signature:
        raise BadSignature("missing X-Signature-Ed25519 header")
    if not timestamp:
        raise BadSignature("missing X-Signature-Timestamp header")
    if len(signature) != 128 or not _SIGNATURE.fullmatch(signature):
        raise BadSignature("X-Signature-Ed25519 is not 128 hex digits")
    if len(timestamp) > MAX_TIMESTAMP_DIGITS or not (timestamp.isascii() and timestamp.isdigit()):
        raise BadSignature("X-Signature-Timestamp is not an integer of at most 12 digits")
    if abs(now - int(timestamp)) > tolerance:
        raise BadSignature(f"X-Signature-Timestamp is outside the ±{tolerance} s window")
    return bytes.fromhex(signature), timestamp


def verify(headers: Mapping[str, str], body: bytes, public_key: bytes, now: float) -> None:
    """Raises BadSignature unless the body carries the application's fresh signature."""
    signature, timestamp = signature_headers(headers, now)
    if not ed25519_valid(public_key, signature, timestamp.encode() + body):
        raise BadSignature("X-Signature-Ed25519 does not match")


# -- interactions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Who:
    """Where an interaction happened and who made it."""

    application: str
    token: str  # the interaction's token: answers go through its webhook for 15 minutes
    guild: str  # "" in a DM
    channel: str
    user: str
    username: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Command:
    interaction: str  # the interaction id
    who: Who
    name: str
    text: str

    def reply(self) -> dict[str, Any]:
        return {"via": "discord", "application": self.who.application, "token": self.who.token,
                "channel": self.who.channel}

    def inbound(self) -> Inbound:
        message_id = client_message_id(SOURCE, self.who.application, "interaction", self.interaction)
        content = f"Discord /{self.name} from @{self.who.username} (<@{self.who.user}>) in <#{self.who.channel}>:\n{self.text}"
        return Inbound(SOURCE, self.interaction, message_id, user_message(content, message_id), reply=self.reply())


@dataclass(frozen=True)
class Click:
    """A button on an approval card."""

    action: Literal["approve", "deny", "reason"]
    card_id: str
    who: Who


@dataclass(frozen=True)
class ReasonGiven:
    """The deny-with-reason form was submitted."""

    card_id: str
    who: Who
    reason: str


def parse(body: bytes) -> Ping | Command | Click | ReasonGiven | Ignored:
    data = json_object(body)
    kind = data.get("type")
    if kind == PING:
        return Ping()
    if kind not in (APPLICATION_COMMAND, MESSAGE_COMPONENT, MODAL_SUBMIT):
        return Ignored(f"interaction type {quoted(kind)}")
    who = _who(data)
    payload = data.get("data") if isinstance(data.get("data"), dict) else {}
    if kind == APPLICATION_COMMAND:
        interaction = data.get("id")
        name = payload.get("name")
        if not isinstance(interaction, str) or not _SNOWFLAKE.fullmatch(interaction) or not isinstance(name, str):
            raise BadRequest("command without an id or a name")
        return Command(interaction, who, name[:32], _command_text(payload.get("options")))
    match = CUSTOM_ID.fullmatch(str(payload.get("custom_id") or ""))
    if match is None:
        return Ignored(f"component {quoted(payload.get('custom_id'))}")
    action, card_id = match.groups()
    if kind == MESSAGE_COMPONENT:
        return Click(action, card_id, who)  # type: ignore[arg-type]
    if action != "reason":
        return Ignored("a form that is not relay's reason form")
    reason = _form_value(payload.get("components"))
    if not reason.strip():
        raise BadRequest("reason form without a reason")
    return ReasonGiven(card_id, who, reason.strip()[:REASON_MAX])


def _who(data: Mapping[str, Any]) -> Who:
    member = data.get("member") if isinstance(data.get("member"), dict) else {}
    user = member.get("user") if isinstance(member.get("user"), dict) else data.get("user")
    user = user if isinstance(user, dict) else {}
    channel = data.get("channel") if isinstance(data.get("channel"), dict) else {}
    values = {"application": data.get("application_id"), "token": data.get("token"),
              "channel": data.get("channel_id") or channel.get("id"), "user": user.get("id")}
    for name, value in values.items():
        pattern = _TOKEN if name == "token" else _SNOWFLAKE
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise BadRequest(f"interaction without a valid {name}")
    guild = data.get("guild_id")
    if guild is not None and (not isinstance(guild, str) or not _SNOWFLAKE.fullmatch(guild)):
        raise BadRequest("interaction with an odd guild_id")
    roles = member.get("roles") if isinstance(member.get("roles"), list) else []
    return Who(values["application"], values["token"], guild or "", values["channel"], values["user"],
               str(user.get("username") or user.get("global_name") or "someone")[:64],
               tuple(r for r in roles[:250] if isinstance(r, str) and _SNOWFLAKE.fullmatch(r)))


def _command_text(options: Any) -> str:
    """The command's string options, in order (`/agent message: …`)."""
    if not isinstance(options, list):
        return ""
    texts = []
    for option in options[:25]:
        if isinstance(option, dict):
            if isinstance(option.get("value"), str):
                texts.append(option["value"])
            elif isinstance(option.get("options"), list):  # a subcommand
                texts.append(_command_text(option["options"]))
    return "\n".join(t for t in texts if t).strip()


def _form_value(rows: Any) -> str:
    for row in rows if isinstance(rows, list) else []:
        components = row.get("components") if isinstance(row, dict) else None
        for component in components if isinstance(components, list) else []:
            if isinstance(component, dict) and component.get("custom_id") == REASON_INPUT \
                    and isinstance(component.get("value"), str):
                return component["value"]
    return ""


# -- answers -------------------------------------------------------------------------------------

def message(content: str, *, ephemeral: bool = False) -> dict[str, Any]:
    """A message that mentions nobody, whatever the text says."""
    data: dict[str, Any] = {"content": content[:2000], "allowed_mentions": {"parse": []}}
    if ephemeral:
        data["flags"] = EPHEMERAL
    return data


def respond(kind: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, **({"data": data} if data is not None else {})}


def reason_form(card_id: str, tool_name: str) -> dict[str, Any]:
    return respond(MODAL, {"custom_id": f"relay:reason:{card_id}", "title": f"Deny {tool_name}"[:45], "components": [
        {"type": 1, "components": [{"type": 4, "custom_id": REASON_INPUT, "label": "Reason (the agent is told)",
                                    "style": 2, "min_length": 1, "max_length": REASON_MAX, "required": True}]}]})


def card_components(card_id: str) -> list[dict[str, Any]]:
    return [{"type": 1, "components": [
        {"type": 2, "style": 3, "label": "Approve", "custom_id": f"relay:approve:{card_id}"},
        {"type": 2, "style": 4, "label": "Deny", "custom_id": f"relay:deny:{card_id}"},
        {"type": 2, "style": 2, "label": "Deny with reason…", "custom_id": f"relay:reason:{card_id}"}]}]


def tool_text(agent_id: str, tool_name: str, arguments: dict[str, Any], route: str, tool_call_id: str) -> str:
    shown = json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True)
    if len(shown) > 1200:
        shown = shown[:1200] + f"\n… ({len(shown) - 1200} more characters)"
    shown = shown.replace("```", "`\u200b``")
    return (f"Agent `{agent_id}` wants to run `{tool_name}` with:\n```json\n{shown}\n```\n"
            f"-# route `{route}` · tool call `{tool_call_id}`")
