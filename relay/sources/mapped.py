"""The mapped source: a JSON webhook from any sender → one message, as a route maps it
(`[routes.NAME.mapped]`, served at POST /hooks/mapped/NAME).

Verification, as the route chooses:
- "standard": Standard Webhooks v1 (HMAC-SHA256 over `{id}.{timestamp}.{body}`, a `whsec_`
  secret, timestamp within ±5 minutes), as the generic webhook;
- "standard-ed25519": Standard Webhooks v1a: `v1a,<base64 Ed25519 signature>` of the same
  content by the sender's key, checked with its public key (`whpk_…`);
- "hmac": one header carrying the HMAC of the raw body with a named algorithm (sha256, …),
  after a prefix ("v1=", "sha256="), hex or base64, possibly several separated by "," or " "
  (PagerDuty sends one per secret during a rotation). No timestamp is signed there, so the
  replay defence is the identity.

Identity: JSON paths into the signed body (PagerDuty's `event.id`, Sentry's action and issue
id), or the signed `webhook-id` of the Standard Webhooks schemes; never an unsigned header.
The text is the route's template over the payload (template.py); a path that is missing
renders empty and is reported, for the door to log.

Pure: headers, bytes, the route's rule and a clock in; an Inbound out.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from relay.door_rules import HmacScheme, MappedRule
from relay.errors import BadRequest, BadSignature, UnsupportedMedia, quoted
from relay.messages import Inbound, client_message_id, user_message
from relay.sources import generic
from relay.sources.payloads import json_object
from relay.sources.signatures import ed25519_valid
from relay.template import lookup

SOURCE = "mapped"
MAX_SIGNATURE_HEADER = 2048
MAX_IDENTITY = 256


def signature_headers(rule: MappedRule, headers: Mapping[str, str], now: float) -> None:
    """The headers a rule verifies with, present and bounded (not yet checked against a body).
    Raises BadSignature: the web refuses with it before reading a body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if rule.verify in ("standard", "standard-ed25519"):
        generic.standard_headers(lowered, now)
        return
    assert rule.hmac is not None
    value = lowered.get(rule.hmac.header, "")
    if not value:
        raise BadSignature(f"missing {rule.hmac.header} header")
    if len(value) > MAX_SIGNATURE_HEADER or not value.isprintable():
        raise BadSignature(f"{rule.hmac.header} is not a signature")


def verify(rule: MappedRule, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Raises BadSignature unless the body is signed as the rule says; returns the signed
    webhook-id of a Standard Webhooks request (None for an HMAC header)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if rule.verify == "standard":
        return generic.verify(lowered, body, rule.key, now)
    if rule.verify == "standard-ed25519":
        return _verify_v1a(lowered, body, rule.key, now)
    assert rule.hmac is not None
    _verify_hmac(rule.hmac, lowered, body, rule.key)
    return None


def sign_hmac(scheme: HmacScheme, secret: bytes, body: bytes) -> str:
    """The header value a sender using `scheme` sends (tests; relay only verifies)."""
    digest = hmac.new(secret, body, scheme.algorithm).digest()
    encoded = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    return scheme.prefix + encoded


def _verify_v1a(lowered: Mapping[str, str], body: bytes, public_key: bytes, now: float) -> str:
    msg_id, timestamp, signatures = generic.standard_headers(lowered, now)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    matched = False
    for signature in generic.signatures_of(signatures, "v1a"):
        matched |= ed25519_valid(public_key, signature, signed)
    if not matched:
        raise BadSignature("no valid v1a signature")
    return msg_id


def _verify_hmac(scheme: HmacScheme, lowered: Mapping[str, str], body: bytes, secret: bytes) -> None:
    value = lowered.get(scheme.header, "")
    expected = sign_hmac(scheme, secret, body)
    candidates = value.split(scheme.separator) if scheme.separator else [value]
    matched = False
    for candidate in candidates[:16]:
        given = candidate.strip()
        if scheme.encoding == "hex":
            given = given.lower()
        # Compare every candidate (no early exit) so timing does not reveal which matched.
        matched |= hmac.compare_digest(expected.encode(), given.encode("ascii", "replace"))
    if not matched:
        raise BadSignature(f"{scheme.header} does not match")


@dataclass(frozen=True)
class Mapped:
    inbound: Inbound
    missing: list[str]  # template paths the payload lacked (rendered empty)


def receive(route: str, rule: MappedRule, headers: Mapping[str, str], body: bytes, now: float) -> Mapped:
    """Verify, decode and map one request for `route`. Raises Rejected."""
    webhook_id = verify(rule, headers, body, now)
    declared = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    media = declared.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMedia("content-type must be application/json")
    data = json_object(body)
    identity = [webhook_id or ""] if rule.identity == ("webhook-id",) else [_identity(data, p) for p in rule.identity]
    text, missing = rule.template.render(data)
    if not text.strip():
        raise BadRequest("the route's text template rendered nothing for this payload")
    message_id = client_message_id(SOURCE, route, *identity)
    delivery = ":".join(identity)[:MAX_IDENTITY]
    return Mapped(Inbound(SOURCE, delivery, message_id, user_message(text, message_id), route=route), missing)


def _identity(data: Any, path: str) -> str:
    found, value = lookup(data, tuple(path.split(".")))
    if not found or isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise BadRequest(f"the payload has no identity at {quoted(path)} (a string or a number)")
    text = str(value)
    if len(text) > MAX_IDENTITY or not text.isprintable():
        raise BadRequest(f"the identity at {quoted(path)} is not a short printable value")
    return text
