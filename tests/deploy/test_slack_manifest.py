"""deploy/slack-app-manifest.yaml (relay's HTTP doors) and deploy/slack-app-manifest.socket.yaml
(Socket Mode, no public URL): the app relay's Slack doors expect, the same app either way."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).parent.parent.parent / "deploy"
MANIFEST = DEPLOY / "slack-app-manifest.yaml"
SOCKET_MANIFEST = DEPLOY / "slack-app-manifest.socket.yaml"
BOTH = pytest.mark.parametrize("path", [MANIFEST, SOCKET_MANIFEST], ids=["http", "socket"])


def manifest(path: Path = MANIFEST) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(path.read_text())


def test_request_urls_point_at_relays_three_slack_doors() -> None:
    data = manifest()
    [command] = data["features"]["slash_commands"]
    assert command["url"].endswith("/slack/commands") and command["command"] == "/agent"
    assert data["settings"]["event_subscriptions"]["request_url"].endswith("/slack/events")
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert data["settings"]["interactivity"]["request_url"].endswith("/slack/interactions")
    assert data["settings"]["socket_mode_enabled"] is False


@BOTH
def test_subscribes_to_mentions_and_direct_messages(path: Path) -> None:
    assert set(manifest(path)["settings"]["event_subscriptions"]["bot_events"]) == {"app_mention", "message.im"}


@BOTH
def test_asks_for_the_scopes_relay_uses_and_no_more(path: Path) -> None:
    scopes = set(manifest(path)["oauth_config"]["scopes"]["bot"])
    assert scopes == {"app_mentions:read", "chat:write", "commands", "im:history", "reactions:write",
                      "usergroups:read", "channels:history", "groups:history", "mpim:history", "users:read",
                      "files:read"}


def urls(value: Any, where: str = "") -> list[str]:
    """Every key naming a URL, anywhere in the manifest."""
    if isinstance(value, dict):
        return [f"{where}.{k}" for k in value if k in ("url", "request_url")] + \
            [u for k, v in value.items() for u in urls(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [u for i, v in enumerate(value) for u in urls(v, f"{where}[{i}]")]
    return []


def test_the_socket_mode_app_turns_socket_mode_on_and_names_no_url() -> None:
    data = manifest(SOCKET_MANIFEST)
    assert data["settings"]["socket_mode_enabled"] is True
    assert data["settings"]["interactivity"]["is_enabled"] is True
    assert urls(data) == []


def test_the_socket_mode_app_is_the_http_app_without_its_request_urls() -> None:
    http = copy.deepcopy(manifest())
    for command in http["features"]["slash_commands"]:
        del command["url"]
    del http["settings"]["event_subscriptions"]["request_url"]
    del http["settings"]["interactivity"]["request_url"]
    http["settings"]["socket_mode_enabled"] = True
    assert manifest(SOCKET_MANIFEST) == http


def test_the_socket_mode_manifest_says_which_token_to_make() -> None:
    text = SOCKET_MANIFEST.read_text()
    assert "connections:write" in text and "SLACK_APP_TOKEN" in text and "SLACK_BOT_TOKEN" in text
