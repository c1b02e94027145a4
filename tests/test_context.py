"""What a message brings the agent: a thread's earlier messages and files, bounded."""

from __future__ import annotations

from relay.context import (MAX_FILES, FileRef, FileSeen, ThreadMessage, github_files, history_text, slack_files,
                           with_context)


def test_slack_files_are_named_with_their_permalink_and_read_from_url_private() -> None:
    [ref] = slack_files([{"name": "a.log", "mimetype": "text/plain", "size": 12,
                          "url_private": "https://files.slack.com/files-pri/T1-F1/a.log",
                          "permalink": "https://acme.slack.com/files/U1/F1/a.log"}])
    assert ref == FileRef("a.log", "https://acme.slack.com/files/U1/F1/a.log",
                          "https://files.slack.com/files-pri/T1-F1/a.log", "text/plain", 12)
    assert ref.is_text()


def test_malformed_or_too_many_slack_files_are_bounded() -> None:
    good = {"name": "x.txt", "permalink": "https://acme.slack.com/files/x"}
    files = [good] * (MAX_FILES + 5) + [{"name": 7}, "x", {"name": "y", "permalink": "javascript:alert(1)"}]
    assert len(slack_files(files)) == MAX_FILES
    assert slack_files([{"name": 7}, "x", {"name": "y", "permalink": "ftp://x"}]) == []
    assert slack_files("not a list") == []
    assert slack_files([{**good, "size": -1}])[0].size is None
    assert len(slack_files([{**good, "name": "n" * 5000}])[0].name) == 200


def test_github_attachments_are_found_in_markdown_links_and_typed_by_name() -> None:
    body = ("see [build.log](https://github.com/user-attachments/files/17/build.log) and "
            "[shot.png](https://github.com/user-attachments/assets/ab-cd) and [x](https://evil.example/x.txt) "
            "twice [build.log](https://github.com/user-attachments/files/17/build.log)")
    refs = github_files(body)
    assert [(r.name, r.mimetype) for r in refs] == [("build.log", "text/plain"), ("shot.png", "image/png")]


def test_history_keeps_the_newest_messages_within_both_bounds_and_says_what_was_dropped() -> None:
    messages = [ThreadMessage(f"@u{n}", f"message {n}") for n in range(10)]
    assert history_text(messages, 3, 10_000) == "(7 earlier messages not shown)\n@u7: message 7\n@u8: message 8\n@u9: message 9"
    assert history_text(messages, 100, 30) == "(8 earlier messages not shown)\n@u8: message 8\n@u9: message 9"
    assert history_text([ThreadMessage("@a", "one\n\n  two")], 5, 100) == "@a: one two"
    assert history_text([], 5, 100) == ""


def test_the_content_is_followed_by_the_thread_and_the_files() -> None:
    text_file = FileSeen(FileRef("a.txt", "https://l/a"), text="line ``` inside")
    big = FileSeen(FileRef("b.bin", "https://l/b"), note="too large to include")
    image = FileSeen(FileRef("c.png", "https://l/c"))
    assert with_context("hi", "@a: before", None, [text_file, big, image]) == (
        "hi\n\nEarlier in this Slack thread:\n@a: before\n\n"
        "Attached file: a.txt — https://l/a\n```\nline ` ` ` inside\n```\n\n"
        "Attached file: b.bin — https://l/b (too large to include)\n\n"
        "Attached file: c.png — https://l/c")
    assert with_context("hi", None, "ratelimited", []) == "hi\n\n(The thread's earlier messages could not be read: ratelimited.)"
    assert with_context("hi", None, None, []) == "hi"
