"""The Slack source: slash commands, Events API callbacks, and approval cards.

Verification (https://api.slack.com/authentication/verifying-requests-from-slack): HMAC-SHA256
of `v0:{X-Slack-Request-Timestamp}:{raw body}` with the signing secret, sent as `v0=<hex>` in
X-Slack-Signature; the timestamp must be within ±300 s.

Identities (the client_message_id of what each request becomes):
- a slash command: workspace + trigger_id;
- a mention or DM: workspace + channel + ts, so a retry (X-Slack-Retry-Num) and the same
  message delivered as both `app_mention` and `message` are one message;
- an approval decision: the card, so only the first click on a card becomes a message.

Pure: bytes, dicts and a clock in; values out. The Block Kit for cards is built here too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

from relay.errors import BadRequest, BadSignature, quoted
from relay.context import FileRef, slack_files
from relay.messages import Inbound, approval_decision, approval_message, client_message_id, user_message
from relay.routing import Destination
from relay.sources.payloads import form_fields, json_object

SOURCE = "slack"
TOLERANCE_SECONDS = 300
MAX_TIMESTAMP_DIGITS = 12
RESPONSE_URL_MAX = 2048
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")

ACTION_APPROVE = "relay_approve"
ACTION_DENY = "relay_deny"
ACTION_DENY_WITH_REASON = "relay_deny_with_reason"
REASON_VIEW = "relay_deny_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
REASON_MAX = 1000

SECTION_TEXT_MAX = 3000  # Block Kit's limit for a section's text
ARGUMENTS_SHOWN_MAX = 2500
#: Message subtypes that are still a person writing; everything else (edits, deletions, joins,
#: bot messages) is ignored so relay never loops on its own or other bots' output.
PERSON_SUBTYPES = {None, "file_share", "thread_broadcast"}


# -- verification ------------------------------------------------------------------------------

def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, b"v0:" + str(timestamp).encode() + b":" + body, hashlib.sha256)
    return "v0=" + digest.hexdigest()


def signed_headers(secret: bytes, timestamp: int, body: bytes, content_type: str) -> dict[str, str]:
    return {
        "x-slack-request-timestamp": str(timestamp),
        "x-slack-signature": sign(secret, timestamp, body),
        "content-type": content_type,
    }


def signature_headers(headers: Mapping[str, str], now: float, tolerance: int = TOLERANCE_SECONDS) -> tuple[str, str]:
    """(timestamp, signature): present, bounded, well-formed and fresh, not yet checked against
    a body. Raises BadSignature: the web refuses with it before reading a body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get("x-slack-request-timestamp", "")
    signature = lowered.get("x-slack-signature", "")
    if not timestamp:
        raise BadSignature("missing X-Slack-Request-Timestamp header")
    if not signature:
        raise BadSignature("missing X-Slack-Signature header")
    # Bounded before int(): a few hundred digits overflow a float, 4,300 exceed Python's int parsing.
    if len(timestamp) > MAX_TIMESTAMP_DIGITS or not (timestamp.isascii() and timestamp.isdigit()):
        raise BadSignature("X-Slack-Request-Timestamp is not an integer of at most 12 digits")
    if abs(now - int(timestamp)) > tolerance:
        raise BadSignature(f"X-Slack-Request-Timestamp is outside the ±{tolerance} s window")
    if len(signature) != 67 or not _SIGNATURE.fullmatch(signature):
        raise BadSignature("X-Slack-Signature is not v0=<64 hex digits>")
    return timestamp, signature


def verify(headers: Mapping[str, str], body: bytes, secret: bytes, now: float,
           tolerance: int = TOLERANCE_SECONDS) -> None:
    """Raises BadSignature unless the request carries a fresh, valid Slack signature."""
    timestamp, signature = signature_headers(headers, now, tolerance)
    expected = sign(secret, int(timestamp), body)
    if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
        raise BadSignature("X-Slack-Signature does not match")


# -- slash commands ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    team: str
    channel: str
    user: str
    user_name: str
    command: str
    text: str
    response_url: str
    trigger_id: str

    def inbound(self, answer_on_response_url: bool = True) -> Inbound:
        """The message; its reply goes to the response_url unless that is not Slack's to post to."""
        message_id = client_message_id(SOURCE, self.team, "command", self.trigger_id)
        content = f"Slack {self.command} from <@{self.user}|{self.user_name}> in <#{self.channel}>:\n{self.text}"
        reply = {"via": "response_url", "url": self.response_url} if answer_on_response_url else None
        return Inbound(SOURCE, f"command:{self.trigger_id}", message_id, user_message(content, message_id),
                       reply=reply)


def parse_command(body: bytes) -> Command:
    """A slash command as the HTTP door receives it: a form body."""
    return command_from(form_fields(body))


def command_from(fields: Mapping[str, Any]) -> Command:
    """A slash command's fields, already decoded (a form's, or a Socket Mode payload's)."""
    missing = [k for k in ("team_id", "channel_id", "user_id", "command", "response_url", "trigger_id")
               if not fields.get(k) or not isinstance(fields[k], str)]
    if missing:
        raise BadRequest(f"slash command without {missing[0]}")
    user_name, text = fields.get("user_name", ""), fields.get("text", "")
    if not isinstance(user_name, str) or not isinstance(text, str):
        raise BadRequest("slash command whose user_name or text is not text")
    return Command(team=fields["team_id"], channel=fields["channel_id"], user=fields["user_id"],
                   user_name=user_name, command=fields["command"], text=text.strip(),
                   response_url=_response_url(fields["response_url"]), trigger_id=fields["trigger_id"])


def _response_url(value: Any) -> str:
    """A response_url as Slack sends one: a bounded URL string, nothing else (relay posts to it)."""
    if not isinstance(value, str) or not 0 < len(value) <= RESPONSE_URL_MAX or not _is_url_text(value):
        raise BadRequest("response_url is not a URL")
    return value


def _is_url_text(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value and "\\" not in value


def response_url_allowed(url: str, allowed_prefix: str) -> bool:
    """Whether relay may POST to this response_url: it starts with the allowed prefix
    (SLACK_HOOKS_URL, Slack's hooks origin; a stand-in in tests) and names the same origin.
    A signed payload still carries whatever URL its sender put in it."""
    if not (_is_url_text(url) and url.startswith(allowed_prefix)):
        return False
    got, allowed = urlsplit(url), urlsplit(allowed_prefix)
    return (got.scheme, got.netloc) == (allowed.scheme, allowed.netloc) and got.username is None


# -- Events API ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """url_verification: echo the challenge."""

    value: str


@dataclass(frozen=True)
class Ignored:
    """Acknowledged with 200 and dropped (Slack would otherwise retry)."""

    reason: str


@dataclass(frozen=True)
class Mention:
    """A person addressing the bot: an `app_mention` in a channel or a message in a DM."""

    team: str
    channel: str
    user: str
    text: str
    ts: str
    event_id: str
    kind: Literal["mention", "dm"]
    thread_ts: str | None = None  # the thread it was written in, if any (where answers go)
    files: tuple[FileRef, ...] = ()

    def inbound(self) -> Inbound:
        message_id = client_message_id(SOURCE, self.team, self.channel, self.ts)
        where = "a direct message" if self.kind == "dm" else f"<#{self.channel}>"
        content = f"Slack message from <@{self.user}> in {where}:\n{self.text}"
        reply = {"via": "reaction", "channel": self.channel, "ts": self.ts, "team": self.team, "user": self.user}
        context: dict[str, Any] = {}
        if self.thread_ts and self.thread_ts != self.ts:
            reply["thread_ts"] = self.thread_ts
            context["slack_thread"] = {"team": self.team, "channel": self.channel, "thread_ts": self.thread_ts,
                                       "ts": self.ts}
        if self.files:
            context["files"] = [f.to_dict() for f in self.files]
        return Inbound(SOURCE, self.event_id, message_id, user_message(content, message_id), reply=reply,
                       context=context or None)


def parse_event(body: bytes) -> Challenge | Ignored | Mention:
    """An Events API callback as the HTTP door receives it: a JSON body."""
    return event_from(json_object(body))


def event_from(data: Mapping[str, Any]) -> Challenge | Ignored | Mention:
    """An Events API callback, already decoded (an HTTP body's, or a Socket Mode payload's)."""
    kind = data.get("type")
    if kind == "url_verification":
        challenge = data.get("challenge")
        if not isinstance(challenge, str):
            raise BadRequest("url_verification without a challenge")
        return Challenge(challenge)
    if kind != "event_callback":
        return Ignored(f"callback type {quoted(kind)}")
    event = data.get("event")
    if not isinstance(event, dict):
        raise BadRequest("event_callback without an event")
    event_type, subtype = event.get("type"), event.get("subtype")
    if not isinstance(subtype, (str, type(None))):
        return Ignored("a malformed message subtype")
    if event_type not in ("app_mention", "message"):
        return Ignored(f"event type {quoted(event_type)}")
    if event_type == "message" and event.get("channel_type") != "im":
        return Ignored("a channel message without a mention")
    if event.get("bot_id") or event.get("bot_profile") or subtype == "bot_message":
        return Ignored("a bot's message")
    if subtype not in PERSON_SUBTYPES:
        return Ignored(f"message subtype {quoted(subtype)}")
    team = data.get("team_id") or event.get("team")
    fields = {"team": team, "channel": event.get("channel"), "user": event.get("user"), "ts": event.get("ts")}
    missing = [k for k, v in fields.items() if not isinstance(v, str) or not v]
    if missing:
        raise BadRequest(f"event without {missing[0]}")
    if event.get("user") in _bot_users(data):
        return Ignored("the bot's own message")
    text = str(event.get("text") or "")
    leading = re.match(r"\s*<@([A-Z0-9]+)(\|[^>]*)?>\s*", text)
    if leading and leading.group(1) in _bot_users(data):  # "@relay do x" → "do x"; other people stay
        text = text[leading.end():]
    files = tuple(slack_files(event.get("files")))
    if not text.strip() and not files:
        return Ignored("an empty message")
    thread_ts = event.get("thread_ts")
    return Mention(team=fields["team"], channel=fields["channel"], user=fields["user"], text=text.strip(),
                   ts=fields["ts"], event_id=str(data.get("event_id") or ""),
                   kind="mention" if event_type == "app_mention" else "dm",
                   thread_ts=thread_ts if isinstance(thread_ts, str) and thread_ts else None, files=files)


def _bot_users(data: Mapping[str, Any]) -> set[str]:
    authorizations = data.get("authorizations")
    if not isinstance(authorizations, list):
        return set()
    return {a["user_id"] for a in authorizations
            if isinstance(a, dict) and a.get("is_bot") and isinstance(a.get("user_id"), str)}


# -- approval cards ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    approve: bool
    user: str
    user_name: str
    at: float
    reason: str | None = None


@dataclass(frozen=True)
class Card:
    """A tool call waiting for a person's decision, as posted in Slack."""

    card_id: str
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    route: str
    destination: Destination
    channel: str
    thread_ts: str | None = None
    ts: str | None = None  # the posted message, once posted
    decision: Decision | None = None
    request_id: str | None = None  # the agent's control request, for cards relay asked by itself
    closed: str | None = None  # why the request ended without (or despite) a decision here

    def decided(self, decision: Decision) -> Card:
        return replace(self, decision=decision)

    def closed_with(self, note: str) -> Card:
        return replace(self, closed=note)

    def decision_inbound(self, decision: Decision) -> Inbound:
        """The approval message this card's (first) decision becomes."""
        message_id = client_message_id(SOURCE, "card", self.card_id)
        message = approval_message([approval_decision(self.tool_call_id, decision.approve, decision.reason)])
        return Inbound(SOURCE, f"card:{self.card_id}", message_id, message, route=self.route,
                       reply={"via": "card", "channel": self.channel, "ts": self.ts})

    def to_json(self) -> str:
        data = asdict(self)
        data["destination"] = self.destination.to_dict()
        for name in ("request_id", "closed"):  # absent when unset, as in cards stored before them
            if data[name] is None:
                del data[name]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Card:
        data = json.loads(text)
        decision = data.pop("decision")
        return cls(**{**data, "destination": Destination.from_dict(data["destination"]),
                      "decision": Decision(**decision) if decision else None})


def card_id_for(destination: Destination, tool_call_id: str) -> str:
    """One card per tool call and agent: asking twice shows the same card."""
    return client_message_id(SOURCE + "-card", destination.agent_id, tool_call_id)


def card_message(card: Card) -> dict[str, Any]:
    """chat.postMessage arguments (without channel) for a pending card."""
    buttons = [
        _button("Approve", ACTION_APPROVE, card.card_id, "primary"),
        _button("Deny", ACTION_DENY, card.card_id, "danger"),
        _button("Deny with reason…", ACTION_DENY_WITH_REASON, card.card_id),
    ]
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "Approval needed"}},
        *_tool_blocks(card),
        {"type": "actions", "block_id": "relay_decision", "elements": buttons},
    ]
    return {"text": f"Approval needed: {escape(card.tool_name)}", "blocks": blocks}


def decided_message(card: Card) -> dict[str, Any]:
    """The card after its decision: who decided what, and when; no live buttons."""
    decision = card.decision
    assert decision is not None
    verdict = "Approved" if decision.approve else "Denied"
    mark = ":white_check_mark:" if decision.approve else ":no_entry:"
    when = f"<!date^{int(decision.at)}^{{date_short_pretty}} at {{time}}|{int(decision.at)}>"
    line = f"{mark} *{verdict}* by <@{decision.user}> {when}"
    if decision.reason:
        line += f"\n>{escape(decision.reason)}"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Tool call {verdict.lower()}"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit(line)}},
        *_closed_blocks(card),
        *_tool_blocks(card),
    ]
    return {"text": f"{verdict}: {escape(card.tool_name)}", "blocks": blocks}


def closed_message(card: Card) -> dict[str, Any]:
    """The card once its request has ended: the note (and any decision); no live buttons."""
    if card.decision is not None:
        return decided_message(card)
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": "No longer pending"}},
        *_closed_blocks(card),
        *_tool_blocks(card),
    ]
    return {"text": f"No longer pending: {escape(card.tool_name)}", "blocks": blocks}


def _closed_blocks(card: Card) -> list[dict[str, Any]]:
    if not card.closed:
        return []
    return [{"type": "section", "text": {"type": "mrkdwn", "text": _fit(f":information_source: {escape(card.closed)}")}}]


def reason_modal(card: Card) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": REASON_VIEW,
        "private_metadata": card.card_id,
        "title": {"type": "plain_text", "text": "Deny tool call"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn",
                                         "text": f"Deny `{escape(card.tool_name)}`. The agent is told your reason."}},
            {"type": "input", "block_id": REASON_BLOCK, "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": REASON_INPUT, "multiline": True,
                         "max_length": REASON_MAX}},
        ],
    }


def _tool_blocks(card: Card) -> list[dict[str, Any]]:
    shown = json.dumps(card.arguments, indent=2, ensure_ascii=False, sort_keys=True)
    if len(shown) > ARGUMENTS_SHOWN_MAX:
        shown = shown[:ARGUMENTS_SHOWN_MAX] + f"\n… ({len(shown) - ARGUMENTS_SHOWN_MAX} more characters)"
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit(
            f"Agent `{escape(card.destination.agent_id)}` wants to run `{escape(card.tool_name)}` with:")}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _fit(f"```{escape(shown)}```")}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _fit(
            f"route `{escape(card.route)}` · tool call `{escape(card.tool_call_id)}`")}]},
    ]


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    button = {"type": "button", "action_id": action_id, "value": value,
              "text": {"type": "plain_text", "text": text}}
    if style:
        button["style"] = style
    return button


def _fit(text: str) -> str:
    return text if len(text) <= SECTION_TEXT_MAX else text[: SECTION_TEXT_MAX - 1] + "…"


def escape(text: str) -> str:
    """Slack mrkdwn control characters, escaped as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- interactions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Click:
    """A button on a card: approve, deny, or open the deny-with-reason modal."""

    action: Literal["approve", "deny", "deny_with_reason"]
    card_id: str
    team: str
    user: str
    user_name: str
    response_url: str
    trigger_id: str


@dataclass(frozen=True)
class ReasonGiven:
    """The deny-with-reason modal was submitted."""

    card_id: str
    team: str
    user: str
    user_name: str
    reason: str


_ACTIONS = {ACTION_APPROVE: "approve", ACTION_DENY: "deny", ACTION_DENY_WITH_REASON: "deny_with_reason"}


def parse_interaction(body: bytes) -> Click | ReasonGiven | Ignored:
    """An interaction as the HTTP door receives it: JSON in a form's `payload` field."""
    payload = form_fields(body).get("payload")
    if not payload:
        raise BadRequest("interaction without a payload field")
    return interaction_from(json_object(payload))


def interaction_from(data: Mapping[str, Any]) -> Click | ReasonGiven | Ignored:
    """An interaction payload, already decoded (an HTTP form's, or a Socket Mode payload's)."""
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    team = data["team"].get("id") if isinstance(data.get("team"), dict) else None
    team = team or user.get("team_id")
    if not isinstance(team, str) or not team or not isinstance(user.get("id"), str) or not user["id"]:
        raise BadRequest("interaction without a team or user id")
    user_name = str(user.get("username") or user.get("name") or "")
    if data.get("type") == "block_actions":
        actions = data.get("actions")
        action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
        if not isinstance(action.get("action_id"), str) or action["action_id"] not in _ACTIONS:
            return Ignored(f"action {quoted(action.get('action_id'))}")
        if not isinstance(action.get("value"), str) or not data.get("response_url"):
            raise BadRequest("card action without a value or response_url")
        return Click(action=_ACTIONS[action["action_id"]], card_id=action["value"], team=team,  # type: ignore[arg-type]
                     user=user["id"], user_name=user_name, response_url=_response_url(data["response_url"]),
                     trigger_id=str(data.get("trigger_id") or ""))
    if data.get("type") == "view_submission":
        view = data.get("view") if isinstance(data.get("view"), dict) else {}
        if view.get("callback_id") != REASON_VIEW:
            return Ignored(f"view {quoted(view.get('callback_id'))}")
        try:
            reason = view["state"]["values"][REASON_BLOCK][REASON_INPUT]["value"]
        except (KeyError, TypeError):
            raise BadRequest("reason modal without a reason") from None
        if not isinstance(reason, str) or not reason.strip() or not view.get("private_metadata"):
            raise BadRequest("reason modal without a reason")
        return ReasonGiven(card_id=str(view["private_metadata"]), team=team, user=user["id"],
                           user_name=user_name, reason=reason.strip()[:REASON_MAX])
    return Ignored(f"interaction type {quoted(data.get('type'))}")


# -- Socket Mode ---------------------------------------------------------------------------------
# https://api.slack.com/apis/socket-mode: over the app's WebSocket, Slack sends `hello` and
# `disconnect` (the client library acts on those) and envelopes carrying what the HTTP doors get
# in a request body. Each envelope is acknowledged by sending back its envelope_id (with a
# response payload where `accepts_response_payload`); one not acknowledged is sent again.

ENVELOPE_ID_MAX = 256
SOCKET_PAYLOADS = ("events_api", "slash_commands", "interactive")


@dataclass(frozen=True)
class SocketEnvelope:
    envelope_id: str
    type: str
    payload: Any  # a JSON object for the types relay reads; checked by `from_socket`
    accepts_response_payload: bool = False
    retry_attempt: int = 0


def socket_envelope(message: Mapping[str, Any]) -> SocketEnvelope | None:
    """A decoded Socket Mode message → its envelope; None when it carries none (hello,
    disconnect). BadRequest when its envelope_id cannot be acknowledged (none, or not a
    bounded printable string)."""
    if "envelope_id" not in message:
        return None
    envelope_id, kind = message.get("envelope_id"), message.get("type")
    if not isinstance(envelope_id, str) or not 0 < len(envelope_id) <= ENVELOPE_ID_MAX \
            or not (envelope_id.isascii() and envelope_id.isprintable()):
        raise BadRequest("envelope without a usable envelope_id")
    retry = message.get("retry_attempt")
    return SocketEnvelope(envelope_id, kind if isinstance(kind, str) else "", message.get("payload"),
                          accepts_response_payload=message.get("accepts_response_payload") is True,
                          retry_attempt=retry if isinstance(retry, int) and not isinstance(retry, bool) else 0)


def from_socket(envelope: SocketEnvelope) -> Command | Challenge | Ignored | Mention | Click | ReasonGiven:
    """What an envelope carries, read by the same parser as its HTTP twin's body."""
    if envelope.type not in SOCKET_PAYLOADS:
        return Ignored(f"envelope type {quoted(envelope.type)}")
    if not isinstance(envelope.payload, dict):
        raise BadRequest(f"{envelope.type} envelope without a payload object")
    if envelope.type == "slash_commands":
        return command_from(envelope.payload)
    if envelope.type == "events_api":
        return event_from(envelope.payload)
    return interaction_from(envelope.payload)
