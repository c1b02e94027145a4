"""The configuration of the Linear, GitLab, Discord and mapped doors: their variables, their
route tables, and the checks that a door is never served unverifiable nor configured idle."""

from __future__ import annotations

from typing import Any

import pytest

from relay.door_rules import GITLAB_ACCESS_LEVELS
from relay.errors import ConfigError
from relay.settings import load

BASE = '[routes.ops]\nagent_id = "agent-1"\ndevice_id = "dev"\n'


def loaded(routes: str, **env: str) -> Any:
    return load({"RELAY_ROUTES": "routes.toml", **env}, read_text=lambda path: BASE + routes)


def refused(routes: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        loaded(routes, **env)
    return str(caught.value)


def test_every_door_table_loads_into_its_rule() -> None:
    settings = loaded('[routes.ops.linear]\nteams = ["ENG"]\nsecret_env = "LINEAR_ACME"\n'
                      '[routes.ops.gitlab]\nprojects = ["acme/*", "acme/app"]\naccess_level = "maintainer"\n'
                      'approvers = ["alice"]\n[routes.ops.discord]\nguilds = ["123"]\napprover_roles = ["456"]\n',
                      LINEAR_ACME="per-team-secret", GITLAB_WEBHOOK_TOKEN="t", GITLAB_TOKEN="glpat-x",
                      DISCORD_PUBLIC_KEY="AB" * 32, LINEAR_API_KEY="lin_api_x")
    [route] = settings.routes
    assert route.linear.teams == ("ENG",) and route.linear.secret == b"per-team-secret"
    assert route.gitlab.access_level == GITLAB_ACCESS_LEVELS["maintainer"] and route.gitlab.secret is None
    assert route.discord.approver_roles == ("456",) and settings.discord_public_key == bytes.fromhex("AB" * 32)
    assert (settings.linear_api_url, settings.gitlab_url, settings.discord_api_url) == (
        "https://api.linear.app/graphql", "https://gitlab.com", "https://discord.com/api/v10")


@pytest.mark.parametrize("routes, env, complaint", [
    ('[routes.ops.linear]\nteams = ["ENG"]\n', {}, "LINEAR_WEBHOOK_SECRET is not set"),
    ("", {"LINEAR_WEBHOOK_SECRET": "s"}, "no route accepts it"),
    ('[routes.ops.linear]\n', {"LINEAR_WEBHOOK_SECRET": "s"}, "organizations"),
    ('[routes.ops.linear]\nteams = ["E NG"]\n', {"LINEAR_WEBHOOK_SECRET": "s"}, "team keys"),
    ('[routes.ops.linear]\nteams = ["ENG"]\nsecret_env = "RELAY_X"\n', {}, "not RELAY_"),
    ('[routes.ops.linear]\nteams = ["ENG"]\nsecret_env = "NOT_SET"\n', {}, "which is not set"),
    ('[routes.ops.gitlab]\nprojects = ["acme/*"]\n', {"GITLAB_WEBHOOK_TOKEN": "t"}, "GITLAB_TOKEN"),
    ('[routes.ops.gitlab]\nprojects = ["acme/*"]\naccess_level = "any"\n', {}, "GITLAB_WEBHOOK_TOKEN is not set"),
    ('[routes.ops.gitlab]\nprojects = ["acme"]\n', {"GITLAB_WEBHOOK_TOKEN": "t"}, "group/project"),
    ('[routes.ops.gitlab]\nprojects = ["a/b"]\naccess_level = "admin"\n', {"GITLAB_WEBHOOK_TOKEN": "t"},
     "access_level"),
    ('[routes.ops.gitlab]\nprojects = ["a/b"]\nactions = ["delete"]\n', {"GITLAB_WEBHOOK_TOKEN": "t"}, "actions"),
    ('[routes.ops.discord]\nguilds = ["123"]\n', {}, "DISCORD_PUBLIC_KEY is not set"),
    ('[routes.ops.discord]\nguilds = []\n', {"DISCORD_PUBLIC_KEY": "ab" * 32}, "at least one"),
    ('[routes.ops.discord]\nguilds = ["abc"]\n', {"DISCORD_PUBLIC_KEY": "ab" * 32}, "Discord ids"),
    ('[routes.ops.discord]\nguilds = ["1"]\nextra = 1\n', {"DISCORD_PUBLIC_KEY": "ab" * 32}, "unknown key 'extra'"),
    ("", {"DISCORD_PUBLIC_KEY": "xyz"}, "64 hex digits"),
    ("", {"GITLAB_WEBHOOK_TOKEN": "  "}, "blank"),
    ("", {"LINEAR_API_URL": "ftp://x"}, "http:// or https://"),
    ("", {"DISCORD_BOT_TOKEN": "two words"}, "one token"),
])
def test_a_door_that_could_not_work_is_refused_at_start(routes: str, env: dict[str, str], complaint: str) -> None:
    assert complaint in refused(routes, **env)


def test_the_new_door_tables_are_known_route_parts() -> None:
    assert "unknown key 'telegram'" in refused("telegram = 1\n")


def test_the_readme_configuration_reference_lists_every_door_variable() -> None:
    import re
    from pathlib import Path

    from relay.door_config import VARIABLES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    reference = readme[readme.index("## Configuration"):]
    reference = reference[:reference.index("\n## ", 3)]
    assert sorted(set(VARIABLES) - set(re.findall(r"`([A-Z][A-Z0-9_]+)`", reference))) == []
