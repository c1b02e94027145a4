"""The generic source: Standard Webhooks verification, body parsing, normalization."""

from __future__ import annotations

import base64
import uuid

import pytest

from relay.errors import BadRequest, BadSignature, Rejected, UnsupportedMedia
from relay.sources.generic import decode_secret, parse, receive, sign, signed_headers, verify
from tests.support import SPEC_SECRET

# The Standard Webhooks spec's own test vector.
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#: base64 "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", the key bytes behind SPEC_SECRET.
SPEC_KEY = bytes.fromhex("31f290f6bf06298aab4f08d43c3f082cf648a362da2da4b0")

SECRET = SPEC_KEY
OTHER_SECRET = b"another-secret-of-24-byte"
NOW = 1_700_000_000


def spec_headers() -> dict[str, str]:
    return {"webhook-id": SPEC_MSG_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
            "webhook-signature": SPEC_SIGNATURE}


def signed(body: bytes, *, msg_id: str = "msg_1", timestamp: int = NOW,
           secret: bytes = SECRET) -> dict[str, str]:
    return signed_headers(secret, msg_id, timestamp, body)


def with_signature(headers: dict[str, str], signature: str) -> dict[str, str]:
    return {**headers, "webhook-signature": signature}


# --- decode_secret ----------------------------------------------------------------------


def test_spec_secret_decodes_to_its_key_bytes() -> None:
    assert decode_secret(SPEC_SECRET) == SPEC_KEY


def test_secret_without_whsec_prefix_decodes_to_the_same_key() -> None:
    assert decode_secret(SPEC_SECRET.removeprefix("whsec_")) == SPEC_KEY


def test_secret_surrounding_whitespace_is_ignored() -> None:
    assert decode_secret(f"  {SPEC_SECRET}\n") == SPEC_KEY


def test_secret_base64_without_padding_is_accepted() -> None:
    key = bytes(range(25))  # 25 bytes: base64 ends in "=="
    encoded = base64.b64encode(key).decode()
    assert encoded.endswith("=")
    assert decode_secret("whsec_" + encoded.rstrip("=")) == key


@pytest.mark.parametrize("value", ["whsec_not*base64!", "whsec_MfKQ9r8G KYqrTwjUPD8ILPZIo2LaLaSw",
                                   "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaL"])  # 29 chars: no base64 is that long
def test_secret_that_is_not_base64_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_secret(value)


@pytest.mark.parametrize("length", [0, 1, 16, 23])
def test_secret_under_24_bytes_is_refused(length: int) -> None:
    value = "whsec_" + base64.b64encode(b"k" * length).decode()
    with pytest.raises(ValueError, match="24"):
        decode_secret(value)


def test_secret_of_exactly_24_bytes_is_accepted() -> None:
    assert decode_secret("whsec_" + base64.b64encode(b"k" * 24).decode()) == b"k" * 24


# --- sign / verify --------------------------------------------------------------------


def test_sign_matches_the_spec_known_answer() -> None:
    assert sign(decode_secret(SPEC_SECRET), SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_verify_accepts_the_spec_known_answer_and_returns_the_webhook_id() -> None:
    assert verify(spec_headers(), SPEC_BODY, decode_secret(SPEC_SECRET), now=SPEC_TIMESTAMP) == SPEC_MSG_ID


def test_signed_headers_carry_the_spec_signature_and_json_content_type() -> None:
    headers = signed_headers(SPEC_KEY, SPEC_MSG_ID, SPEC_TIMESTAMP, SPEC_BODY)
    assert headers == {**spec_headers(), "content-type": "application/json"}


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify(spec_headers(), SPEC_BODY, OTHER_SECRET, now=SPEC_TIMESTAMP)


def test_body_altered_after_signing_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify(spec_headers(), b'{"test": 2432232315}', SPEC_KEY, now=SPEC_TIMESTAMP)


def test_reencoded_json_with_the_same_data_is_rejected() -> None:
    # Same JSON value, different bytes: the signature covers bytes, not data.
    with pytest.raises(BadSignature):
        verify(spec_headers(), b'{"test":2432232314}', SPEC_KEY, now=SPEC_TIMESTAMP)


def test_webhook_id_is_part_of_what_is_signed() -> None:
    headers = {**spec_headers(), "webhook-id": "msg_other"}
    with pytest.raises(BadSignature):
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


def test_timestamp_is_part_of_what_is_signed() -> None:
    headers = {**spec_headers(), "webhook-timestamp": str(SPEC_TIMESTAMP + 1)}
    with pytest.raises(BadSignature):
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("signature", [
    SPEC_SIGNATURE[:-4],                # truncated
    SPEC_SIGNATURE[:-1],                # truncated, padding gone
    "v1,",                              # empty
    "v1",                               # no comma
    "x" + SPEC_SIGNATURE,               # prefix
    SPEC_SIGNATURE + "AAAA",            # trailing garbage
    SPEC_SIGNATURE + "garbage",
    "v1," + "A" * 44,                   # right length, wrong value
    "v1,!!!not-base64!!!",
    SPEC_SIGNATURE.replace("v1,", "V1,"),
    SPEC_SIGNATURE.replace("v1,", "v1 ,"),
])
def test_malformed_or_truncated_signature_is_rejected(signature: str) -> None:
    with pytest.raises(BadSignature):
        verify(with_signature(spec_headers(), signature), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("signatures", [
    f"v1,{'A' * 43}= {SPEC_SIGNATURE}",
    f"{SPEC_SIGNATURE} v1,{'A' * 43}=",
    f"v1a,abc v1,garbage {SPEC_SIGNATURE} v2,xyz",
])
def test_any_one_valid_signature_among_several_is_accepted(signatures: str) -> None:
    assert verify(with_signature(spec_headers(), signatures), SPEC_BODY, SPEC_KEY,
                  now=SPEC_TIMESTAMP) == SPEC_MSG_ID


@pytest.mark.parametrize("signatures", [
    SPEC_SIGNATURE.replace("v1,", "v1a,"),
    SPEC_SIGNATURE.replace("v1,", "v2,"),
    SPEC_SIGNATURE.replace("v1,", "v1a,") + " " + SPEC_SIGNATURE.replace("v1,", "v2,"),
])
def test_only_non_v1_signatures_are_rejected(signatures: str) -> None:
    # The digest is right, but it is labelled with a scheme relay does not implement.
    with pytest.raises(BadSignature):
        verify(with_signature(spec_headers(), signatures), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400])
def test_timestamp_outside_five_minutes_is_rejected(offset: int) -> None:
    # offset > 0: the request is stale; offset < 0: it claims to come from the future.
    with pytest.raises(BadSignature, match="webhook-timestamp") as caught:
        verify(spec_headers(), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP + offset)
    assert "window" in caught.value.reason


@pytest.mark.parametrize("offset", [-300, -1, 1, 300, 299.5, -299.5])
def test_timestamp_up_to_five_minutes_away_is_accepted(offset: float) -> None:
    assert verify(spec_headers(), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP + offset) == SPEC_MSG_ID


@pytest.mark.parametrize("timestamp", ["1614265330.5", "1.614e9", "-1614265330", "+1614265330",
                                       " 1614265330", "0x603", "soon", "١٦١٤٢٦٥٣٣٠"])
def test_non_integer_timestamp_is_rejected(timestamp: str) -> None:
    # Signed over that exact timestamp string, so only its format can be the reason.
    signature = sign(SPEC_KEY, SPEC_MSG_ID, timestamp, SPEC_BODY)  # type: ignore[arg-type]
    headers = {"webhook-id": SPEC_MSG_ID, "webhook-timestamp": timestamp, "webhook-signature": signature}
    with pytest.raises(BadSignature, match="webhook-timestamp is not an integer"):
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["9" * 20, "9" * 300, "1" + "0" * 400, "9" * 4301, "9" * 5000, "0" * 5000,
                                       "9" * 100_000], ids=lambda t: f"{len(t)}-digits")
def test_a_timestamp_of_absurd_length_is_401_not_a_crash(timestamp: str) -> None:
    signature = sign(SPEC_KEY, SPEC_MSG_ID, timestamp, SPEC_BODY)  # type: ignore[arg-type]
    headers = {"webhook-id": SPEC_MSG_ID, "webhook-timestamp": timestamp, "webhook-signature": signature}
    with pytest.raises(BadSignature, match="webhook-timestamp"):
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("signatures", ["v1," + "A" * 100_000, " ".join(["v1,AAAA"] * 5000), "v1,=" * 30_000])
def test_a_signature_header_of_absurd_length_is_401_without_decoding_it(signatures: str) -> None:
    with pytest.raises(BadSignature, match="webhook-signature"):
        verify(with_signature(spec_headers(), signatures), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_rejected_naming_it(name: str) -> None:
    headers = spec_headers()
    del headers[name]
    with pytest.raises(BadSignature) as caught:
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)
    assert name in caught.value.reason


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_empty_header_counts_as_missing(name: str) -> None:
    headers = {**spec_headers(), name: ""}
    with pytest.raises(BadSignature) as caught:
        verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)
    assert name in caught.value.reason


@pytest.mark.parametrize("spell", [str.upper, str.title, lambda s: s.replace("webhook", "WebHook")])
def test_header_names_match_in_any_case(spell) -> None:
    headers = {spell(k): v for k, v in spec_headers().items()}
    assert verify(headers, SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP) == SPEC_MSG_ID


@pytest.mark.parametrize("msg_id", ["m" * 257, "msg\n1", "msg\x001"])
def test_overlong_or_unprintable_webhook_id_is_rejected(msg_id: str) -> None:
    headers = signed(b'{"text": "hi"}', msg_id=msg_id)
    with pytest.raises(BadSignature, match="webhook-id"):
        verify(headers, b'{"text": "hi"}', SECRET, now=NOW)


def test_rejection_reason_never_contains_the_signature() -> None:
    bad = "v1," + "Q" * 43 + "="
    with pytest.raises(BadSignature) as caught:
        verify(with_signature(spec_headers(), bad), SPEC_BODY, SPEC_KEY, now=SPEC_TIMESTAMP)
    assert "Q" * 10 not in caught.value.reason


# --- parse ------------------------------------------------------------------------------


def test_text_message_is_parsed() -> None:
    request = parse(b'{"text": "deploy finished"}')
    assert (request.text, request.approval, request.route) == ("deploy finished", None, None)


def test_text_message_keeps_its_route() -> None:
    assert parse(b'{"text": "hi", "route": "ops"}').route == "ops"


def test_text_is_kept_verbatim_including_whitespace_and_unicode() -> None:
    assert parse('{"text": "  h\u00e9llo \U0001F600\\n"}'.encode()).text == "  h\u00e9llo \U0001F600\n"


@pytest.mark.parametrize("approve", [True, False])
def test_approval_without_reason_is_parsed(approve: bool) -> None:
    body = b'{"approval": {"tool_call_id": "call-1", "approve": %s}}' % str(approve).lower().encode()
    request = parse(body)
    assert request.text is None
    assert request.approval is not None
    assert request.approval["tool_call_id"] == "call-1"
    assert request.approval["approve"] is approve
    assert request.approval.get("reason") is None


@pytest.mark.parametrize("approve", [True, False])
def test_approval_with_reason_is_parsed(approve: bool) -> None:
    body = b'{"approval": {"tool_call_id": "call-1", "approve": %s, "reason": "looks safe"}, "route": "ops"}' % (
        str(approve).lower().encode())
    request = parse(body)
    assert request.approval is not None
    assert request.approval["approve"] is approve
    assert request.approval["reason"] == "looks safe"
    assert request.route == "ops"


@pytest.mark.parametrize("body", [
    b'{"text": "hi", "approval": {"tool_call_id": "c", "approve": true}}',
    b'{}',
    b'{"route": "ops"}',
])
def test_body_must_have_exactly_one_of_text_or_approval(body: bytes) -> None:
    with pytest.raises(BadRequest, match="exactly one of text or approval"):
        parse(body)


def test_unknown_top_level_field_is_rejected_naming_it() -> None:
    with pytest.raises(BadRequest, match="unknown field 'channel'"):
        parse(b'{"text": "hi", "channel": "x"}')


def test_unknown_approval_field_is_rejected_naming_it() -> None:
    with pytest.raises(BadRequest, match="unknown approval field 'approved'"):
        parse(b'{"approval": {"tool_call_id": "c", "approve": true, "approved": true}}')


@pytest.mark.parametrize("text", ['""', '"   "', '"\\n\\t"', "123", "null", "[]", '{"a": 1}'])
def test_empty_or_non_string_text_is_rejected(text: str) -> None:
    with pytest.raises(BadRequest, match="text must be a non-empty string"):
        parse(b'{"text": %s}' % text.encode())


@pytest.mark.parametrize("approve", ['"true"', "1", "0", "null", '"yes"'])
def test_non_bool_approve_is_rejected(approve: str) -> None:
    with pytest.raises(BadRequest, match="approve must be true or false"):
        parse(b'{"approval": {"tool_call_id": "c", "approve": %s}}' % approve.encode())


def test_missing_approve_is_rejected() -> None:
    with pytest.raises(BadRequest, match="approve must be true or false"):
        parse(b'{"approval": {"tool_call_id": "c"}}')


@pytest.mark.parametrize("approval", ['{"approve": true}', '{"tool_call_id": "", "approve": true}',
                                      '{"tool_call_id": " ", "approve": true}',
                                      '{"tool_call_id": 7, "approve": true}'])
def test_approval_needs_a_tool_call_id(approval: str) -> None:
    with pytest.raises(BadRequest, match="tool_call_id"):
        parse(b'{"approval": %s}' % approval.encode())


@pytest.mark.parametrize("approval", ['"yes"', "true", "[]", "null"])
def test_approval_must_be_an_object(approval: str) -> None:
    with pytest.raises(BadRequest, match="approval must be an object"):
        parse(b'{"approval": %s}' % approval.encode())


def test_non_string_approval_reason_is_rejected() -> None:
    with pytest.raises(BadRequest, match="reason must be a string"):
        parse(b'{"approval": {"tool_call_id": "c", "approve": false, "reason": 5}}')


@pytest.mark.parametrize("body", [b"[]", b'["text", "hi"]', b'"hi"', b"42", b"null", b"true"])
def test_non_object_body_is_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest, match="must be a JSON object"):
        parse(body)


@pytest.mark.parametrize("body", [b"", b"   ", b'{"text": "hi"', b"{'text': 'hi'}", b'{"text": "hi",}',
                                  b"text=hi", b'{"text": "hi"} extra'])
def test_invalid_json_is_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse(body)


@pytest.mark.parametrize("body", [b'{"text": "\xff"}', b'{"text": "caf\xe9"}', b"\xfe\xff\x00{"])
def test_invalid_utf8_is_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest, match="UTF-8"):
        parse(body)


@pytest.mark.parametrize("body", [
    b'{"text": "a", "text": "b"}',
    b'{"approval": {"tool_call_id": "c", "approve": true, "approve": false}}',
    b'{"text": "a", "route": "x", "route": "y"}',
])
def test_duplicate_keys_are_rejected(body: bytes) -> None:
    # Without the check each would silently become a valid request using the last value.
    with pytest.raises(BadRequest, match="duplicate key"):
        parse(body)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(constant: str) -> None:
    with pytest.raises(BadRequest, match=constant.lstrip("-")):
        parse(b'{"text": "hi", "route": %s}' % constant.encode())


@pytest.mark.parametrize("body", [b"[" * 100_000, b"{\"a\":" * 100_000, b'{"text": ' + b"[" * 100_000])
def test_deeply_nested_json_is_a_bad_request_not_a_recursion_error(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(body)


@pytest.mark.parametrize("route", ['""', '"   "', "5", "true", '["ops"]', '{"name": "ops"}'])
def test_route_must_be_a_non_empty_string(route: str) -> None:
    with pytest.raises(BadRequest, match="route must be a non-empty string"):
        parse(b'{"text": "hi", "route": %s}' % route.encode())


def test_bad_request_reason_quotes_a_long_unknown_field_briefly() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(b'{"text": "hi", "%s": 1}' % (b"x" * 5000))
    assert len(caught.value.reason) < 200


# --- receive ----------------------------------------------------------------------------


def test_same_webhook_id_gives_the_same_client_message_id_even_when_resigned() -> None:
    body = b'{"text": "hi"}'
    first = receive(signed(body, msg_id="msg_A", timestamp=NOW), body, SECRET, now=NOW)
    # The sender's retry: same id, new timestamp, new signature.
    again = receive(signed(body, msg_id="msg_A", timestamp=NOW + 60), body, SECRET, now=NOW + 60)
    assert first.client_message_id == again.client_message_id


def test_different_webhook_ids_give_different_client_message_ids() -> None:
    body = b'{"text": "hi"}'
    a = receive(signed(body, msg_id="msg_A"), body, SECRET, now=NOW)
    b = receive(signed(body, msg_id="msg_B"), body, SECRET, now=NOW)
    assert a.client_message_id != b.client_message_id


def test_client_message_id_does_not_depend_on_the_body() -> None:
    one, two = b'{"text": "one"}', b'{"text": "two"}'
    a = receive(signed(one, msg_id="msg_A"), one, SECRET, now=NOW)
    b = receive(signed(two, msg_id="msg_A"), two, SECRET, now=NOW)
    assert a.client_message_id == b.client_message_id


def test_text_becomes_a_user_message_whose_otid_is_the_client_message_id() -> None:
    body = b'{"text": "deploy finished", "route": "ops"}'
    inbound = receive(signed(body, msg_id="msg_A"), body, SECRET, now=NOW)
    assert str(uuid.UUID(inbound.client_message_id)) == inbound.client_message_id
    assert inbound.message == {"role": "user", "client_message_id": inbound.client_message_id,
                               "content": "deploy finished", "otid": inbound.client_message_id}
    assert (inbound.source, inbound.delivery_id, inbound.route) == ("generic", "msg_A", "ops")


def test_route_is_none_when_the_body_names_none() -> None:
    body = b'{"text": "hi"}'
    assert receive(signed(body), body, SECRET, now=NOW).route is None


def test_approval_with_reason_matches_the_contract_shape_exactly() -> None:
    body = b'{"approval": {"tool_call_id": "call-7", "approve": false, "reason": "not on prod"}}'
    inbound = receive(signed(body), body, SECRET, now=NOW)
    assert inbound.message == {
        "type": "approval",
        "approvals": [{"type": "approval", "tool_call_id": "call-7", "approve": False,
                       "reason": "not on prod"}],
    }


def test_approval_without_reason_has_no_reason_key() -> None:
    body = b'{"approval": {"tool_call_id": "call-7", "approve": true}}'
    inbound = receive(signed(body), body, SECRET, now=NOW)
    assert inbound.message == {
        "type": "approval",
        "approvals": [{"type": "approval", "tool_call_id": "call-7", "approve": True}],
    }


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_non_json_content_type_with_a_valid_signature_is_unsupported_media(content_type: str) -> None:
    body = b'{"text": "hi"}'
    headers = {**signed(body), "content-type": content_type}
    with pytest.raises(UnsupportedMedia) as caught:
        receive(headers, body, SECRET, now=NOW)
    assert caught.value.status == 415


def test_non_json_content_type_with_a_bad_signature_is_still_401() -> None:
    body = b'{"text": "hi"}'
    headers = {**signed(body, secret=OTHER_SECRET), "content-type": "text/plain"}
    with pytest.raises(BadSignature) as caught:
        receive(headers, body, SECRET, now=NOW)
    assert caught.value.status == 401


def test_bad_signature_is_reported_before_a_malformed_body() -> None:
    body = b"not json"
    with pytest.raises(BadSignature):
        receive(signed(body, secret=OTHER_SECRET), body, SECRET, now=NOW)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/cloudevents+json", " application/json ;charset=UTF-8"])
def test_json_content_types_are_accepted(content_type: str) -> None:
    body = b'{"text": "hi"}'
    headers = {**signed(body), "content-type": content_type}
    assert receive(headers, body, SECRET, now=NOW).message["content"] == "hi"


def test_content_type_header_name_matches_in_any_case() -> None:
    body = b'{"text": "hi"}'
    headers = {k: v for k, v in signed(body).items() if k != "content-type"}
    with pytest.raises(UnsupportedMedia):
        receive({**headers, "Content-Type": "text/plain"}, body, SECRET, now=NOW)


def test_absent_content_type_is_accepted() -> None:
    body = b'{"text": "hi"}'
    headers = {k: v for k, v in signed(body).items() if k != "content-type"}
    assert receive(headers, body, SECRET, now=NOW).message["content"] == "hi"


def test_signed_but_malformed_body_is_a_bad_request() -> None:
    body = b'{"text": ""}'
    with pytest.raises(BadRequest) as caught:
        receive(signed(body), body, SECRET, now=NOW)
    assert caught.value.status == 400


@pytest.mark.parametrize(("error", "status"), [(BadSignature, 401), (BadRequest, 400), (UnsupportedMedia, 415)])
def test_rejections_carry_their_http_status(error: type[Rejected], status: int) -> None:
    assert error.status == status
    instance = error("why")
    assert (instance.status, instance.reason) == (status, "why")
    assert isinstance(instance, Rejected)
