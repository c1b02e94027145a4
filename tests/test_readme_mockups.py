"""The README's mock-ups of relay's Slack messages are what relay posts, laid out as Slack would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.answers import progress_text
from relay.routing import Destination
from relay.sources.slack import Card, Decision, card_message, closed_message, decided_message
from tests.blockkit_text import render

README = Path(__file__).resolve().parent.parent / "README.md"
CARD = Card(card_id="c1", tool_call_id="toolu_01", tool_name="Bash",
            arguments={"command": "kubectl rollout restart deploy/api"}, route="incidents",
            destination=Destination(agent_id="agent-ops", device_id="ops-box"), channel="C0123ABC")
MOCKUPS = {
    "pending card": card_message(CARD),
    "approved card": decided_message(CARD.decided(Decision(True, "U0BOB", "bob", 1764806400.0))),
    "denied card": decided_message(CARD.decided(Decision(False, "U0BOB", "bob", 1764806400.0,
                                                         reason="not during the freeze"))),
    "closed card": closed_message(CARD.closed_with("answered elsewhere")),
    "progress message": {"text": progress_text(("Let me check the rollout.",), "running Bash", "slack")},
}


def readme_mockup(name: str) -> str:
    found = re.search(rf"<!-- mock-up: {name} -->\n````text\n(.*?)\n````", README.read_text(), re.S)
    assert found, f"the README has no mock-up named {name!r}"
    return found.group(1)


@pytest.mark.parametrize("name", sorted(MOCKUPS))
def test_the_readme_shows_what_relay_posts(name: str) -> None:
    assert readme_mockup(name) == render(MOCKUPS[name])
