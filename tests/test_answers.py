"""Cutting an agent's reply to Slack's and GitHub's limits (pure)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from relay import answers
from relay.answers import (GITHUB_COMMENT_MAX, SLACK_MESSAGE_MAX, SLACK_MESSAGES_MAX, escaped_width, github_comment,
                           joined, slack_messages, split, truncation_note)
from relay.sources.github import OWN_MARKER
from relay.sources.slack import escape

# Text with the characters that matter: boundaries, Slack's escaped three, and non-ASCII.
TEXT = st.text(alphabet=st.sampled_from(list("ab c\n&<>é😀")) | st.characters(), max_size=3000)
LIMITS = st.integers(min_value=answers.MIN_LIMIT, max_value=400)
NOTE = re.compile(r"\n\n\(reply truncated: ([0-9,]+) more characters?\)")


def test_joined_drops_blank_messages_and_separates_the_rest_by_a_blank_line() -> None:
    assert joined(["  First.\n", "", "   ", "Second."]) == "First.\n\nSecond."
    assert joined([]) == ""


def test_a_short_reply_is_one_escaped_slack_message() -> None:
    assert slack_messages("Use <b> & <i> -> done") == ["Use &lt;b&gt; &amp; &lt;i&gt; -&gt; done"]


def test_an_empty_reply_is_no_message_and_no_comment() -> None:
    assert slack_messages("") == []
    assert github_comment("") == ""


def test_split_prefers_a_paragraph_break_then_a_line_break_then_a_space() -> None:
    assert split("p" * 40 + "\n\n" + "q" * 40, 64) == ["p" * 40 + "\n\n", "q" * 40]
    assert split("a" * 40 + "\n" + "b" * 40, 64) == ["a" * 40 + "\n", "b" * 40]
    assert split("a" * 40 + " " + "b" * 40, 64) == ["a" * 40 + " ", "b" * 40]
    assert split("a" * 30 + "\n" + "b" * 10 + " " + "c" * 40, 64)[0] == "a" * 30 + "\n" + "b" * 10 + " "


def test_split_takes_the_paragraph_break_over_a_later_line_break() -> None:
    text = "a" * 40 + "\n\n" + "b" * 10 + "\n" + "c" * 40
    assert split(text, 64)[0] == "a" * 40 + "\n\n"


def test_a_boundary_in_the_first_half_of_the_room_is_not_worth_a_tiny_piece() -> None:
    text = "ab cdefghij" + "x" * 100
    assert split(text, 64)[0] == text[:64]


def test_a_text_without_boundaries_is_cut_mid_word() -> None:
    assert split("x" * 150, 64) == ["x" * 64, "x" * 64, "x" * 22]


def test_slack_limits_count_the_escaped_characters() -> None:
    [first, *rest] = slack_messages("&" * 100, limit=100, most=5)
    assert first == "&amp;" * 20 and len(first) == 100
    assert "".join([first, *rest]) == "&amp;" * 100


def test_a_long_reply_becomes_several_messages_cut_between_paragraphs() -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 600 for i in range(3)]
    messages = slack_messages("\n\n".join(paragraphs))
    assert len(messages) == 3
    assert [m.strip() for m in messages] == [p.strip() for p in paragraphs]


def test_too_many_messages_keep_the_first_few_and_say_how_much_was_left_out() -> None:
    text = "word " * 10_000  # 50,000 characters
    messages = slack_messages(text)
    assert len(messages) == SLACK_MESSAGES_MAX
    assert all(len(m) <= SLACK_MESSAGE_MAX for m in messages)
    shown = "".join(messages[:-1]) + NOTE.split(messages[-1])[0]
    [left_out] = NOTE.findall(messages[-1])
    assert text.startswith(shown)
    assert int(left_out.replace(",", "")) == len(text) - len(shown)
    assert messages[-1].endswith(f"(reply truncated: {left_out} more characters)")
    assert "http" not in messages[-1]


def test_the_note_counts_in_the_singular_for_one_character() -> None:
    assert truncation_note(1).endswith("(reply truncated: 1 more character)")
    assert truncation_note(12345).endswith("(reply truncated: 12,345 more characters)")


def test_a_github_comment_ends_with_relays_marker() -> None:
    assert github_comment("Done: see #12 & <details>") == "Done: see #12 & <details>\n\n" + OWN_MARKER


def test_a_github_comment_at_the_limit_is_kept_whole_and_one_over_is_truncated() -> None:
    room = GITHUB_COMMENT_MAX - len("\n\n" + OWN_MARKER)
    whole = github_comment("x" * room)
    assert len(whole) == GITHUB_COMMENT_MAX and "truncated" not in whole
    cut = github_comment("x" * (room + 1))
    assert len(cut) <= GITHUB_COMMENT_MAX and cut.endswith(OWN_MARKER)
    [left_out] = NOTE.findall(cut)
    assert int(left_out.replace(",", "")) == room + 1 - len(NOTE.split(cut)[0])


@pytest.mark.parametrize("limit", [0, answers.MIN_LIMIT - 1])
def test_a_limit_without_room_for_the_note_is_refused(limit: int) -> None:
    with pytest.raises(ValueError):
        split("text", limit)
    with pytest.raises(ValueError):
        github_comment("text", limit)


# -- properties ----------------------------------------------------------------------------------


@given(TEXT, LIMITS)
@settings(max_examples=300, deadline=None)
def test_split_pieces_fit_and_join_back_to_the_text(text: str, limit: int) -> None:
    pieces = split(text, limit, escaped_width)
    assert "".join(pieces) == text
    assert all(piece for piece in pieces)
    assert all(len(escape(piece)) <= limit for piece in pieces)


@given(TEXT, LIMITS, st.integers(min_value=1, max_value=5))
@settings(max_examples=300, deadline=None)
def test_slack_messages_fit_and_preserve_the_text_unless_they_say_it_was_truncated(
        text: str, limit: int, most: int) -> None:
    messages = slack_messages(text, limit=limit, most=most)
    assert len(messages) <= most
    assert all(len(message) <= limit for message in messages)
    shown = "".join(messages)
    if shown == escape(text):
        return  # not truncated: the text, whole
    [left_out] = NOTE.findall(messages[-1])
    kept = NOTE.split(shown)[0]
    assert escape(text).startswith(kept)
    unescaped = kept.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert int(left_out.replace(",", "")) == len(text) - len(unescaped) > 0


@given(TEXT, st.integers(min_value=answers.MIN_LIMIT, max_value=2000))
@settings(max_examples=300, deadline=None)
def test_github_comment_fits_and_keeps_the_text_unless_it_says_it_was_truncated(text: str, limit: int) -> None:
    comment = github_comment(text, limit)
    if not text:
        assert comment == ""
        return
    assert len(comment) <= limit and comment.endswith("\n\n" + OWN_MARKER)
    body = comment[: -len("\n\n" + OWN_MARKER)]
    if body == text:
        return
    [left_out] = NOTE.findall(body)
    kept = NOTE.split(body)[0]
    assert text.startswith(kept) and int(left_out.replace(",", "")) == len(text) - len(kept) > 0
