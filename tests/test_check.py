"""relay check: the pure checks, and `relay check` through the CLI against real parts (a bad
routes file, a Redis port nobody answers, a test-owned redis-server set up to lose work, and the
Letta stand-in with a route whose device it does not know)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route as WebRoute

from relay.check import (
    Problem,
    Resolution,
    config_problem,
    destination_problems,
    github_secret_problems,
    github_summary,
    redis_location,
    redis_problems,
    settings_problems,
    slack_summary,
    watch_problems,
)
from relay.cli import main
from relay.dev import DEV_HOOK_SECRET
from relay.errors import ConfigError
from relay.routing import Destination, GitHubRule, Route, SlackRule, WatchRule
from relay.settings import Settings
from tests.support import ServerThread, clear_relay_env, free_port

DURABLE = {"redis_version": "7.2.4"}
NAMED = Route("named", Destination(agent_id="agent-1", connection_name="ops-box"))
BY_DEVICE = Route("laptop", Destination(agent_id="agent-2", device_id="dev-laptop"))


# -- the pure checks -------------------------------------------------------------------------------

def test_redis_older_than_7_is_an_error_and_7_or_later_passes() -> None:
    [problem] = redis_problems({"redis_version": "6.2.14"}, [])
    assert problem.severity == "error" and "6.2.14" in problem.what and "7" in problem.fix
    assert redis_problems(DURABLE, []) == []
    assert redis_problems({"redis_version": "8.0.1"}, []) == []
    assert redis_problems({}, [])[0].what == "Redis (version unknown) is older than 7"


def test_durability_findings_become_warnings_with_their_fix() -> None:
    finding = ("maxmemory-policy is allkeys-lru: when Redis fills up it may evict queued messages or "
               "de-duplication markers; set maxmemory-policy noeviction")
    assert redis_problems(DURABLE, [finding]) == [Problem(
        "warning", "maxmemory-policy is allkeys-lru: when Redis fills up it may evict queued messages or "
                   "de-duplication markers", "set maxmemory-policy noeviction")]


def test_unresolved_destinations_name_the_route_and_selector() -> None:
    problems = destination_problems([Resolution(NAMED, "conn-1"), Resolution(BY_DEVICE, None)])
    [problem] = problems
    assert "route laptop" in problem.what and "device_id=dev-laptop" in problem.what
    assert "device_id of route laptop" in problem.fix


def test_letta_refusing_the_key_is_one_problem_for_every_route() -> None:
    error = 'HTTP 401: resolving the connection: {"message": "unauthorized"}'
    [problem] = destination_problems([Resolution(NAMED, error=error), Resolution(BY_DEVICE, error=error)])
    assert "named, laptop" in problem.what and "LETTA_API_KEY" in problem.fix
    [problem] = destination_problems([Resolution(NAMED, error="connect: ConnectError: refused")])
    assert "LETTA_BASE_URL" in problem.fix


def test_what_serve_would_refuse_is_reported_together() -> None:
    problems = settings_problems(Settings())
    assert [p.what.split(" ")[0] for p in problems] == ["REDIS_URL", "no", "no"]
    assert settings_problems(Settings(redis_url="redis://r:6379/0", hook_secret=b"s" * 24, routes=(NAMED,))) == []


def watching(route: Route, **rule: Any) -> Route:
    return replace(route, watch=WatchRule(**rule))


READY = Settings(letta_api_key="key", slack_bot_token="xoxb-1", github_token="ghp-1")


def test_routes_that_do_not_watch_need_nothing_for_relay_watch() -> None:
    assert watch_problems(Settings(routes=(NAMED, watching(BY_DEVICE, enabled=False)))) == []


def test_watching_without_letta_api_key_is_one_error_naming_every_watched_route() -> None:
    routes = (watching(NAMED, slack_channel="C0CARDS"), watching(BY_DEVICE, slack_channel="C0CARDS"))
    [problem] = watch_problems(replace(READY, letta_api_key=None, routes=routes))
    assert problem.severity == "error" and "named, laptop" in problem.what and "LETTA_API_KEY" in problem.what
    assert watch_problems(replace(READY, routes=routes)) == []


def test_cards_bound_for_slack_need_the_bot_token() -> None:
    in_channel = watching(NAMED, slack_channel="C0CARDS")
    from_slack = replace(watching(BY_DEVICE), slack=SlackRule(teams=("T1",)))
    problems = watch_problems(replace(READY, slack_bot_token=None, routes=(in_channel, from_slack)))
    [token] = [p for p in problems if "SLACK_BOT_TOKEN" in p.what]
    assert token.severity == "error" and "named, laptop" in token.what and "xoxb-" in token.fix
    fallback = replace(READY, slack_bot_token=None, routes=(watching(NAMED),), slack_fallback="named")
    assert any("SLACK_BOT_TOKEN" in p.what for p in watch_problems(fallback))
    webhooks_only = replace(READY, slack_bot_token=None, routes=(watching(NAMED),))
    assert [p.severity for p in watch_problems(webhooks_only)] == ["warning"]  # no channel; nothing for Slack


def test_answers_bound_for_github_need_the_github_token() -> None:
    route = replace(watching(NAMED, slack_channel="C0CARDS"), github=GitHubRule(repositories=("octo/*",)))
    [problem] = watch_problems(replace(READY, github_token=None, routes=(route,)))
    assert problem.severity == "error" and "GITHUB_TOKEN" in problem.what and "named" in problem.what
    assert watch_problems(replace(READY, routes=(route,))) == []


def test_a_watched_route_without_a_slack_channel_is_warned_with_the_key_to_set() -> None:
    [problem] = watch_problems(replace(READY, routes=(watching(NAMED), watching(BY_DEVICE, slack_channel="C0X1"))))
    assert problem.severity == "warning" and problem.what.startswith("route named:")
    assert "no card" in problem.what and "answers still come back" in problem.what
    assert problem.fix == 'set slack_channel = "C…" in [routes.named.watch] (the channel id)'


def github_route(name: str, repositories: tuple[str, ...], secret: bytes | None = None) -> Route:
    return Route(name, Destination(agent_id=f"agent-{name}", device_id="d"),
                 github=GitHubRule(repositories=repositories, secret=secret))


def test_one_shared_github_secret_for_several_owners_is_a_warning_naming_them() -> None:
    settings = Settings(github_webhook_secret=b"shared", routes=(
        github_route("acme", ("acme/*",)), github_route("globex", ("globex/web", "globex/api"))))
    [problem] = github_secret_problems(settings)
    assert problem.severity == "warning"
    assert "acme" in problem.what and "globex" in problem.what and "GITHUB_WEBHOOK_SECRET" in problem.what
    assert "secret_env" in problem.fix


def test_a_shared_github_fallback_counts_as_every_other_owner() -> None:
    settings = Settings(github_webhook_secret=b"shared", github_fallback="rest", routes=(
        github_route("acme", ("acme/*",)), Route("rest", Destination(agent_id="r", device_id="d"))))
    [problem] = github_secret_problems(settings)
    assert "acme" in problem.what and "no route names" in problem.what


@pytest.mark.parametrize("routes", [
    (github_route("acme", ("acme/*",)), github_route("acme-web", ("ACME/web",))),   # one owner: one tenant
    (github_route("acme", ("acme/*",), b"A"), github_route("globex", ("globex/*",), b"G")),  # each its own
    (github_route("acme", ("acme/*",), b"A"), github_route("globex", ("globex/*",))),  # only one on the shared
])
def test_a_secret_per_owner_or_a_single_owner_raises_no_warning(routes: tuple[Route, ...]) -> None:
    assert github_secret_problems(Settings(github_webhook_secret=b"shared", routes=routes)) == []


def test_routes_of_one_owner_with_different_secrets_are_a_warning() -> None:
    # An organization hook signs every repository of the organization with one secret.
    settings = Settings(routes=(github_route("acme", ("acme/*",), b"A"), github_route("web", ("acme/web",), b"B")))
    [problem] = github_secret_problems(settings)
    assert problem.severity == "warning" and "acme" in problem.what and "acme, web" in problem.what


def test_the_github_summary_says_which_routes_verify_with_which_secret() -> None:
    settings = Settings(github_webhook_secret=b"shared", routes=(
        github_route("acme", ("acme/*",), b"A"), github_route("globex", ("globex/*",), b"G"),
        github_route("hello", ("octo/hello",))))
    assert github_summary(settings) == ("GitHub secrets: their own (secret_env) for acme, globex; "
                                        "GITHUB_WEBHOOK_SECRET for hello")


def test_routes_file_errors_point_at_the_routes_file() -> None:
    problem = config_problem(ConfigError("RELAY_ROUTES='r.toml': [routes.x]: unknown key 'agent'"))
    assert problem.severity == "error" and "routes file" in problem.fix


def test_redis_location_never_shows_the_password() -> None:
    assert redis_location("redis://:s3cret@db.internal:6380/2") == "db.internal:6380/2"
    assert redis_location("rediss://user:s3cret@db.internal") == "db.internal:6379/0"
    assert redis_location("unix:///run/redis.sock") == "unix:/run/redis.sock"


# -- relay check through the CLI -----------------------------------------------------------------------

@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A clean relay environment with a source and a destination, for in-process `main()` calls."""
    clear_relay_env(monkeypatch)
    monkeypatch.setenv("RELAY_HOOK_SECRET", DEV_HOOK_SECRET)
    monkeypatch.setenv("LETTA_AGENT_ID", "agent-1")
    monkeypatch.setenv("LETTA_DEVICE_ID", "device-test")
    return monkeypatch


def check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out
    return code, out, err


def numbered(out: str) -> list[str]:
    """The problem lines ("[error] …"), in order."""
    return [line.split(". ", 1)[1] for line in out.splitlines() if line[:3].strip().rstrip(".").isdigit()]


def test_a_clean_configuration_passes_with_ok_lines(env: Any, capsys: Any, redis_server: Any, stand_in: Any) -> None:
    _standin, letta_url = stand_in
    env.setenv("REDIS_URL", redis_server.url)
    env.setenv("LETTA_API_KEY", "key")
    env.setenv("LETTA_BASE_URL", letta_url)
    code, out, _ = check(capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "ok  settings: 1 route(s) (default); sources: generic webhook"
    assert lines[1].startswith("ok  Redis 7.") and f"127.0.0.1:{redis_server.port}/0" in lines[1]
    assert lines[2] == "ok  route default: agent agent-1 via device_id=device-test → connection conn-test"
    assert "problem" not in out


@pytest.mark.parametrize("routes, complaint", [
    ('[routes.ops]\nagent_id = "a"\ndevice = "d"\n', "unknown key 'device'"),
    ("[routes.ops\n", "is not valid TOML"),
    ('[routes.ops]\nagent_id = "a"\n', "set exactly one of"),
])
def test_a_bad_routes_file_is_one_readable_problem(routes: str, complaint: str, env: Any, capsys: Any,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(routes)
    env.setenv("RELAY_ROUTES", str(path))
    code, out, err = check(capsys)
    assert code == 1 and err == ""
    [problem] = numbered(out)
    assert problem.startswith("[error] RELAY_ROUTES=") and complaint in problem
    assert "fix: correct the routes file" in out
    assert "not checked: Redis and destinations" in out


SOCKET_ROUTES = """
[routes.ops]
agent_id = "agent-2"
device_id = "device-test"

[routes.ops.slack]
teams = ["T0001"]
"""
APP_TOKEN = "xapp-1-A0001-1234567890-abcdef"


def test_slack_summary_says_which_doors_slack_reaches() -> None:
    http = Settings(slack_signing_secret=b"s")
    assert slack_summary(http) is None
    assert "SLACK_SIGNING_SECRET is not needed" in (slack_summary(Settings(slack_app_token=APP_TOKEN)) or "")
    both = slack_summary(replace(http, slack_app_token=APP_TOKEN)) or ""
    assert "Socket Mode" in both and "/slack/*" in both and "not needed" not in both


def test_socket_mode_without_a_signing_secret_is_a_complete_slack_setup(env: Any, capsys: Any, redis_server: Any,
                                                                       tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(SOCKET_ROUTES)
    env.delenv("RELAY_HOOK_SECRET")
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    env.setenv("REDIS_URL", redis_server.url)
    code, out, _ = check(capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert "sources: Slack Socket Mode" in lines[0]
    assert "ok  Slack: Socket Mode (SLACK_APP_TOKEN); SLACK_SIGNING_SECRET is not needed" in out
    assert APP_TOKEN not in out


def test_a_slack_app_token_of_the_wrong_shape_is_one_problem(env: Any, capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(SOCKET_ROUTES)
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("SLACK_APP_TOKEN", "xoxb-1234-not-an-app-token")
    code, out, _ = check(capsys)
    assert code == 1
    [problem] = numbered(out)
    assert "SLACK_APP_TOKEN must be an app-level token (it starts with xapp-" in problem
    assert "xoxb-1234-not-an-app-token" not in out


def test_a_missing_routes_file_is_reported(env: Any, capsys: Any, tmp_path: Path) -> None:
    env.setenv("RELAY_ROUTES", str(tmp_path / "nowhere.toml"))
    code, out, _ = check(capsys)
    assert code == 1 and "cannot be read" in numbered(out)[0]


def test_an_unreachable_redis_is_reported_with_its_address(env: Any, capsys: Any) -> None:
    port = free_port()
    env.setenv("REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    code, out, _ = check(capsys)
    assert code == 1
    [problem] = numbered(out)
    assert problem.startswith(f"[error] Redis at 127.0.0.1:{port}/0 does not answer")
    assert "hunter2" not in out


def test_a_redis_that_could_lose_work_gets_one_problem_per_setting(env: Any, capsys: Any, redis_server: Any) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)  # the test's own server
    client.config_set("appendonly", "no")
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    env.setenv("REDIS_URL", redis_server.url)
    code, out, _ = check(capsys)
    assert code == 1
    assert numbered(out) == [
        "[warning] maxmemory-policy is allkeys-lru: when Redis fills up it may evict queued messages or "
        "de-duplication markers",
        "[warning] appendonly is off (no persistence at all): a Redis restart loses recently accepted messages",
    ]
    assert "fix: set maxmemory-policy noeviction" in out and "fix: set appendonly yes" in out
    assert "ok  settings:" in out and "not checked: destinations: LETTA_API_KEY is not set" in out


def test_a_route_whose_device_letta_does_not_know_is_reported(env: Any, capsys: Any, redis_server: Any,
                                                               stand_in: Any, tmp_path: Path) -> None:
    standin, letta_url = stand_in
    standin.devices[1].online = False  # device-ops: known, but offline
    path = tmp_path / "routes.toml"
    path.write_text('[routes.typo]\nagent_id = "agent-2"\ndevice_id = "device-tset"\n'
                    '[routes.asleep]\nagent_id = "agent-3"\nconnection_name = "ops-box"\n')
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("REDIS_URL", redis_server.url)
    env.setenv("LETTA_API_KEY", "key")
    env.setenv("LETTA_BASE_URL", letta_url)
    code, out, _ = check(capsys)
    assert code == 1
    assert "ok  route default: agent agent-1 via device_id=device-test → connection conn-test" in out
    assert numbered(out) == [
        "[error] route typo: no online connection has device_id=device-tset (Letta does not know it, "
        "or its device sent no heartbeat in 2 minutes)",
        "[error] route asleep: no online connection has connection_name=ops-box (Letta does not know it, "
        "or its device sent no heartbeat in 2 minutes)",
    ]
    assert standin.list_requests >= 3  # each route was looked up


def test_letta_refusing_the_api_key_is_reported_once(env: Any, capsys: Any, redis_server: Any) -> None:
    async def refuse(request: Any) -> JSONResponse:
        return JSONResponse({"message": "invalid api key"}, status_code=401)

    refusing = Starlette(routes=[WebRoute("/v1/environments/{rest:path}", refuse)])
    with ServerThread(refusing) as server:
        env.setenv("REDIS_URL", redis_server.url)
        env.setenv("LETTA_API_KEY", "wrong")
        env.setenv("LETTA_BASE_URL", server.url)
        code, out, _ = check(capsys)
    assert code == 1
    [problem] = numbered(out)
    assert "could not resolve route(s) default: HTTP 401" in problem
    assert "fix: check LETTA_API_KEY" in out


WATCHED_ROUTES = """
[routes.ops]
agent_id = "agent-2"
device_id = "device-test"

[routes.ops.slack]
teams = ["T0001"]

[routes.ops.watch]
"""


def test_a_watch_route_missing_what_relay_watch_needs_is_reported(env: Any, capsys: Any, redis_server: Any,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(WATCHED_ROUTES)
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("SLACK_SIGNING_SECRET", "slack-signing-secret-for-tests")
    env.setenv("REDIS_URL", redis_server.url)
    code, out, _ = check(capsys)
    assert code == 1
    problems = numbered(out)
    assert [p.split("]")[0] + "]" for p in problems] == ["[error]", "[error]", "[warning]"]
    assert "route(s) ops opt in to relay watch, which needs LETTA_API_KEY" in problems[0]
    assert "route(s) ops: relay watch posts approval cards" in problems[1] and "SLACK_BOT_TOKEN" in problems[1]
    assert problems[2].startswith("[warning] route ops: relay watch has no Slack channel")
    assert 'fix: set slack_channel = "C…" in [routes.ops.watch] (the channel id)' in out
    assert "ok  relay watch" not in out


def test_a_ready_watch_route_is_an_ok_line(env: Any, capsys: Any, redis_server: Any, stand_in: Any,
                                           tmp_path: Path) -> None:
    _standin, letta_url = stand_in
    path = tmp_path / "routes.toml"
    path.write_text(WATCHED_ROUTES + 'slack_channel = "C0CARDS"\n')
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("SLACK_SIGNING_SECRET", "slack-signing-secret-for-tests")
    env.setenv("SLACK_BOT_TOKEN", "xoxb-for-tests")
    env.setenv("REDIS_URL", redis_server.url)
    env.setenv("LETTA_API_KEY", "key")
    env.setenv("LETTA_BASE_URL", letta_url)
    code, out, _ = check(capsys)
    assert code == 0, out
    assert "ok  relay watch: ops (cards in C0CARDS, decisions over socket)" in out.splitlines()


# -- the Linear, GitLab, Discord and mapped doors ----------------------------------------------------

def test_linear_routes_without_an_api_key_are_an_error_gitlab_and_discord_without_tokens_warnings() -> None:
    from relay.check import door_problems, door_sources
    from relay.door_rules import DiscordRule, GitLabRule, LinearRule

    routes = (Route("eng", NAMED.destination, linear=LinearRule(organizations=("org-1",), teams=("ENG",))),
              Route("gl", NAMED.destination, gitlab=GitLabRule(projects=("g/*",), access_level=0)),
              Route("dc", NAMED.destination, discord=DiscordRule(guilds=("1",))))
    settings = Settings(routes=routes, linear_webhook_secret=b"s", gitlab_webhook_token=b"t",
                        discord_public_key=b"\0" * 32)
    problems = door_problems(settings)
    assert [(p.severity, p.what.split(":")[0].split(" accept")[0]) for p in problems] == [
        ("error", "route(s) eng"), ("warning", "route(s) gl"), ("warning", "route(s) dc")]
    assert "LINEAR_API_KEY" in problems[0].fix and "GITLAB_TOKEN" in problems[1].fix
    assert "DISCORD_BOT_TOKEN" in problems[2].fix
    assert door_sources(settings) == ["Linear", "GitLab", "Discord"]
    from relay.check import settings_summary
    from relay.door_rules import MappedRule
    from relay.template import parse as template

    pd = Route("pd", NAMED.destination, mapped=MappedRule("hmac", template("x"), ("id",)))
    assert settings_summary(replace(settings, routes=(*routes, pd))).endswith(
        "sources: Linear, GitLab, Discord, mapped webhooks (/hooks/mapped/pd)")
    ready = replace(settings, linear_api_key="lin_api_x", gitlab_token="glpat", discord_bot_token="bot")
    assert door_problems(ready) == []


def test_relay_check_names_the_new_doors_and_what_they_lack(env: Any, capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[routes.pd]\nagent_id = "a"\ndevice_id = "d"\n[routes.pd.mapped]\nverify = "hmac"\n'
                    'secret_env = "PD_SECRET"\nheader = "X-PagerDuty-Signature"\nprefix = "v1="\n'
                    'identity = "event.id"\ntext = "{{ event.event_type }}"\n'
                    '[routes.eng]\nagent_id = "a"\ndevice_id = "d"\n[routes.eng.linear]\nteams = ["ENG"]\n')
    env.setenv("RELAY_ROUTES", str(path))
    env.setenv("PD_SECRET", "pagerduty-secret")
    env.setenv("LINEAR_WEBHOOK_SECRET", "linear-secret")
    code, out, _ = check(capsys)
    assert code == 1
    assert any(p.startswith("[error] route(s) eng accept Linear agent sessions") for p in numbered(out))


def test_linear_team_keys_without_an_organization_are_a_cross_workspace_warning() -> None:
    from relay.check import door_problems
    from relay.door_rules import LinearRule

    loose = Route("eng", NAMED.destination, linear=LinearRule(teams=("ENG",)))
    [problem] = door_problems(Settings(routes=(loose,), linear_webhook_secret=b"s", linear_api_key="k"))
    assert problem.severity == "warning" and "any workspace" in problem.what and "organizations" in problem.fix
    pinned = replace(loose, linear=LinearRule(organizations=("org-1",), teams=("ENG",)))
    assert door_problems(Settings(routes=(pinned,), linear_webhook_secret=b"s", linear_api_key="k")) == []
