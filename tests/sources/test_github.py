"""The GitHub source: webhook signatures, deliveries, comment payloads, mentions, decisions, admission."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import pytest

from relay.errors import BadRequest, BadSignature
from relay.messages import kind_of
from relay.routing import GitHubRule
from relay.sources.github import (OWN_MARKER, Comment, Delivery, Ignored, Ping, claimed, parse, sign, signature_of,
                                  valid_repository, verify)
from relay.web.github import admitted

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "github"

# GitHub's published test vector, from "Validating webhook deliveries" → "Testing the webhook
# payload validation" (https://docs.github.com/webhooks/using-webhooks/validating-webhook-deliveries;
# source: github/docs content/webhooks/using-webhooks/validating-webhook-deliveries.md).
KNOWN_SECRET = b"It's a Secret to Everybody"
KNOWN_BODY = b"Hello, World!"
KNOWN_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
HEX = KNOWN_SIGNATURE.removeprefix("sha256=")
OTHER_SECRET = b"It's a Secret to Somebody"

CREATED = "issue_comment.created.payload.json"
EDITED = "issue_comment.edited.payload.json"
DELETED = "issue_comment.deleted.payload.json"
ON_PULL_REQUEST = "issue_comment.created.on-pull-request.derived.json"
BY_BOT = "issue_comment.created.by-bot.derived.json"
REVIEW = "pull_request_review_comment.created.payload.json"
PING = "ping.payload.json"

REPOSITORY = "Codertocat/Hello-World"
DELIVERY_ID = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
HOOK_ID = "292430182"
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
TOOL_CALL = "toolu_01AbCdEfGhIjKlMnOpQrStUv"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def sample_json(name: str) -> dict[str, Any]:
    return json.loads(sample(name))


def changed(name: str, change: Callable[[dict[str, Any]], Any]) -> bytes:
    """A recorded sample with one change applied, as JSON body bytes."""
    data = copy.deepcopy(sample_json(name))
    change(data)
    return json.dumps(data).encode()


def form(body: bytes) -> bytes:
    """The same payload as GitHub posts it with content type application/x-www-form-urlencoded."""
    return urlencode({"payload": body.decode()}).encode()


def delivery(event: str = "issue_comment", delivery_id: str = DELIVERY_ID) -> Delivery:
    return Delivery(event, delivery_id)


def event_of(name: str) -> str:
    return "ping" if name == PING else "pull_request_review_comment" if name == REVIEW else "issue_comment"


def parsed(name: str, body: bytes | None = None, headers: dict[str, str] = JSON) -> Ping | Ignored | Comment:
    return parse(headers, sample(name) if body is None else body, delivery(event_of(name)))


def comment(name: str = CREATED, **fields: Any) -> Comment:
    """A recorded comment, parsed, with some fields replaced."""
    found = parsed(name)
    assert isinstance(found, Comment)
    return replace(found, **fields)


def sha1_header(secret: bytes, body: bytes) -> str:
    return "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest()


# --- sign / verify ----------------------------------------------------------------------


def test_sign_matches_githubs_known_answer() -> None:
    assert sign(KNOWN_SECRET, KNOWN_BODY) == KNOWN_SIGNATURE


def test_verify_accepts_githubs_known_answer() -> None:
    assert verify({"X-Hub-Signature-256": KNOWN_SIGNATURE}, KNOWN_BODY, KNOWN_SECRET) is None


def test_a_recorded_body_signed_with_sign_verifies() -> None:
    body = sample(CREATED)
    verify({"X-Hub-Signature-256": sign(KNOWN_SECRET, body)}, body, KNOWN_SECRET)


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature-256": ""}, {"X-Other": KNOWN_SIGNATURE}],
                         ids=["absent", "empty", "other-header"])
def test_missing_signature_is_rejected_naming_the_header(headers: dict[str, str]) -> None:
    with pytest.raises(BadSignature) as caught:
        verify(headers, KNOWN_BODY, KNOWN_SECRET)
    assert "X-Hub-Signature-256" in caught.value.reason
    assert caught.value.status == 401


@pytest.mark.parametrize("headers", [
    {"X-Hub-Signature": sha1_header(KNOWN_SECRET, KNOWN_BODY)},
    {"X-Hub-Signature": sha1_header(KNOWN_SECRET, KNOWN_BODY), "X-Hub-Signature-256": ""},
], ids=["sha1-only", "sha1-and-empty-sha256"])
def test_a_correct_sha1_signature_alone_is_rejected_naming_sha1(headers: dict[str, str]) -> None:
    with pytest.raises(BadSignature) as caught:
        verify(headers, KNOWN_BODY, KNOWN_SECRET)
    assert "SHA-1" in caught.value.reason
    assert "X-Hub-Signature-256" in caught.value.reason


def test_a_correct_sha1_signature_does_not_rescue_a_wrong_sha256_one() -> None:
    headers = {"X-Hub-Signature": sha1_header(KNOWN_SECRET, KNOWN_BODY),
               "X-Hub-Signature-256": "sha256=" + "0" * 64}
    with pytest.raises(BadSignature):
        verify(headers, KNOWN_BODY, KNOWN_SECRET)


def test_a_correct_sha256_signature_is_accepted_next_to_a_sha1_one() -> None:
    headers = {"X-Hub-Signature": "sha1=" + "0" * 40, "X-Hub-Signature-256": KNOWN_SIGNATURE}
    verify(headers, KNOWN_BODY, KNOWN_SECRET)


@pytest.mark.parametrize("signature", [
    HEX,                                                                  # no prefix
    sha1_header(KNOWN_SECRET, KNOWN_BODY),                                # sha1= in the SHA-256 header
    "sha1=" + HEX,                                                        # right digest, wrong prefix
    "sha256:" + HEX,
    "sha256=" + HEX[:-1],                                                 # 63 digits
    "sha256=" + HEX[:-2],
    "sha256=" + HEX + "0",                                                # 65 digits
    "sha256=" + HEX + HEX,
    "sha256=",
    "sha256=" + HEX[:-1] + "g",                                           # not hex
    "sha256=" + "z" * 64,
    "sha256=0x" + HEX[:-2],
    "sha256=" + HEX[:-1] + "\u00e9",                                      # non-ASCII
    "sha256=" + "\uff10" * 64,                                            # full-width digits
    "sha256=" + "0" * 64,                                                 # right shape, wrong value
    f"sha256={'0' * 64},{KNOWN_SIGNATURE}",                               # GitHub sends exactly one
], ids=["no-prefix", "sha1-header-value", "sha1-prefix", "colon", "63-digits", "62-digits", "65-digits",
        "128-digits", "empty-digest", "g", "z", "0x", "e-acute", "full-width", "zeros", "two-signatures"])
def test_signature_of_the_wrong_scheme_or_shape_is_rejected(signature: str) -> None:
    with pytest.raises(BadSignature):
        verify({"X-Hub-Signature-256": signature}, KNOWN_BODY, KNOWN_SECRET)


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(BadSignature):
        verify({"X-Hub-Signature-256": KNOWN_SIGNATURE}, KNOWN_BODY, OTHER_SECRET)


@pytest.mark.parametrize("body", [b"Hello, World", b"Hello, World!\n", b"hello, World!", b" Hello, World!", b""])
def test_body_altered_after_signing_is_rejected(body: bytes) -> None:
    with pytest.raises(BadSignature):
        verify({"X-Hub-Signature-256": KNOWN_SIGNATURE}, body, KNOWN_SECRET)


def test_a_recorded_body_altered_by_one_byte_is_rejected() -> None:
    body = sample(CREATED)
    signature = sign(KNOWN_SECRET, body)
    with pytest.raises(BadSignature):
        verify({"X-Hub-Signature-256": signature}, body.replace(b'"OWNER"', b'"OWNEr"', 1), KNOWN_SECRET)


@pytest.mark.parametrize("digest", [HEX.upper(), HEX[:32].upper() + HEX[32:]], ids=["upper", "mixed"])
def test_uppercase_hex_is_accepted(digest: str) -> None:
    assert digest != HEX
    verify({"X-Hub-Signature-256": "sha256=" + digest}, KNOWN_BODY, KNOWN_SECRET)


@pytest.mark.parametrize("name", ["X-Hub-Signature-256", "x-hub-signature-256", "X-HUB-SIGNATURE-256",
                                  "x-Hub-signature-256"])
def test_signature_header_name_matches_in_any_case(name: str) -> None:
    verify({name: KNOWN_SIGNATURE}, KNOWN_BODY, KNOWN_SECRET)


@pytest.mark.parametrize("name", ["X-Hub-Signature", "x-hub-signature", "X-HUB-SIGNATURE"])
def test_sha1_header_name_is_recognised_in_any_case(name: str) -> None:
    with pytest.raises(BadSignature, match="SHA-1"):
        verify({name: sha1_header(KNOWN_SECRET, KNOWN_BODY)}, KNOWN_BODY, KNOWN_SECRET)


def test_rejection_reason_never_contains_the_signature() -> None:
    bad = "sha256=" + "ab" * 32
    for signature, secret in ((bad, KNOWN_SECRET), (KNOWN_SIGNATURE, OTHER_SECRET)):
        with pytest.raises(BadSignature) as caught:
            verify({"X-Hub-Signature-256": signature}, KNOWN_BODY, secret)
        assert "abab" not in caught.value.reason
        assert HEX[:12] not in caught.value.reason


# --- Delivery ---------------------------------------------------------------------------


def test_delivery_is_read_from_the_headers() -> None:
    headers = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": DELIVERY_ID, "X-GitHub-Hook-ID": HOOK_ID}
    assert Delivery.from_headers(headers) == Delivery("issue_comment", DELIVERY_ID)


@pytest.mark.parametrize("spell", [str.lower, str.upper, lambda s: s.replace("GitHub", "Github")])
def test_delivery_header_names_match_in_any_case(spell: Callable[[str], str]) -> None:
    headers = {"X-GitHub-Event": "ping", "X-GitHub-Delivery": DELIVERY_ID, "X-GitHub-Hook-ID": HOOK_ID}
    found = Delivery.from_headers({spell(k): v for k, v in headers.items()})
    assert found == Delivery("ping", DELIVERY_ID)


@pytest.mark.parametrize("name", ["X-GitHub-Event", "X-GitHub-Delivery"])
@pytest.mark.parametrize("value", [None, ""], ids=["absent", "empty"])
def test_missing_event_or_delivery_header_is_a_bad_request_naming_it(name: str, value: str | None) -> None:
    headers: dict[str, str] = {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": DELIVERY_ID}
    if value is None:
        del headers[name]
    else:
        headers[name] = value
    with pytest.raises(BadRequest) as caught:
        Delivery.from_headers(headers)
    assert name in caught.value.reason
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["x" * 101, "72d3162e\ncc78", "72d3162e\x00", "9" * 5000],
                         ids=["too-long", "newline", "nul", "5000-digits"])
def test_malformed_delivery_header_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest, match="X-GitHub-Delivery"):
        Delivery.from_headers({"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": value})


@pytest.mark.parametrize("value", ["x" * 65, "issue comment", "Issue_Comment", "issue_comment\n", "ping;x", "\u00e9"])
def test_an_event_header_that_is_not_an_event_name_is_a_bad_request(value: str) -> None:
    with pytest.raises(BadRequest, match="X-GitHub-Event"):
        Delivery.from_headers({"X-GitHub-Event": value, "X-GitHub-Delivery": DELIVERY_ID})


@pytest.mark.parametrize("value", ["sha256=" + "0" * 64 * 1000, "sha256=" + "9" * 5000, " " * 71, "x" * 100_000])
def test_a_signature_header_of_absurd_length_is_refused_before_any_body(value: str) -> None:
    with pytest.raises(BadSignature):
        signature_of({"X-Hub-Signature-256": value})


# --- identity: from the signed body, never the headers ------------------------------------


def test_the_message_id_comes_from_the_signed_comment_not_the_delivery_headers() -> None:
    # The same comment under another delivery GUID (a replay, or a second hook) is the same message.
    found = comment(body="@agent hi")
    one = found.message(delivery()).client_message_id
    other = found.message(delivery(delivery_id=str(uuid.uuid4()))).client_message_id
    assert one == other == found.message_id()
    assert str(uuid.UUID(one)) == one


def test_the_message_id_follows_the_comment_id_action_and_repository() -> None:
    found = comment(body="@agent hi")
    ids = {found.message_id(), replace(found, comment_id=found.comment_id + 1).message_id(),
           replace(found, action="deleted").message_id(), replace(found, repository="other/repo").message_id(),
           replace(found, event="pull_request_review_comment").message_id()}
    assert len(ids) == 5
    assert replace(found, repository=REPOSITORY.upper()).message_id() == found.message_id()


def test_an_edit_is_a_new_message_only_with_a_new_updated_at() -> None:
    edit = comment(EDITED, body="@agent hi")
    assert edit.updated_at == "2019-05-15T15:20:22Z"
    assert replace(edit, body="@agent replayed").message_id() == edit.message_id()
    assert replace(edit, updated_at="2019-05-15T15:21:00Z").message_id() != edit.message_id()
    # updated_at is not part of a created comment's identity (a created comment has one too)
    created = comment(body="@agent hi")
    assert replace(created, updated_at="2030-01-01T00:00:00Z").message_id() == created.message_id()


def test_decision_ids_follow_the_comment_and_tool_call_whatever_the_action_or_edit() -> None:
    created = comment(body="/approve toolu_a")
    edit = replace(created, action="edited", updated_at="2030-01-01T00:00:00Z")
    assert created.decision_id("toolu_a") == edit.decision_id("toolu_a") != created.decision_id("toolu_b")
    assert created.decision_id("toolu_a") != created.message_id()
    assert replace(created, comment_id=1).decision_id("toolu_a") != created.decision_id("toolu_a")


@pytest.mark.parametrize(("name", "sender"), [(CREATED, "Codertocat"), (EDITED, "Codertocat"), (REVIEW, "Codertocat")])
def test_the_sender_is_read_and_the_recorded_comments_are_by_their_author(name: str, sender: str) -> None:
    found = comment(name)
    assert found.sender == sender and found.by_its_author


@pytest.mark.parametrize("sender", [{"login": "mallory"}, {}, None, "Codertocat", {"login": 7},
                                    {"login": "Codertocat\n"}])
def test_a_comment_is_by_its_author_only_when_the_sender_is_the_author(sender: Any) -> None:
    found = parsed(EDITED, changed(EDITED, put(sender, "sender")))
    assert isinstance(found, Comment) and not found.by_its_author
    assert parsed(EDITED, changed(EDITED, put({"login": "CODERTOCAT"}, "sender"))).by_its_author  # type: ignore[union-attr]


# --- claimed: what picks the secret -----------------------------------------------------------


def test_claimed_names_the_repository_and_its_owner() -> None:
    assert claimed(sample_json(CREATED)) == (REPOSITORY, "Codertocat")


def test_claimed_falls_back_to_the_organization_of_an_organization_hooks_ping() -> None:
    assert claimed({"zen": "z", "organization": {"login": "acme"}}) == (None, "acme")
    assert claimed({"zen": "z"}) == (None, None)


@pytest.mark.parametrize("data", [{"repository": {"full_name": "../x"}}, {"repository": {"full_name": 7}},
                                  {"repository": "acme/x"}, {"repository": {"full_name": "a/b/c"}},
                                  {"organization": {"login": "../.."}}])
def test_claimed_ignores_names_that_are_not_github_names(data: dict[str, Any]) -> None:
    assert claimed(data) == (None, None)


@pytest.mark.parametrize("name", ["acme/x", "a-b/c_d.e", "A/B", "octocat/.github", "x/..."])
def test_owner_slash_name_is_a_repository(name: str) -> None:
    assert valid_repository(name)


@pytest.mark.parametrize("name", ["acme", "acme/", "/x", "a/b/c", "acme/..", "../x", "acme/.", ".", "..", "acme/x y",
                                  "acme/x?y", "acme/%2e%2e", "acme/\u00e9", "acme/" + "x" * 101, ""])
def test_anything_else_is_not_a_repository(name: str) -> None:
    assert not valid_repository(name)


# --- parse: recorded payloads -----------------------------------------------------------


def test_recorded_issue_comment_is_parsed() -> None:
    assert parsed(CREATED) == Comment(
        event="issue_comment", action="created", repository=REPOSITORY, number=1,
        title="Spelling error in the README file", kind="issue", author="Codertocat", author_type="User",
        association="OWNER", body="You are totally right! I'll get this fixed right away.",
        url="https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400", comment_id=492700400,
        by_app=False, path=None, line=None, sender="Codertocat", updated_at="2019-05-15T15:20:21Z")


def test_recorded_comment_on_a_pull_request_is_a_pull_request_comment() -> None:
    found = parsed(ON_PULL_REQUEST)
    assert isinstance(found, Comment)
    assert (found.event, found.kind, found.number, found.repository) == (
        "issue_comment", "pull request", 1, REPOSITORY)
    assert (found.path, found.line) == (None, None)
    assert parsed(CREATED) == replace(found, kind="issue")


@pytest.mark.parametrize(("name", "action"), [(EDITED, "edited"), (DELETED, "deleted")])
def test_recorded_edited_and_deleted_comments_carry_their_action_and_last_body(name: str, action: str) -> None:
    found = parsed(name)
    assert isinstance(found, Comment)
    assert found.action == action
    assert found.body == "You are totally right! I'll get this fixed today."
    assert (found.repository, found.number, found.comment_id, found.kind) == (REPOSITORY, 1, 492700400, "issue")


def test_recorded_review_comment_is_parsed_with_path_and_line() -> None:
    assert parsed(REVIEW) == Comment(
        event="pull_request_review_comment", action="created", repository=REPOSITORY, number=2,
        title="Update the README with new information.", kind="pull request", author="Codertocat",
        author_type="User", association="OWNER", body="Maybe you should use more emojji on this line.",
        url="https://github.com/Codertocat/Hello-World/pull/2#discussion_r284312630", comment_id=284312630,
        by_app=False, path="README.md", line=265, sender="Codertocat", updated_at="2019-05-15T15:20:38Z")


def test_recorded_bot_comment_has_author_type_bot() -> None:
    found = parsed(BY_BOT)
    assert isinstance(found, Comment)
    assert (found.author, found.author_type) == ("Codertocat", "Bot")


def test_recorded_ping_is_a_ping() -> None:
    assert parsed(PING) == Ping(zen="Anything added dilutes everything else.")


@pytest.mark.parametrize("event", ["issues", "push", "pull_request", "pull_request_review", "star",
                                   "discussion_comment", "commit_comment"])
def test_other_events_are_ignored_naming_the_event(event: str) -> None:
    found = parse(JSON, sample(CREATED), delivery(event))
    assert isinstance(found, Ignored)
    assert event in found.reason


def test_an_overlong_event_name_is_shortened_in_the_reason() -> None:
    found = parse(JSON, sample(CREATED), delivery("x" * 500))
    assert isinstance(found, Ignored) and len(found.reason) < 100


@pytest.mark.parametrize("name", [CREATED, EDITED, DELETED, ON_PULL_REQUEST, BY_BOT, REVIEW, PING])
def test_a_form_body_gives_the_same_result_as_json(name: str) -> None:
    assert parsed(name, form(sample(name)), FORM) == parsed(name)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          " application/json ; charset=UTF-8"])
def test_json_content_type_parameters_and_case_are_ignored(content_type: str) -> None:
    assert parsed(CREATED, headers={"Content-Type": content_type}) == parsed(CREATED)


def test_form_content_type_with_a_charset_is_a_form() -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    assert parsed(CREATED, form(sample(CREATED)), headers) == parsed(CREATED)


def test_a_body_without_content_type_is_read_as_json() -> None:
    assert parsed(CREATED, headers={}) == parsed(CREATED, headers=JSON)


# --- parse: bodies that are refused -----------------------------------------------------

ALL_EVENTS = ["issue_comment", "pull_request_review_comment", "ping", "push"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data",
                                          "application/jsonp", "", "text/json"])
def test_an_unsupported_content_type_is_a_bad_request(content_type: str) -> None:
    with pytest.raises(BadRequest, match="content-type"):
        parse({"Content-Type": content_type}, sample(CREATED), delivery())


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"{'action': 'created'}", b'{"action": "created",}',
                                  b'{"zen": "x"} trailing', b"NaN-"])
@pytest.mark.parametrize("event", ALL_EVENTS)
def test_invalid_json_is_a_bad_request_for_every_event(body: bytes, event: str) -> None:
    with pytest.raises(BadRequest):
        parse(JSON, body, delivery(event))
    with pytest.raises(BadRequest):
        parse(FORM, urlencode({"payload": body.decode()}).encode(), delivery(event))


@pytest.mark.parametrize("body", [b"[]", b"[{}]", b'"issue_comment"', b"1", b"null", b"true"])
@pytest.mark.parametrize("event", ALL_EVENTS)
def test_a_json_value_that_is_not_an_object_is_a_bad_request(body: bytes, event: str) -> None:
    with pytest.raises(BadRequest, match="object"):
        parse(JSON, body, delivery(event))
    with pytest.raises(BadRequest, match="object"):
        parse(FORM, form(body), delivery(event))


@pytest.mark.parametrize("body", [b'{"zen": "\xff"}', b"\xff\xfe{}", b'{"zen": "caf\xe9"}', b"payload=\xff"])
@pytest.mark.parametrize("headers", [JSON, FORM], ids=["json", "form"])
def test_invalid_utf8_is_a_bad_request(body: bytes, headers: dict[str, str]) -> None:
    with pytest.raises(BadRequest):
        parse(headers, body, delivery("ping"))


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                                  b'{"comment": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"],
                         ids=["arrays", "objects", "inside-a-payload"])
@pytest.mark.parametrize("event", ALL_EVENTS)
def test_a_deeply_nested_body_is_a_bad_request(body: bytes, event: str) -> None:
    with pytest.raises(BadRequest):
        parse(JSON, body, delivery(event))


def test_a_deeply_nested_form_payload_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        parse(FORM, form(b"[" * 100_000), delivery())


@pytest.mark.parametrize("body", [b"", b"payload", b"token=x", b"payload=%7B%7D&&x", b"payload=",
                                  urlencode([(f"f{i}", "x") for i in range(20)] + [("payload", "{}")]).encode()],
                         ids=["empty", "no-equals", "no-payload", "empty-field", "empty-payload",
                              "too-many-fields"])
def test_a_form_that_is_not_a_github_form_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse(FORM, body, delivery())


def drop(*path: str) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]
    return change


def put(value: Any, *path: str) -> Callable[[dict[str, Any]], Any]:
    def change(data: dict[str, Any]) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return change


MISSING_ISSUE_COMMENT_FIELDS = [
    drop("comment"), drop("issue"), drop("repository"), drop("action"),
    drop("comment", "user"), drop("comment", "id"), drop("comment", "user", "login"),
    drop("issue", "number"), drop("repository", "full_name"),
    put(None, "comment"), put([], "comment"), put("492700400", "comment"),
    put(None, "repository"), put("Codertocat/Hello-World", "repository"),
    put(None, "comment", "user"), put("Codertocat", "comment", "user"),
    put(None, "comment", "id"), put("abc", "comment", "id"), put({"id": 1}, "comment", "id"),
    put(None, "issue", "number"), put("one", "issue", "number"), put("9" * 5000, "issue", "number"),
    pytest.param(put(None, "issue"), id="issue-null"),
    pytest.param(put("Spelling error", "issue"), id="issue-string"),
    pytest.param(put([], "issue"), id="issue-list"),
]


@pytest.mark.parametrize("change", MISSING_ISSUE_COMMENT_FIELDS)
def test_an_issue_comment_missing_fields_relay_needs_is_a_bad_request(
        change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(JSON, changed(CREATED, change), delivery("issue_comment"))
    assert "issue_comment" in caught.value.reason


@pytest.mark.parametrize("change", [
    drop("pull_request"), drop("pull_request", "number"), drop("comment"), drop("comment", "id"),
    put(None, "pull_request"), put("2", "pull_request"), put([], "pull_request"), put(None, "comment", "user"),
])
def test_a_review_comment_missing_fields_relay_needs_is_a_bad_request(
        change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(JSON, changed(REVIEW, change), delivery("pull_request_review_comment"))
    assert "pull_request_review_comment" in caught.value.reason


@pytest.mark.parametrize("change", [put(None, "repository", "full_name"), put(None, "comment", "user", "login")],
                         ids=["full_name", "login"])
def test_a_null_repository_name_or_author_login_is_a_bad_request(change: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(BadRequest):
        parse(JSON, changed(CREATED, change), delivery("issue_comment"))


def test_optional_comment_fields_fall_back_to_safe_defaults() -> None:
    def strip(data: dict[str, Any]) -> None:
        for key in ("author_association", "body", "html_url", "performed_via_github_app"):
            del data["comment"][key]
        del data["comment"]["user"]["type"]
        del data["issue"]["title"]

    found = parse(JSON, changed(CREATED, strip), delivery())
    assert isinstance(found, Comment)
    assert (found.association, found.body, found.url, found.by_app, found.author_type, found.title) == (
        "NONE", "", "", False, "User", "")


# --- Comment: mentions ------------------------------------------------------------------


@pytest.mark.parametrize("body", ["@agent please triage", "@Agent please", "hi @agent.", "@AGENT", "(@agent)",
                                  "please help, @agent!", "first line\n@agent second line", "`@agent`",
                                  "@agent\r\n", "cc @octocat @agent", "@agent: look", "@agent/@octocat"])
def test_mentions_finds_the_trigger_in_any_case_at_a_word_boundary(body: str) -> None:
    assert comment(body=body).mentions("@agent")


@pytest.mark.parametrize("body", ["@agents", "@agent-x", "@agent_bot", "@agent2", "foo@agent", "email@agent.com",
                                  "@@agent", "agent", "@ agent", "", "You are totally right!"])
def test_mentions_ignores_longer_handles_and_addresses(body: str) -> None:
    assert not comment(body=body).mentions("@agent")


def test_mentions_uses_the_routes_trigger() -> None:
    assert comment(body="@relay-bot do it").mentions("@relay-bot")
    assert not comment(body="@relay-bot do it").mentions("@agent")
    assert not comment(body="@relay-bot do it").mentions("@relay")
    assert not comment(body="@relay-bot2 do it").mentions("@relay-bot")


def test_mentions_treats_the_trigger_literally() -> None:
    assert comment(body="ask @a.b now").mentions("@a.b")
    assert not comment(body="ask @axb now").mentions("@a.b")
    assert comment(body="ask /c++ now").mentions("/c++")


# --- Comment: bots ----------------------------------------------------------------------


def test_a_comment_by_a_bot_user_is_written_by_a_bot() -> None:
    found = parsed(BY_BOT)
    assert isinstance(found, Comment) and found.written_by_a_bot


def test_a_comment_posted_through_a_github_app_is_written_by_a_bot() -> None:
    app = {"id": 1, "slug": "some-app", "name": "Some App", "owner": {"login": "Codertocat"}}
    found = parse(JSON, changed(CREATED, put(app, "comment", "performed_via_github_app")), delivery())
    assert isinstance(found, Comment)
    assert found.by_app and found.author_type == "User"
    assert found.written_by_a_bot


def test_a_comment_carrying_relays_own_marker_is_written_by_a_bot() -> None:
    assert comment(body=f"Done: the agent answered.\n\n{OWN_MARKER}").written_by_a_bot


@pytest.mark.parametrize("name", [CREATED, EDITED, ON_PULL_REQUEST, REVIEW])
def test_a_users_comment_is_not_written_by_a_bot(name: str) -> None:
    assert not comment(name).written_by_a_bot


# --- Comment: the user message ----------------------------------------------------------


def test_message_carries_the_context_an_agent_needs() -> None:
    found = comment(body="@agent can you take this?", association="COLLABORATOR")
    content = found.message(delivery()).message["content"]
    for needed in (REPOSITORY, "issue #1", "Spelling error in the README file", "@Codertocat",
                   "https://github.com/Codertocat/Hello-World/issues/1#issuecomment-492700400",
                   "@agent can you take this?"):
        assert needed in content
    assert "collaborator" in content.lower() and "owner" not in content.lower()
    assert "pull request" not in content


def test_message_of_a_comment_on_a_pull_request_says_pull_request() -> None:
    content = comment(ON_PULL_REQUEST).message(delivery()).message["content"]
    assert "pull request #1" in content and "issue #1" not in content


def test_message_of_a_review_comment_names_the_file_and_line() -> None:
    content = comment(REVIEW).message(delivery("pull_request_review_comment")).message["content"]
    for needed in (REPOSITORY, "pull request #2", "Update the README with new information.", "README.md", "265",
                   "https://github.com/Codertocat/Hello-World/pull/2#discussion_r284312630",
                   "Maybe you should use more emojji on this line."):
        assert needed in content


def test_message_is_a_user_message_whose_id_is_the_comments() -> None:
    found = comment()
    inbound = found.message(delivery())
    message_id = found.message_id()
    assert inbound.client_message_id == message_id
    assert inbound.message == {"role": "user", "client_message_id": message_id,
                               "content": inbound.message["content"], "otid": message_id}
    assert kind_of(inbound.message) == "user"
    assert (inbound.source, inbound.delivery_id, inbound.route) == ("github", DELIVERY_ID, None)
    assert inbound.reply == found.reply()


def test_message_id_follows_the_comment_not_the_text_or_the_delivery() -> None:
    one = comment(body="@agent first").message(delivery())
    changed_text = comment(body="@agent second").message(delivery())
    other_delivery = comment(body="@agent first").message(delivery(delivery_id="another-guid"))
    assert one.client_message_id == changed_text.client_message_id == other_delivery.client_message_id


# --- Comment: decisions -----------------------------------------------------------------


def decisions_of(body: str) -> list[tuple[str, bool, str | None]]:
    out = []
    for inbound in comment(body=body).decisions(delivery()):
        [decision] = inbound.message["approvals"]
        out.append((decision["tool_call_id"], decision["approve"], decision.get("reason")))
    return out


def test_an_approve_line_is_exactly_the_letta_approval_message() -> None:
    [inbound] = comment(body=f"/approve {TOOL_CALL}").decisions(delivery())
    assert inbound.message == {"type": "approval",
                               "approvals": [{"type": "approval", "tool_call_id": TOOL_CALL, "approve": True}]}
    assert kind_of(inbound.message) == "approval"


def test_a_deny_line_with_a_reason_carries_the_reason() -> None:
    [inbound] = comment(body=f"/deny {TOOL_CALL} not during the change freeze").decisions(delivery())
    assert inbound.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": TOOL_CALL, "approve": False,
         "reason": "not during the change freeze"}]}


@pytest.mark.parametrize("body", [f"/deny {TOOL_CALL}", f"/deny {TOOL_CALL}   ", f"/deny\t{TOOL_CALL}\t"])
def test_a_deny_line_without_a_reason_has_no_reason_key(body: str) -> None:
    [inbound] = comment(body=body).decisions(delivery())
    assert inbound.message == {"type": "approval",
                               "approvals": [{"type": "approval", "tool_call_id": TOOL_CALL, "approve": False}]}


def test_decision_lines_anywhere_in_the_body_come_in_order() -> None:
    body = ("Thanks, I checked the plan.\n\n/approve toolu_a\nThe second one is risky:\n"
            "  /deny toolu_b it drops a table\n\n/approve toolu_c\nThat's all.")
    assert decisions_of(body) == [("toolu_a", True, None), ("toolu_b", False, "it drops a table"),
                                  ("toolu_c", True, None)]


def test_each_decision_has_its_own_client_message_id() -> None:
    inbounds = comment(body="/approve toolu_a\n/deny toolu_b no").decisions(delivery())
    ids = [inbound.client_message_id for inbound in inbounds]
    found = comment()
    assert ids == [found.decision_id("toolu_a"), found.decision_id("toolu_b")]
    assert len(set(ids)) == 2
    assert found.message_id() not in ids


def test_decisions_reply_on_the_comment() -> None:
    found = comment(body="/approve toolu_a")
    [inbound] = found.decisions(delivery())
    assert inbound.reply == found.reply()
    assert (inbound.source, inbound.delivery_id, inbound.route) == ("github", DELIVERY_ID, None)


@pytest.mark.parametrize("body", ["/deny toolu_a\nthis is not the reason", "/deny toolu_a \nthis is not the reason",
                                  "/deny toolu_a\t\n\nthis is not the reason"])
def test_a_reason_never_spills_onto_the_next_line(body: str) -> None:
    assert decisions_of(body) == [("toolu_a", False, None)]


def test_a_reason_ends_at_its_line_and_the_next_line_can_decide() -> None:
    assert decisions_of("/deny toolu_a too risky\n/approve toolu_b") == [
        ("toolu_a", False, "too risky"), ("toolu_b", True, None)]


def test_windows_line_endings_are_not_part_of_ids_or_reasons() -> None:
    body = "Looks fine.\r\n/approve toolu_a\r\n/deny toolu_b too risky \r\n/deny toolu_c\r\n"
    assert decisions_of(body) == [("toolu_a", True, None), ("toolu_b", False, "too risky"),
                                  ("toolu_c", False, None)]


@pytest.mark.parametrize("body", [
    "Please /approve toolu_a when you are ready",
    "I will /deny toolu_a later",
    "> /approve toolu_a",
    "- /approve toolu_a",
    "/approved toolu_a",
    "/denying toolu_a",
    "/approvetoolu_a",
    "/approve",
    "/deny   ",
    "/deny\ntoolu_a reason",
    "approve toolu_a",
    "You are totally right! I'll get this fixed right away.",
])
def test_lines_that_merely_mention_a_command_are_not_decisions(body: str) -> None:
    found = comment(body=body)
    assert found.decisions(delivery()) == []
    assert not found.has_decisions()


def test_has_decisions_when_a_line_decides() -> None:
    assert comment(body="@agent go\n/approve toolu_a").has_decisions()


# --- Comment: reply ---------------------------------------------------------------------


def test_a_review_comment_replies_through_the_pulls_api() -> None:
    assert comment(REVIEW).reply() == {"via": "github", "repository": REPOSITORY, "comment_id": 284312630,
                                       "api": "pulls", "number": 2}


@pytest.mark.parametrize("name", [CREATED, ON_PULL_REQUEST])
def test_an_issue_comment_replies_through_the_issues_api_even_on_a_pull_request(name: str) -> None:
    assert comment(name).reply() == {"via": "github", "repository": REPOSITORY, "comment_id": 492700400,
                                     "api": "issues", "number": 1}


# --- admitted ---------------------------------------------------------------------------


def rule(**fields: Any) -> GitHubRule:
    return GitHubRule(repositories=(REPOSITORY,), **fields)


def test_a_mention_from_the_owner_becomes_one_user_message() -> None:
    found = comment(body="@agent please triage")
    assert admitted(found, rule(), delivery()) == [found.message(delivery())]


def test_a_recorded_comment_without_trigger_or_decision_is_ignored_with_a_reason() -> None:
    reason = admitted(comment(), rule(), delivery())
    assert isinstance(reason, str) and "@agent" in reason


def test_a_comment_with_only_another_trigger_is_ignored_with_a_reason() -> None:
    reason = admitted(comment(body="@agent hi"), rule(trigger="@relay-bot"), delivery())
    assert isinstance(reason, str) and "@relay-bot" in reason
    assert isinstance(admitted(comment(body="@relay-bot hi"), rule(trigger="@relay-bot"), delivery()), list)


@pytest.mark.parametrize("name", [EDITED, DELETED])
def test_only_created_comments_are_admitted_by_default(name: str) -> None:
    found = comment(name, body="@agent please triage\n/approve toolu_a")
    reason = admitted(found, rule(approvers=("Codertocat",)), delivery())
    assert isinstance(reason, str) and found.action in reason


def test_a_route_may_opt_in_to_edited_comments() -> None:
    opted_in = rule(actions=("created", "edited"))
    edited = comment(EDITED, body="@agent please triage")
    assert admitted(edited, opted_in, delivery()) == [edited.message(delivery())]
    assert isinstance(admitted(comment(DELETED, body="@agent please triage"), opted_in, delivery()), str)
    created = comment(body="@agent please triage")
    assert admitted(created, opted_in, delivery()) == [created.message(delivery())]


def test_a_route_may_leave_out_created_comments() -> None:
    reason = admitted(comment(body="@agent please triage"), rule(actions=("edited",)), delivery())
    assert isinstance(reason, str) and "created" in reason


@pytest.mark.parametrize("fields", [{"author_type": "Bot"}, {"by_app": True},
                                    {"body": f"@agent please triage\n/approve toolu_a\n{OWN_MARKER}"}],
                         ids=["bot-user", "github-app", "own-marker"])
def test_bot_comments_are_never_admitted_even_from_an_approver(fields: dict[str, Any]) -> None:
    found = comment(**{"body": "@agent please triage\n/approve toolu_a", **fields})
    reason = admitted(found, rule(approvers=("Codertocat",)), delivery())
    assert isinstance(reason, str) and "bot" in reason


def test_the_recorded_bot_comment_is_not_admitted() -> None:
    found = comment(BY_BOT, body="@agent please triage")
    assert isinstance(admitted(found, rule(), delivery()), str)


@pytest.mark.parametrize("association", ["OWNER", "MEMBER", "COLLABORATOR"])
def test_owners_members_and_collaborators_are_admitted_by_default(association: str) -> None:
    found = comment(body="@agent please triage", association=association)
    assert admitted(found, rule(), delivery()) == [found.message(delivery())]


@pytest.mark.parametrize("association", ["CONTRIBUTOR", "NONE", "FIRST_TIME_CONTRIBUTOR", "FIRST_TIMER",
                                         "MANNEQUIN"])
def test_other_associations_are_refused_by_default_naming_the_association(association: str) -> None:
    reason = admitted(comment(body="@agent please triage", association=association), rule(), delivery())
    assert isinstance(reason, str) and association in reason


def test_a_custom_association_list_replaces_the_default() -> None:
    contributors = rule(associations=("CONTRIBUTOR",))
    contributor = comment(body="@agent please triage", association="CONTRIBUTOR")
    assert admitted(contributor, contributors, delivery()) == [contributor.message(delivery())]
    reason = admitted(comment(body="@agent please triage", association="OWNER"), contributors, delivery())
    assert isinstance(reason, str) and "OWNER" in reason


def test_an_approvers_decisions_come_before_the_mention() -> None:
    found = comment(body="@agent go ahead\n/approve toolu_a\n/deny toolu_b no")
    assert admitted(found, rule(approvers=("Codertocat",)), delivery()) == [
        *found.decisions(delivery()), found.message(delivery())]


def test_a_decision_without_a_mention_from_an_approver_is_admitted() -> None:
    found = comment(body="/approve toolu_a")
    assert admitted(found, rule(approvers=("Codertocat",)), delivery()) == found.decisions(delivery())


@pytest.mark.parametrize("approvers", [("codertocat",), ("CODERTOCAT",), ("octocat", "cODERTOCAt")])
def test_approvers_are_compared_without_regard_to_case(approvers: tuple[str, ...]) -> None:
    found = comment(body="/approve toolu_a")
    assert admitted(found, rule(approvers=approvers), delivery()) == found.decisions(delivery())


@pytest.mark.parametrize("approvers", [(), ("octocat",), ("Codertocat2",), ("Coder",)])
def test_decisions_from_a_non_approver_are_dropped_but_the_mention_is_kept(approvers: tuple[str, ...]) -> None:
    found = comment(body="@agent go ahead\n/approve toolu_a")
    assert admitted(found, rule(approvers=approvers), delivery()) == [found.message(delivery())]


def test_decisions_alone_from_a_non_approver_are_ignored_with_a_reason() -> None:
    reason = admitted(comment(body="/approve toolu_a"), rule(approvers=("octocat",)), delivery())
    assert isinstance(reason, str) and "approver" in reason


def test_an_approver_still_needs_an_allowed_association() -> None:
    found = comment(body="/approve toolu_a", association="CONTRIBUTOR")
    assert isinstance(admitted(found, rule(approvers=("Codertocat",)), delivery()), str)
