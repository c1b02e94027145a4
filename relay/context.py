"""The context a message brings the agent: a Slack thread's earlier messages, and files.

Pure: the shapes a source puts on a message (what to fetch), and the text the agent gets once
the worker has fetched it (`enrich.py` does the I/O). Everything is bounded here:

- files: at most `MAX_FILES` per message, each named with its link; a small text file (at
  most the inline limit, RELAY_INLINE_FILE_BYTES) is included, cut at the limit; a file that
  could not be read says so;
- a thread: at most `messages` earlier messages and `chars` characters (oldest dropped first),
  each with its author.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

MAX_FILES = 10
NAME_MAX = 200
URL_MAX = 2048
#: Types whose content is text, by MIME type prefix or exact value.
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/yaml", "application/x-yaml",
              "application/javascript", "application/x-sh", "application/toml")
#: A markdown link to a file GitHub keeps for a comment: `[name](…/user-attachments/files/…)` or
#: `[name](…/{owner}/{repo}/files/{n}/{name})`. Whether relay may read it is the enricher's call.
_GITHUB_FILE = re.compile(
    r"\[([^\]\n]{1,200})\]\((https?://[\w.:-]+/(?:user-attachments/(?:files|assets)/[\w./%-]+|"
    r"[\w.-]+/[\w.-]+/files/\d+/[\w.%-]+))\)")


@dataclass(frozen=True)
class FileRef:
    """A file attached to a message: what the agent is told, and where relay may read it."""

    name: str
    url: str  # where a person opens it
    download: str | None = None  # where relay reads it (with the source's token), if anywhere
    mimetype: str = ""
    size: int | None = None

    def is_text(self) -> bool:
        return self.mimetype.startswith(TEXT_TYPES) or self.mimetype in TEXT_TYPES

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "download": self.download, "mimetype": self.mimetype,
                "size": self.size}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileRef | None:
        name, url = data.get("name"), data.get("url")
        if not (isinstance(name, str) and name and isinstance(url, str) and url):
            return None
        download, mimetype, size = data.get("download"), data.get("mimetype"), data.get("size")
        return cls(name[:NAME_MAX], url[:URL_MAX], download if isinstance(download, str) else None,
                   mimetype if isinstance(mimetype, str) else "",
                   size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None)


def slack_files(files: Any) -> list[FileRef]:
    """The files of a Slack message event (`files`), bounded; malformed entries are skipped."""
    if not isinstance(files, list):
        return []
    found = []
    for item in files[:MAX_FILES]:
        if not isinstance(item, dict):
            continue
        link = item.get("permalink") or item.get("url_private")
        ref = FileRef.from_dict({"name": item.get("name") or item.get("title"), "url": link,
                                 "download": item.get("url_private"), "mimetype": item.get("mimetype"),
                                 "size": item.get("size")})
        if ref is not None and ref.url.startswith("https://"):
            found.append(ref)
    return found


def github_files(body: str) -> list[FileRef]:
    """Files attached to a GitHub comment: markdown links to GitHub's attachment URLs."""
    refs, seen = [], set()
    for name, url in _GITHUB_FILE.findall(body):
        if url not in seen:
            seen.add(url)
            refs.append(FileRef(name, url, url, _type_of(name)))
        if len(refs) == MAX_FILES:
            break
    return refs


#: Text files the platform's type table may not know (GitHub gives no type with an attachment).
_TEXT_SUFFIXES = (".log", ".txt", ".md", ".csv", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".diff",
                  ".patch", ".py", ".sh", ".js", ".ts", ".go", ".rs", ".java", ".sql", ".xml")


def _type_of(name: str) -> str:
    guessed = mimetypes.guess_type(name)[0]
    if guessed:
        return guessed
    return "text/plain" if name.lower().endswith(_TEXT_SUFFIXES) else ""


@dataclass(frozen=True)
class FileSeen:
    """A file as relay could read it: its text (when small text), or why not."""

    ref: FileRef
    text: str | None = None
    note: str | None = None  # "too large to include", "could not be read: …"


@dataclass(frozen=True)
class ThreadMessage:
    author: str  # a display name, or the user id when the name is unknown
    text: str


def history_text(messages: Iterable[ThreadMessage], max_messages: int, max_chars: int) -> str:
    """The thread's earlier messages as lines "author: text", newest kept first: at most
    `max_messages` of them and `max_chars` characters in all; what was dropped is said."""
    kept: list[str] = []
    total = 0
    earlier = list(messages)
    for message in reversed(earlier):
        line = f"{message.author}: {' '.join(message.text.split())}"
        if len(kept) >= max_messages or total + len(line) + 1 > max_chars:
            break
        kept.append(line)
        total += len(line) + 1
    dropped = len(earlier) - len(kept)
    head = [f"({dropped} earlier message{'s' if dropped != 1 else ''} not shown)"] if dropped else []
    return "\n".join(head + list(reversed(kept)))


def with_context(content: str, history: str | None, history_note: str | None, files: list[FileSeen]) -> str:
    """The message's content, followed by the thread before it and the files it carries."""
    parts = [content]
    if history:
        parts.append(f"Earlier in this Slack thread:\n{history}")
    elif history_note:
        parts.append(f"(The thread's earlier messages could not be read: {history_note}.)")
    for seen in files:
        line = f"Attached file: {seen.ref.name} — {seen.ref.url}"
        if seen.text is not None:
            line += f"\n```\n{seen.text.replace('```', '` ` `')}\n```"
        elif seen.note:
            line += f" ({seen.note})"
        parts.append(line)
    return "\n\n".join(parts)
