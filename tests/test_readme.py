"""The README's configuration reference lists every variable relay reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def configuration_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Configuration")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def variables_read() -> set[str]:
    """Every environment variable name relay/settings.py (and the modules it delegates to) spells out."""
    names: set[str] = set()
    for path in (ROOT / "relay").glob("settings*.py"):
        names |= set(re.findall(r'"((?:RELAY|SLACK|GITHUB|LETTA|REDIS|LINEAR|DISCORD|GITLAB)_[A-Z0-9_]+)"',
                                path.read_text()))
    return names


def test_every_variable_relay_reads_is_in_the_configuration_reference() -> None:
    section = configuration_section()
    names = variables_read()
    assert len(names) > 20  # the search found the settings
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert missing == []
