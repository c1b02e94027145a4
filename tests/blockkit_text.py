"""Block Kit messages as plain text, the way Slack lays them out, for the README's mock-ups.

Slack renders a header block as a bold line, a section's mrkdwn as text (`<@U…>` as a mention,
`<!date^…|fallback>` as a date, `&lt;` as `<`, emoji codes as emoji), a context block in small
grey type under it, and an actions block as a row of buttons. This reproduces that in text, so
the README shows what relay really posts (tests/test_readme_mockups.py keeps them in step).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

EMOJI = {":white_check_mark:": "✅", ":no_entry:": "⛔", ":information_source:": "ℹ️",
         ":hourglass_flowing_sand:": "⏳", ":warning:": "⚠️"}


def _date(match: re.Match[str]) -> str:
    when = datetime.fromtimestamp(int(match.group(1)), timezone.utc)
    return when.strftime("%b %-d, %Y at %H:%M UTC")


def mrkdwn(text: str) -> str:
    text = re.sub(r"<!date\^(\d+)\^[^|>]*\|[^>]*>", _date, text)
    text = re.sub(r"<@([A-Z0-9]+)>", r"@\1", text)
    text = re.sub(r"<#([A-Z0-9]+)>", r"#\1", text)
    for code, emoji in EMOJI.items():
        text = text.replace(code, emoji)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def render(message: dict[str, Any]) -> str:
    lines: list[str] = []
    for block in message.get("blocks", []):
        kind = block["type"]
        if kind == "header":
            title = block["text"]["text"]
            lines += [title, "═" * len(title)]
        elif kind == "section":
            lines += mrkdwn(block["text"]["text"]).split("\n")
        elif kind == "context":
            lines += ["  " + " ".join(mrkdwn(e["text"]) for e in block["elements"])]
        elif kind == "actions":
            lines += ["  ".join(f"[ {e['text']['text']} ]" for e in block["elements"])]
    if not message.get("blocks"):
        lines = mrkdwn(str(message.get("text", ""))).split("\n")
    return "\n".join(lines)
