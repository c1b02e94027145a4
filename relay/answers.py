"""An agent's reply, cut to what Slack and GitHub accept.

Pure: text in, text out.

- Slack: mrkdwn-escaped messages of at most `SLACK_MESSAGE_MAX` characters each (after
  escaping); chat.postMessage cuts `text` at 40,000 and Slack asks for 4,000 at most), and at
  most `SLACK_MESSAGES_MAX` of them: one reply never floods a thread, and a slash command's
  response_url (5 posts, one already used for "Delivered") is never exhausted.
- GitHub: one comment of at most `GITHUB_COMMENT_MAX` characters (GitHub refuses longer
  bodies), ending with relay's marker so relay never takes its own comment for a request.

Text is cut after the last paragraph break in the second half of the room, else the last line
break, else the last space; only a run with none of them is cut mid-word. What does not fit
is dropped with a note saying how much (no link: the full reply stays in Letta).
"""

from __future__ import annotations

from typing import Callable

from relay.sources.github import OWN_MARKER
from relay.sources.slack import escape

SLACK_MESSAGE_MAX = 3500
SLACK_MESSAGES_MAX = 4
GITHUB_COMMENT_MAX = 65_536
MIN_LIMIT = 64  # room for the note and some text
_BOUNDARIES = ("\n\n", "\n", " ")
_GITHUB_TAIL = "\n\n" + OWN_MARKER


def joined(texts: list[str]) -> str:
    """A turn's assistant messages as one text: blank ones dropped, a blank line between."""
    return "\n\n".join(stripped for stripped in (t.strip() for t in texts) if stripped)


def escaped_width(char: str) -> int:
    """How long one character is once Slack-escaped (`&amp;`, `&lt;`, `&gt;`)."""
    return {"&": 5, "<": 4, ">": 4}.get(char, 1)


def plain_width(char: str) -> int:
    return 1


def split(text: str, limit: int, width: Callable[[str], int] = plain_width) -> list[str]:
    """`text` in pieces whose widths sum to at most `limit` each; `"".join(pieces) == text`."""
    _check(limit)
    pieces, start = [], 0
    while start < len(text):
        end = _cut(text, start, limit, width)
        pieces.append(text[start:end])
        start = end
    return pieces


def truncation_note(remaining: int) -> str:
    unit = "character" if remaining == 1 else "characters"
    return f"\n\n(reply truncated: {remaining:,} more {unit})"


def slack_messages(text: str, limit: int = SLACK_MESSAGE_MAX, most: int = SLACK_MESSAGES_MAX) -> list[str]:
    """Escaped mrkdwn texts for chat.postMessage (or a response_url), in order."""
    if most < 1:
        raise ValueError("most must be at least 1")
    pieces = split(text, limit, escaped_width)
    if len(pieces) <= most:
        return [escape(piece) for piece in pieces]
    shown = pieces[: most - 1]
    start = sum(map(len, shown))
    end = _cut(text, start, limit - len(truncation_note(len(text))), escaped_width)
    messages = [escape(piece) for piece in shown] + [escape(text[start:end])]
    messages[-1] += truncation_note(len(text) - end)
    return messages


#: How much of what the agent said so far a progress message shows (its end: the newest part).
PROGRESS_SHOWN = 3000


def progress_text(texts: tuple[str, ...] | list[str], activity: str | None, platform: str) -> str:
    """A running turn as one message: what the agent said so far (its end, when long), then what
    it is doing now. Slack text is mrkdwn-escaped; a GitHub body gets relay's marker from
    `github_comment`."""
    said = joined(list(texts))
    if len(said) > PROGRESS_SHOWN:
        said = "…" + said[-PROGRESS_SHOWN:].lstrip()
    doing = f"{activity or 'working'}…"
    if platform == "slack":
        status = f":hourglass_flowing_sand: _{escape(doing)}_"
        return f"{escape(said)}\n\n{status}" if said else status
    status = f"⏳ *The agent is {doing}*"
    return f"{said}\n\n{status}" if said else status


def github_comment(text: str, limit: int = GITHUB_COMMENT_MAX) -> str:
    """One comment body ("" for an empty reply), marked as relay's own."""
    _check(limit)
    if not text:
        return ""
    room = limit - len(_GITHUB_TAIL)
    if len(text) <= room:
        return text + _GITHUB_TAIL
    end = _cut(text, 0, room - len(truncation_note(len(text))), plain_width)
    return text[:end] + truncation_note(len(text) - end) + _GITHUB_TAIL


def _check(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}")


def _cut(text: str, start: int, limit: int, width: Callable[[str], int]) -> int:
    """Where the piece starting at `start` ends: the best boundary within `limit`."""
    used, end = 0, start
    while end < len(text) and used + width(text[end]) <= limit:
        used += width(text[end])
        end += 1
    if end == len(text):
        return end
    window = text[start:end]
    for boundary in _BOUNDARIES:
        at = window.rfind(boundary)
        if at >= len(window) // 2:
            return start + at + len(boundary)
    return end
