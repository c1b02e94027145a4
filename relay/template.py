"""The text template of a mapped webhook: literal text with `{{ path }}` placeholders.

    PagerDuty {{ event.event_type }}: {{ event.data.title }} — {{ event.data.html_url }}

A path is dot-separated keys into the JSON body; a segment of digits also indexes a list
(`alerts.0.name`). That is the whole language: no expressions, no filters, no calls, no
attribute access beyond JSON keys, so a template can only read the payload it is given.
A path that is absent renders as empty and is reported (the door logs it); `null` renders as
empty too. Strings render as they are, numbers and booleans as JSON, objects and lists as
compact JSON; each value is cut at `VALUE_MAX` characters.

Pure: a template is parsed once (at settings load: a bad one is a ConfigError) and rendered
per request.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from relay.errors import ConfigError

VALUE_MAX = 4000
MAX_PLACEHOLDERS = 64
MAX_DEPTH = 16
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_PATH = re.compile(r"[A-Za-z0-9_$@-]+(?:\.[A-Za-z0-9_$@-]+){0,15}")

Path = tuple[str, ...]


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[str | Path, ...]  # literal text, or a path to render

    @property
    def paths(self) -> list[str]:
        return [".".join(p) for p in self.parts if isinstance(p, tuple)]

    def render(self, data: Any) -> tuple[str, list[str]]:
        """The text for `data`, and the paths that were missing (rendered empty)."""
        out: list[str] = []
        missing: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            found, value = lookup(data, part)
            if not found:
                missing.append(".".join(part))
                continue
            out.append(shown(value))
        return "".join(out), missing


def parse(source: str, where: str = "template") -> Template:
    """`source` → a Template. Raises ConfigError naming what is wrong."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where} must be a non-empty string")
    parts: list[str | Path] = []
    at = 0
    for match in _PLACEHOLDER.finditer(source):
        literal = source[at:match.start()]
        _no_stray_braces(literal, where)
        if literal:
            parts.append(literal)
        path = match.group(1).strip()
        if not _PATH.fullmatch(path):
            raise ConfigError(f"{where}: {{{{ {path[:40]} }}}} is not a path such as {{{{ event.data.title }}}} "
                              "(dot-separated keys; nothing else is allowed between the braces)")
        parts.append(tuple(path.split(".")))
        at = match.end()
    rest = source[at:]
    _no_stray_braces(rest, where)
    if rest:
        parts.append(rest)
    if sum(isinstance(p, tuple) for p in parts) > MAX_PLACEHOLDERS:
        raise ConfigError(f"{where}: more than {MAX_PLACEHOLDERS} placeholders")
    return Template(source, tuple(parts))


def _no_stray_braces(literal: str, where: str) -> None:
    if "{{" in literal or "}}" in literal:
        raise ConfigError(f"{where}: unbalanced {{{{ or }}}} (each placeholder is {{{{ path }}}})")


def lookup(data: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) of a path in decoded JSON; never raises."""
    value = data
    for segment in path:
        if isinstance(value, dict):
            if segment not in value:
                return False, None
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and len(segment) <= 6:
            index = int(segment)
            if index >= len(value):
                return False, None
            value = value[index]
        else:
            return False, None
    return True, value


def shown(value: Any) -> str:
    """A JSON value as template text, cut at VALUE_MAX characters."""
    if value is None:
        text = ""
    elif isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError):
            text = ""
    return text if len(text) <= VALUE_MAX else text[: VALUE_MAX - 1] + "…"
