"""deploy/slack-app-manifest.yaml: the app relay's Slack doors expect."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFEST = Path(__file__).parent.parent.parent / "deploy" / "slack-app-manifest.yaml"


def manifest() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(MANIFEST.read_text())


def test_request_urls_point_at_relays_three_slack_doors() -> None:
    data = manifest()
    [command] = data["features"]["slash_commands"]
    assert command["url"].endswith("/slack/commands") and command["command"] == "/agent"
    assert data["settings"]["event_subscriptions"]["request_url"].endswith("/slack/events")
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert data["settings"]["interactivity"]["request_url"].endswith("/slack/interactions")


def test_subscribes_to_mentions_and_direct_messages() -> None:
    assert set(manifest()["settings"]["event_subscriptions"]["bot_events"]) == {"app_mention", "message.im"}


def test_asks_for_the_scopes_relay_uses_and_no_more() -> None:
    scopes = set(manifest()["oauth_config"]["scopes"]["bot"])
    assert scopes == {"app_mentions:read", "chat:write", "commands", "im:history", "reactions:write",
                      "usergroups:read", "channels:history", "groups:history", "mpim:history", "users:read",
                      "files:read"}
