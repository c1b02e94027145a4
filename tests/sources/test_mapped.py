"""The mapped source: each verification scheme with known answers (Standard Webhooks' own v1
and v1a vectors), identities from the signed body, and the shipped PagerDuty and Sentry presets
over their recorded samples."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from relay.door_config import route_parts
from relay.door_rules import HmacScheme, MappedRule
from relay.errors import BadRequest, BadSignature, ConfigError, UnsupportedMedia
from relay.sources import mapped
from relay.sources.signatures import ed25519_public
from relay.template import parse

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "samples" / "mapped"
# Standard Webhooks' asymmetric signing vector (libraries/go/webhook_asymmetric_test.go).
V1A_SEED = base64.b64decode("VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=")
V1A_ID, V1A_TIMESTAMP, V1A_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
V1A_SIGNATURE = "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
# The Standard Webhooks specification's symmetric example (also pinned for the generic door).
V1_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
V1_ID, V1_TIMESTAMP = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
V1_BODY = b'{"test": 2432232314}'
V1_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def rule(verify: str, **extra: Any) -> MappedRule:
    return MappedRule(verify, parse("got {{ test }}"), extra.pop("identity", ("webhook-id",)), **extra)


def v1a_headers(signature: str = V1A_SIGNATURE, msg_id: str = V1A_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(V1A_TIMESTAMP), "webhook-signature": signature}


def test_standard_webhooks_v1a_vector_verifies_with_the_public_key() -> None:
    key = ed25519_public(V1A_SEED)
    assert mapped.verify(rule("standard-ed25519", key=key), v1a_headers(), V1A_BODY, V1A_TIMESTAMP) == V1A_ID


@pytest.mark.parametrize("case", ["other key", "body", "id", "scheme v1", "truncated", "not base64", "stale"])
def test_v1a_refuses_anything_but_the_senders_fresh_signature(case: str) -> None:
    key = ed25519_public(V1A_SEED)
    headers, body, now = v1a_headers(), V1A_BODY, V1A_TIMESTAMP
    if case == "other key":
        key = ed25519_public(b"\x05" * 32)
    elif case == "body":
        body = b'{"test": 2432232315}'
    elif case == "id":
        headers = v1a_headers(msg_id="msg_other")
    elif case == "scheme v1":
        headers = v1a_headers(V1A_SIGNATURE.replace("v1a,", "v1,"))
    elif case == "truncated":
        headers = v1a_headers(V1A_SIGNATURE[:-6])
    elif case == "not base64":
        headers = v1a_headers("v1a,@@@@")
    elif case == "stale":
        now += 301
    with pytest.raises(BadSignature):
        mapped.verify(rule("standard-ed25519", key=key), headers, body, now)


def test_one_valid_v1a_among_several_is_enough() -> None:
    key = ed25519_public(V1A_SEED)
    headers = v1a_headers(f"v1,AAAA v1a,{base64.b64encode(bytes(64)).decode()} {V1A_SIGNATURE}")
    assert mapped.verify(rule("standard-ed25519", key=key), headers, V1A_BODY, V1A_TIMESTAMP) == V1A_ID


def test_standard_v1_is_the_specifications_scheme() -> None:
    from relay.sources.generic import decode_secret

    headers = {"webhook-id": V1_ID, "webhook-timestamp": str(V1_TIMESTAMP), "webhook-signature": V1_SIGNATURE}
    assert mapped.verify(rule("standard", key=decode_secret(V1_SECRET)), headers, V1_BODY, V1_TIMESTAMP) == V1_ID


@pytest.mark.parametrize("scheme, secret, body, value", [
    # RFC 4231 test case 2 (HMAC-SHA256 and HMAC-SHA512 of "what do ya want for nothing?" with "Jefe").
    (HmacScheme("x-sig"), b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (HmacScheme("x-sig", algorithm="sha512", prefix="sha512="), b"Jefe", b"what do ya want for nothing?",
     "sha512=164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    (HmacScheme("x-sig", encoding="base64"), b"Jefe", b"what do ya want for nothing?",
     "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="),
])
def test_hmac_headers_with_named_algorithm_prefix_and_encoding(scheme: HmacScheme, secret: bytes, body: bytes,
                                                               value: str) -> None:
    assert mapped.sign_hmac(scheme, secret, body) == value
    mapped.verify(MappedRule("hmac", parse("x"), ("a",), key=secret, hmac=scheme), {"X-Sig": value}, body, 0)
    with pytest.raises(BadSignature):
        mapped.verify(MappedRule("hmac", parse("x"), ("a",), key=secret, hmac=scheme), {"X-Sig": value[:-2] + "00"},
                      body, 0)


@pytest.mark.parametrize("value", ["", "x" * 5000, "v1=\x00"])
def test_an_absent_or_absurd_signature_header_is_refused_before_the_body(value: str) -> None:
    scheme = HmacScheme("x-sig")
    with pytest.raises(BadSignature):
        mapped.signature_headers(MappedRule("hmac", parse("x"), ("a",), key=b"k", hmac=scheme), {"x-sig": value}, 0)


# -- the shipped presets -----------------------------------------------------------------------------

def preset(name: str) -> str:
    text = (ROOT / "deploy" / "routes.example.toml").read_text()
    block = re.search(rf"# --- preset: {name} ---\n(.*?)# --- end ---", text, re.DOTALL)
    assert block is not None, f"no {name} preset"
    return "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.group(1).splitlines())


def preset_rule(name: str, environ: dict[str, str]) -> MappedRule:
    import tomllib

    spec = tomllib.loads(preset(name))["routes"][name]
    return route_parts(spec, f"[routes.{name}]", environ)["mapped"]


def test_the_pagerduty_preset_maps_a_recorded_incident() -> None:
    secret = "pd-subscription-secret"
    rule_ = preset_rule("pagerduty", {"PAGERDUTY_WEBHOOK_SECRET": secret})
    body = (SAMPLES / "pagerduty.incident.triggered.json").read_bytes()
    assert rule_.hmac is not None
    signature = mapped.sign_hmac(rule_.hmac, secret.encode(), body)
    headers = {"X-PagerDuty-Signature": f"v1=00ff, {signature}", "Content-Type": "application/json"}  # a rotation
    result = mapped.receive("pagerduty", rule_, headers, body, 0)
    assert result.inbound.message["content"] == (
        "PagerDuty incident.triggered: A little bump in the road (service API Service, urgency high, P1) — "
        "https://acme.pagerduty.com/incidents/PGR0VU2")
    assert result.missing == [] and result.inbound.delivery_id == "01DEN3Y8UL8QZ7TRPMWDWVYTBE"


def test_the_sentry_preset_maps_a_recorded_issue() -> None:
    secret = "sentry-client-secret"
    rule_ = preset_rule("sentry", {"SENTRY_CLIENT_SECRET": secret})
    body = (SAMPLES / "sentry.issue.created.json").read_bytes()
    assert rule_.hmac is not None
    headers = {"Sentry-Hook-Signature": mapped.sign_hmac(rule_.hmac, secret.encode(), body),
               "Sentry-Hook-Resource": "issue"}
    result = mapped.receive("sentry", rule_, headers, body, 0)
    assert result.inbound.message["content"] == (
        "Sentry issue created in billing: ZeroDivisionError: division by zero (error, at billing.invoice in "
        "compute_total) — https://sentry.io/organizations/example/issues/1170820242/")
    assert result.inbound.delivery_id == "created:1170820242"


def test_identity_is_the_signed_paths_so_a_replay_is_the_same_message() -> None:
    secret = "pd-subscription-secret"
    rule_ = preset_rule("pagerduty", {"PAGERDUTY_WEBHOOK_SECRET": secret})
    data = json.loads((SAMPLES / "pagerduty.incident.triggered.json").read_text())
    ids = set()
    for event_id in ("01DEN3Y8UL8QZ7TRPMWDWVYTBE", "01DEN3Y8UL8QZ7TRPMWDWVYTBE", "01DEN3Y8UL8QZ7TRPMWDWVYTBF"):
        data["event"]["id"] = event_id
        body = json.dumps(data).encode()
        assert rule_.hmac is not None
        headers = {"x-pagerduty-signature": mapped.sign_hmac(rule_.hmac, secret.encode(), body),
                   "x-webhook-id": event_id + "-unsigned"}
        ids.add(mapped.receive("pagerduty", rule_, headers, body, 0).inbound.client_message_id)
    assert len(ids) == 2


def test_a_missing_template_path_renders_empty_and_is_reported() -> None:
    secret = "sentry-client-secret"
    rule_ = preset_rule("sentry", {"SENTRY_CLIENT_SECRET": secret})
    data = json.loads((SAMPLES / "sentry.issue.created.json").read_text())
    del data["data"]["issue"]["culprit"]
    body = json.dumps(data).encode()
    assert rule_.hmac is not None
    result = mapped.receive("sentry", rule_, {"sentry-hook-signature": mapped.sign_hmac(rule_.hmac, secret.encode(),
                                                                                         body)}, body, 0)
    assert "(error, at )" in result.inbound.message["content"] and result.missing == ["data.issue.culprit"]


@pytest.mark.parametrize("change, error", [
    (lambda d: d["event"].pop("id"), BadRequest), (lambda d: d["event"].update(id={"x": 1}), BadRequest),
    (lambda d: d["event"].update(id=True), BadRequest), (lambda d: d["event"].update(id="x" * 300), BadRequest),
])
def test_a_payload_without_its_identity_is_400(change: Any, error: type[Exception]) -> None:
    secret = "pd"
    rule_ = preset_rule("pagerduty", {"PAGERDUTY_WEBHOOK_SECRET": secret})
    data = json.loads((SAMPLES / "pagerduty.incident.triggered.json").read_text())
    change(data)
    body = json.dumps(data).encode()
    assert rule_.hmac is not None
    with pytest.raises(error):
        mapped.receive("pagerduty", rule_, {"x-pagerduty-signature": mapped.sign_hmac(rule_.hmac, b"pd", body)}, body, 0)


def test_a_declared_content_type_must_be_json() -> None:
    rule_ = preset_rule("sentry", {"SENTRY_CLIENT_SECRET": "s"})
    body = b"{}"
    assert rule_.hmac is not None
    with pytest.raises(UnsupportedMedia):
        mapped.receive("sentry", rule_, {"sentry-hook-signature": mapped.sign_hmac(rule_.hmac, b"s", body),
                                         "content-type": "text/plain"}, body, 0)


@pytest.mark.parametrize("table, message", [
    ({"verify": "md5", "text": "x", "identity": "a"}, "verify must be"),
    ({"verify": "hmac", "text": "x", "identity": "a"}, "needs secret_env"),
    ({"verify": "hmac", "secret_env": "S", "text": "x", "identity": "a"}, "header must"),
    ({"verify": "hmac", "secret_env": "S", "header": "X-S", "algorithm": "md5", "text": "x", "identity": "a"},
     "algorithm"),
    ({"verify": "hmac", "secret_env": "S", "header": "X-S", "text": "x", "identity": "webhook-id"}, "only signed"),
    ({"verify": "standard", "secret_env": "S", "text": "x", "identity": "webhook-id"}, "whsec_"),
    ({"verify": "standard-ed25519", "public_key_env": "S", "text": "x", "identity": "webhook-id"}, "32 bytes"),
    ({"verify": "standard", "secret_env": "W", "text": "{{ a b }}", "identity": "webhook-id"}, "not a path"),
    ({"verify": "standard", "secret_env": "W", "text": "x", "identity": "webhook-id", "header": "X"}, "not used"),
    ({"verify": "hmac", "secret_env": "NOPE", "header": "X-S", "text": "x", "identity": "a"}, "not set"),
])
def test_a_mapped_table_that_cannot_work_is_a_config_error(table: dict[str, Any], message: str) -> None:
    environ = {"S": "short", "W": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
    with pytest.raises(ConfigError, match=message):
        route_parts({"mapped": table}, "[routes.x]", environ)


def test_a_payload_the_template_renders_to_nothing_is_400() -> None:
    rule_ = MappedRule("hmac", parse("{{ missing.path }}"), ("id",), key=b"k", hmac=HmacScheme("x-sig"))
    body = b'{"id": "1"}'
    with pytest.raises(BadRequest, match="rendered nothing"):
        mapped.receive("r", rule_, {"x-sig": mapped.sign_hmac(HmacScheme("x-sig"), b"k", body)}, body, 0)
