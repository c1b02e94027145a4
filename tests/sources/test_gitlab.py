"""The GitLab source: X-Gitlab-Token, and what notes become (recorded payloads in
tests/samples/gitlab/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.errors import BadRequest, BadSignature
from relay.sources import gitlab
from relay.sources.gitlab import Ignored, Note

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "gitlab"
TOKEN = b"gitlab-webhook-token-for-tests"


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def test_the_token_must_be_the_secret() -> None:
    gitlab.verify({"X-Gitlab-Token": TOKEN.decode()}, TOKEN)
    for wrong in ("gitlab-webhook-token-for-test", TOKEN.decode() + "s", TOKEN.decode().upper()):
        with pytest.raises(BadSignature, match="does not match"):
            gitlab.verify({"X-Gitlab-Token": wrong}, TOKEN)


@pytest.mark.parametrize("token", [None, "", "x" * 1025, "a\x00b", "tab\there"])
def test_a_missing_or_absurd_token_is_refused_before_any_comparison(token: str | None) -> None:
    with pytest.raises(BadSignature):
        gitlab.token_of({} if token is None else {"x-gitlab-token": token})


def test_a_note_on_an_issue_becomes_a_message_with_its_context() -> None:
    note = gitlab.parse(sample("note.issue.json"))
    assert isinstance(note, Note)
    assert (note.project, note.noteable, note.iid, note.author, note.author_id) == \
        ("gitlab-org/gitlab-test", "issues", 17, "root", 1)
    inbound = note.message()
    assert inbound.message["content"].startswith('GitLab comment on issue gitlab-org/gitlab-test#17: "test"\n'
                                                 "by @root — http://example.com/gitlab-org/gitlab-test/issues/17#note_1241")
    assert inbound.reply == {"via": "gitlab", "project": 5, "noteable": "issues", "iid": 17, "note": 1241,
                             "discussion": "7a4df0c1b3b42b41f0d7c09e3c7d0e0c10ac3c77"}
    assert note.mentions("@agent") and not note.has_decisions()


def test_a_note_on_a_merge_request_carries_decisions() -> None:
    note = gitlab.parse(sample("note.merge_request.json"))
    assert isinstance(note, Note) and note.noteable == "merge_requests" and note.reference.endswith("!1")
    [decision] = note.decisions()
    assert decision.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": "toolu_01", "approve": True}]}
    assert decision.client_message_id != note.message().client_message_id


def test_identities_come_from_the_body_and_an_edit_is_new_only_with_a_new_time() -> None:
    data = sample("note.issue.json")
    created = gitlab.parse(data)
    data["object_attributes"].update(action="update", updated_at="2015-05-17 17:10:00 UTC")
    edited = gitlab.parse(data)
    data["object_attributes"]["updated_at"] = "2015-05-17 17:11:00 UTC"
    edited_again = gitlab.parse(data)
    assert isinstance(created, Note) and isinstance(edited, Note) and isinstance(edited_again, Note)
    assert len({created.message_id(), edited.message_id(), edited_again.message_id()}) == 3
    assert created.decision_id("t1") == edited.decision_id("t1")  # an edit keeping a line decides nothing new


@pytest.mark.parametrize("change", [
    lambda d: d["object_attributes"].update(system=True),
    lambda d: d["object_attributes"].update(note="@agent done " + gitlab.OWN_MARKER),
    lambda d: d["user"].update(username="project_5_bot_3f2a9c1e"),
    lambda d: d["user"].update(username="alert-bot"),
])
def test_system_notes_bots_and_relays_own_notes_are_bots(change: Any) -> None:
    data = sample("note.issue.json")
    change(data)
    note = gitlab.parse(data)
    assert isinstance(note, Note) and note.written_by_a_bot


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.update(object_kind="issue"), "object_kind"),
    (lambda d: d["object_attributes"].update(noteable_type="Commit"), "a note on 'Commit'"),
    (lambda d: d["object_attributes"].update(noteable_type="Snippet"), "a note on 'Snippet'"),
    (lambda d: d["object_attributes"].update(action="delete"), "note action"),
])
def test_other_hooks_and_notes_are_ignored(change: Any, reason: str) -> None:
    data = sample("note.issue.json")
    change(data)
    ignored = gitlab.parse(data)
    assert isinstance(ignored, Ignored) and reason in ignored.reason


@pytest.mark.parametrize("change", [
    lambda d: d.pop("issue"),
    lambda d: d["project"].update(path_with_namespace="../etc"),
    lambda d: d["project"].update(path_with_namespace="solo"),
    lambda d: d["project"].update(id="5"),
    lambda d: d["object_attributes"].update(id=True),
    lambda d: d["object_attributes"].update(id=2**70),
    lambda d: d["issue"].update(iid=-1),
    lambda d: d["user"].update(username="a b"),
    lambda d: d["object_attributes"].update(action="update", updated_at=None),
])
def test_a_note_without_what_relay_needs_is_400(change: Any) -> None:
    data = sample("note.issue.json")
    change(data)
    with pytest.raises(BadRequest):
        gitlab.parse(data)


def test_claimed_project_is_only_a_plain_path() -> None:
    assert gitlab.claimed(sample("note.issue.json")) == "gitlab-org/gitlab-test"
    assert gitlab.claimed({"project": {"path_with_namespace": "a/../b"}}) is None
    assert gitlab.claimed({"project": "x"}) is None
