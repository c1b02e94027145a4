"""The generic source: a Standard Webhooks signed JSON request → one Letta message.

Verification follows https://www.standardwebhooks.com: HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}` with the base64 secret after `whsec_`, any of the
space-separated `v1,<base64>` signatures may match, timestamp within ±5 minutes.

Body, one of:
    {"text": "…", "route": "name"?}
    {"approval": {"tool_call_id": "…", "approve": true|false, "reason": "…"?}, "route": "name"?}

Pure: headers, bytes, a secret and a clock in; an `Inbound` or a `Rejected` out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from relay.errors import BadRequest, BadSignature, UnsupportedMedia, quoted
from relay.sources.payloads import json_object
from relay.messages import (
    Inbound,
    approval_decision,
    approval_message,
    client_message_id,
    user_message,
)

SOURCE = "generic"
SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300
MIN_SECRET_BYTES = 24  # the spec's minimum for symmetric secrets
MAX_ID_LENGTH = 256
MAX_TIMESTAMP_DIGITS = 12  # seconds since 1970 have 10 digits until the year 2286
MAX_SIGNATURES_LENGTH = 2048  # several `v1,<base64>` during a key rotation, never more


def decode_secret(value: str) -> bytes:
    """`whsec_<base64>` → key bytes. Raises ValueError with a reason fit for the operator."""
    raw = value.strip()
    if raw.startswith(SECRET_PREFIX):
        raw = raw[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be whsec_ followed by base64") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"decodes to {len(key)} bytes; Standard Webhooks needs at least 24")
    return key


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one request."""
    digest = _digest(secret, msg_id, str(timestamp), body)
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: bytes,
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Check the signature; return the webhook-id. Raises BadSignature."""
    return _verify({k.lower(): v for k, v in headers.items()}, body, secret, now, tolerance)


def signature_headers(headers: Mapping[str, str], now: float, tolerance: int = TOLERANCE_SECONDS) -> None:
    """The three headers present, bounded, well-formed and fresh (not yet checked against a body).
    Raises BadSignature: the web refuses with it before reading a body."""
    standard_headers({k.lower(): v for k, v in headers.items()}, now, tolerance)


def standard_headers(lowered: Mapping[str, str], now: float,
                     tolerance: int = TOLERANCE_SECONDS) -> tuple[str, str, str]:
    """Standard Webhooks' webhook-id, webhook-timestamp and webhook-signature (lower-cased header
    names), each present and bounded, the timestamp fresh. Raises BadSignature."""
    msg_id = lowered.get("webhook-id", "")
    timestamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    for name, value in (("webhook-id", msg_id), ("webhook-timestamp", timestamp),
                        ("webhook-signature", signatures)):
        if not value:
            raise BadSignature(f"missing {name} header")
    if len(msg_id) > MAX_ID_LENGTH or not msg_id.isprintable():
        raise BadSignature("webhook-id is not a printable id of at most 256 characters")
    # Bounded before int(): a few hundred digits overflow a float, 4,300 exceed Python's int parsing.
    if len(timestamp) > MAX_TIMESTAMP_DIGITS or not (timestamp.isascii() and timestamp.isdigit()):
        raise BadSignature("webhook-timestamp is not an integer of at most 12 digits")
    if abs(now - int(timestamp)) > tolerance:
        raise BadSignature(f"webhook-timestamp is outside the ±{tolerance} s window")
    if len(signatures) > MAX_SIGNATURES_LENGTH:
        raise BadSignature(f"webhook-signature is longer than {MAX_SIGNATURES_LENGTH} characters")
    return msg_id, timestamp, signatures


def signatures_of(signatures: str, version: str) -> list[bytes]:
    """The decoded signatures of one scheme ("v1", "v1a") in a `webhook-signature` header's
    space-separated list; candidates that are not base64 are skipped."""
    found = []
    for candidate in signatures.split(" "):
        scheme, _, encoded = candidate.partition(",")
        if scheme != version:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _verify(lowered: Mapping[str, str], body: bytes, secret: bytes, now: float, tolerance: int) -> str:
    msg_id, timestamp, signatures = standard_headers(lowered, now, tolerance)
    expected = _digest(secret, msg_id, timestamp, body)
    matched = False
    for given in signatures_of(signatures, "v1"):
        # Compare every candidate (no early exit) so timing does not reveal which matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise BadSignature("no valid v1 signature")
    return msg_id


@dataclass(frozen=True)
class GenericRequest:
    text: str | None
    approval: dict[str, Any] | None
    route: str | None


def parse(body: bytes) -> GenericRequest:
    """The JSON body → a GenericRequest. Raises BadRequest naming the problem."""
    data = json_object(body, strict=True)
    unknown = sorted(set(data) - {"text", "approval", "route"})
    if unknown:
        raise BadRequest(f"unknown field {quoted(unknown[0])}; expected text or approval, and route")
    route = data.get("route")
    if route is not None and (not isinstance(route, str) or not route.strip()):
        raise BadRequest("route must be a non-empty string")
    has_text, has_approval = "text" in data, "approval" in data
    if has_text == has_approval:
        raise BadRequest("body must have exactly one of text or approval")
    if has_text:
        text = data["text"]
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("text must be a non-empty string")
        return GenericRequest(text=text, approval=None, route=route)
    return GenericRequest(text=None, approval=_parse_approval(data["approval"]), route=route)


def receive(headers: Mapping[str, str], body: bytes, secret: bytes, now: float) -> Inbound:
    """Verify, parse and normalize one generic webhook into an unrouted message."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = _verify(lowered, body, secret, now, TOLERANCE_SECONDS)
    _require_json(lowered)
    request = parse(body)
    message_id = client_message_id(SOURCE, msg_id)
    if request.text is not None:
        message = user_message(request.text, message_id)
    else:
        approval = request.approval or {}
        message = approval_message([approval_decision(**approval)])
    return Inbound(SOURCE, msg_id, message_id, message, request.route)


def _require_json(lowered: Mapping[str, str]) -> None:
    """A declared content type must be JSON; an absent one is accepted (the body decides)."""
    declared = lowered.get("content-type", "")
    media = declared.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia("content-type must be application/json")


def _digest(secret: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(secret, signed, hashlib.sha256).digest()


def _parse_approval(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest("approval must be an object")
    unknown = sorted(set(value) - {"tool_call_id", "approve", "reason"})
    if unknown:
        raise BadRequest(f"unknown approval field {quoted(unknown[0])}")
    tool_call_id = value.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id.strip():
        raise BadRequest("approval.tool_call_id must be a non-empty string")
    if not isinstance(value.get("approve"), bool):
        raise BadRequest("approval.approve must be true or false")
    reason = value.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("approval.reason must be a string")
    return {"tool_call_id": tool_call_id, "approve": value["approve"], "reason": reason}
