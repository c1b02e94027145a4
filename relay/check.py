"""`relay check`: is this configuration ready to run?

The checks are pure functions: settings (or the ConfigError loading them raised), what the
routes that opt in to `relay watch` need, Redis's INFO and the queue's durability findings,
and how each route's destination resolved → `Problem`s.
`run` does the I/O around them: load settings, ask Redis, and (with LETTA_API_KEY) ask Letta's
environments API for each route, the way the worker resolves it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping
from urllib.parse import urlsplit

from relay.errors import ConfigError, QueueUnavailable, ResolveFailed
from relay.letta import LettaClient
from relay.queue import Queue
from relay.redis_nodes import Topology, open_redis
from relay.routing import Route
from relay.settings import Settings, load

MIN_REDIS = (7, 0)
LETTA_TIMEOUT = 10.0


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]  # error: relay will not work; warning: it may lose work
    what: str
    fix: str


@dataclass(frozen=True)
class Resolution:
    """How one route's destination resolved: a live connection id, nothing, or an error asking."""

    route: Route
    connection_id: str | None = None
    error: str | None = None


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)  # what passed, one line each
    skipped: list[str] = field(default_factory=list)  # what could not be checked, and why
    problems: list[Problem] = field(default_factory=list)


# -- the checks (pure) ---------------------------------------------------------------------------

def config_problem(error: ConfigError) -> Problem:
    text = str(error)
    if "RELAY_ROUTES" in text or "routes file" in text:
        fix = "correct the routes file (deploy/routes.example.toml shows every key)"
    else:
        fix = "correct the setting it names (the README's Configuration section lists them all)"
    return Problem("error", text, fix)


def settings_problems(settings: Settings) -> list[Problem]:
    """What `relay serve` and `relay worker` would refuse to start without."""
    problems = []
    if not settings.redis_url:
        problems.append(Problem("error", "REDIS_URL is not set: relay serve and relay worker need Redis",
                                "set REDIS_URL=redis://HOST:6379/0 (only relay dev runs without it)"))
    if not sources(settings):
        problems.append(Problem("error", "no source is configured: relay serve would accept nothing",
                                "set RELAY_HOOK_SECRET (`relay secret` makes one), SLACK_SIGNING_SECRET (or "
                                "SLACK_APP_TOKEN), GITHUB_WEBHOOK_SECRET, or route Linear, GitLab, Discord or a "
                                "mapped webhook"))
    if not settings.routes:
        problems.append(Problem("error", "no destination is configured",
                                "set LETTA_AGENT_ID and one of LETTA_CONNECTION_ID / LETTA_DEVICE_ID / "
                                "LETTA_CONNECTION_NAME, or RELAY_ROUTES"))
    return problems


def sources(settings: Settings) -> list[str]:
    found = [name for name, served in (("generic webhook", settings.hook_secret is not None),
                                       ("Slack", settings.slack_signing_secret is not None),
                                       ("Slack Socket Mode", settings.slack_app_token is not None),
                                       ("GitHub", settings.serves_github)) if served]
    return found + door_sources(settings)


def slack_summary(settings: Settings) -> str | None:
    """How Slack reaches relay: over HTTP (signed requests), over Socket Mode, or both."""
    if settings.slack_app_token is None:
        return None
    if settings.slack_signing_secret is None:
        return ("Slack: Socket Mode (SLACK_APP_TOKEN); SLACK_SIGNING_SECRET is not needed, and without it "
                "the HTTP doors /slack/* are not served")
    return "Slack: Socket Mode (SLACK_APP_TOKEN) and the HTTP doors /slack/* (SLACK_SIGNING_SECRET)"


def github_secret_problems(settings: Settings) -> list[Problem]:
    """Who can sign for whom. Whoever holds a route's secret can sign deliveries for every
    repository that route (or, for GITHUB_WEBHOOK_SECRET, any route on it) takes."""
    problems = []
    shared = settings.github_routes_on_the_shared_secret
    owners = sorted({_owner(p).lower() for r in shared if r.github for p in r.github.repositories})
    if settings.github_fallback in {r.name for r in shared}:
        owners.append("any repository no route names")
    if len(owners) > 1:
        problems.append(Problem(
            "warning", f"route(s) {_names(shared)} share GITHUB_WEBHOOK_SECRET across owners "
                       f"({', '.join(owners)}): any organization given it can sign deliveries, authors and "
                       "/approve lines for the others' repositories",
            "give each organization's routes a secret of their own: secret_env = \"GITHUB_WEBHOOK_SECRET_ACME\" "
            "in [routes.NAME.github], set to the secret of that organization's hook (fine as is when every "
            "hook is yours)"))
    by_owner: dict[str, list[Route]] = {}
    for route in settings.routes:
        for pattern in route.github.repositories if route.github else ():
            by_owner.setdefault(_owner(pattern).lower(), []).append(route)
    for owner, routes in sorted(by_owner.items()):
        secrets = {r.github.secret or settings.github_webhook_secret for r in routes if r.github}
        if len(secrets) > 1:
            problems.append(Problem(
                "warning", f"owner {owner}: routes {_names(dict.fromkeys(routes))} verify with different secrets, "
                           "but an organization hook signs every repository of the organization with one",
                "give these routes the same secret_env, unless each repository has a hook of its own"))
    return problems


def github_summary(settings: Settings) -> str:
    own = [r for r in settings.routes if r.github and r.github.secret]
    shared = settings.github_routes_on_the_shared_secret
    parts = ([f"their own (secret_env) for {_names(own)}"] if own else []) + \
            ([f"GITHUB_WEBHOOK_SECRET for {_names(shared)}"] if shared else [])
    return f"GitHub secrets: {'; '.join(parts)}"


def _owner(pattern: str) -> str:
    return pattern.split("/", 1)[0]


def door_sources(settings: Settings) -> list[str]:
    """The Linear, GitLab, Discord and mapped doors the routes open."""
    routes = settings.routes
    mapped = [f"/hooks/mapped/{r.name}" for r in routes if r.mapped]
    return ([*(["Linear"] if any(r.linear for r in routes) else []),
             *(["GitLab"] if any(r.gitlab for r in routes) else []),
             *(["Discord"] if settings.discord_public_key is not None else []),
             *([f"mapped webhooks ({', '.join(mapped)})"] if mapped else [])])


def door_problems(settings: Settings) -> list[Problem]:
    """What the Linear, GitLab and Discord doors need beyond their secrets (which settings
    already insists on): the API tokens that tell people what became of their messages."""
    problems = []
    linear = [r for r in settings.routes if r.linear]
    if linear and not settings.linear_api_key:
        problems.append(Problem(
            "error", f"route(s) {_names(linear)} accept Linear agent sessions, and without LINEAR_API_KEY relay "
                     "posts no first activity within Linear's 10 s (the agent shows as unresponsive) and no answer",
            "set LINEAR_API_KEY (a personal API key lin_api_…, or the agent app's OAuth access token)"))
    anywhere = [r for r in linear if r.linear and r.linear.teams and not r.linear.organizations]
    if anywhere:
        problems.append(Problem(
            "warning", f"route(s) {_names(anywhere)} match Linear team keys in any workspace: an OAuth app signs every "
                       "workspace's webhooks with one secret, so a team of the same key in another workspace that "
                       "installs the app reaches this route",
            "add organizations = [\"<organization id>\"] to [routes.NAME.linear] (fine as is for a webhook of "
            "your own workspace with its own secret)"))
    gitlab = [r for r in settings.routes if r.gitlab]
    if gitlab and not settings.gitlab_token:
        problems.append(Problem(
            "warning", f"route(s) {_names(gitlab)}: without GITLAB_TOKEN relay awards no emoji and posts no answer",
            "set GITLAB_TOKEN (a token with the api scope on the routed projects; GITLAB_URL for self-managed)"))
    discord = [r for r in settings.routes if r.discord]
    if discord and not settings.discord_bot_token:
        problems.append(Problem(
            "warning", f"route(s) {_names(discord)}: without DISCORD_BOT_TOKEN there are no approval cards in Discord, "
                       "and an answer later than 15 minutes (the interaction's webhook) is dropped",
            "set DISCORD_BOT_TOKEN (the application's bot token; the bot needs Send Messages in the routed channels)"))
    return problems


def settings_summary(settings: Settings) -> str:
    names = ", ".join(route.name for route in settings.routes) or "none"
    return f"settings: {len(settings.routes)} route(s) ({names}); sources: {', '.join(sources(settings)) or 'none'}"


def watch_problems(settings: Settings) -> list[Problem]:
    """What `relay watch` needs for the routes that opt in ([routes.NAME.watch], enabled).

    Cards go to the Slack thread of the message that started the turn, else to the route's
    `slack_channel`; answers go back where each message came from. Posting either in Slack
    takes the bot token, answering on GitHub the GitHub token.
    """
    watched = [route for route in settings.routes if route.watched]
    if not watched:
        return []
    problems = []
    if not settings.letta_api_key:
        problems.append(Problem(
            "error", f"route(s) {_names(watched)} opt in to relay watch, which needs LETTA_API_KEY "
                     "to open Letta's status sockets",
            "set LETTA_API_KEY, or remove [routes.NAME.watch] from the routes file"))
    to_slack = [r for r in watched if _channel(r) is not None or _takes_slack(r, settings)]
    if to_slack and not settings.slack_bot_token:
        problems.append(Problem(
            "error", f"route(s) {_names(to_slack)}: relay watch posts approval cards and thread answers in "
                     "Slack, and without SLACK_BOT_TOKEN it posts none (nobody in Slack sees the agent's requests)",
            "set SLACK_BOT_TOKEN=xoxb-… (the Slack app's bot token, with chat:write)"))
    to_github = [r for r in watched if r.github is not None or settings.github_fallback == r.name]
    if to_github and not settings.github_token:
        problems.append(Problem(
            "error", f"route(s) {_names(to_github)}: relay watch answers GitHub comments on their issue, "
                     "and without GITHUB_TOKEN it answers none",
            "set GITHUB_TOKEN (a token that may comment on the routed repositories)"))
    for route in watched:
        if _channel(route) is None:
            problems.append(Problem(
                "warning", f"route {route.name}: relay watch has no Slack channel for approval requests of "
                           "turns that no Slack mention started (a slash command, a generic webhook, GitHub, "
                           "another client): they get no card; answers still come back",
                f"set slack_channel = \"C…\" in [routes.{route.name}.watch] (the channel id)"))
    return problems


def watch_summary(settings: Settings) -> str:
    parts = [f"{route.name} (cards in {_channel(route) or 'the thread only'}, "
             f"decisions over {route.approvals})"
             for route in settings.routes if route.watched]
    return f"relay watch: {', '.join(parts)}"


def _channel(route: Route) -> str | None:
    return route.watch.slack_channel if route.watch is not None else None


def _takes_slack(route: Route, settings: Settings) -> bool:
    return route.slack is not None or settings.slack_fallback == route.name


def _names(routes: Iterable[Route]) -> str:
    return ", ".join(route.name for route in routes)


def redis_problems(info: Mapping[str, Any], durability: Iterable[str]) -> list[Problem]:
    """INFO's server section, and Queue.durability_warnings() (what could lose queued work)."""
    problems = []
    version = str(info.get("redis_version", ""))
    parsed = _version(version)
    if parsed is None or parsed < MIN_REDIS:
        problems.append(Problem("error", f"Redis {version or '(version unknown)'} is older than 7",
                                "upgrade to Redis 7 or later (relay's queue scripts are written and tested for it)"))
    for warning in durability:
        what, _, fix = warning.partition("; ")
        problems.append(Problem("warning", what, fix or "see the README's Redis settings"))
    return problems


def topology_problems(topology: Topology, min_replicas: int) -> list[Problem]:
    """Masters with fewer replicas than RELAY_REDIS_MIN_REPLICAS asks for: every webhook for
    their partitions would be answered 503."""
    short = [m for m in topology.masters if m.replicas < min_replicas]
    if not short:
        return []
    names = ", ".join(f"{m.name} ({m.replicas})" for m in short)
    return [Problem("error", f"RELAY_REDIS_MIN_REPLICAS={min_replicas} but these masters have fewer replicas: "
                             f"{names}; their webhooks would all be answered 503",
                    "add replicas, or lower RELAY_REDIS_MIN_REPLICAS")]


def unreachable_redis(location: str, error: str) -> Problem:
    return Problem("error", f"Redis at {location} does not answer ({error})",
                   "start Redis, or correct REDIS_URL (host, port, password; rediss:// for TLS)")


def destination_problems(resolutions: Iterable[Resolution]) -> list[Problem]:
    """Routes whose destination names no online connection, and Letta refusing to be asked."""
    problems = []
    failed: dict[str, list[str]] = {}
    for resolution in resolutions:
        route = resolution.route
        if resolution.error is not None:
            failed.setdefault(resolution.error, []).append(route.name)
        elif resolution.connection_id is None:
            kind, value = route.destination.selector
            problems.append(Problem(
                "error", f"route {route.name}: no online connection has {kind}={value} "
                         "(Letta does not know it, or its device sent no heartbeat in 2 minutes)",
                f"start Letta Code's listener on that device, or correct {kind} of route {route.name}"))
    for error, names in failed.items():
        refused = re.search(r"\bHTTP 40[13]\b", error) is not None
        problems.append(Problem(
            "error", f"Letta's environments API could not resolve route(s) {', '.join(names)}: {error}",
            "check LETTA_API_KEY (Letta refused it)" if refused else "check LETTA_BASE_URL and the network"))
    return problems


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, never its password (for messages)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    try:
        port = parts.port or 6379
    except ValueError:
        return "REDIS_URL"
    return f"{parts.hostname or 'localhost'}:{port}/{parts.path.lstrip('/') or '0'}"


def _version(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


# -- the runner (I/O) ----------------------------------------------------------------------------

async def run(environ: Mapping[str, str]) -> Report:
    report = Report()
    try:
        settings = load(environ)
    except ConfigError as exc:
        report.problems.append(config_problem(exc))
        report.skipped.append("Redis and destinations: the settings must load first")
        return report
    found = settings_problems(settings)
    if not found:
        report.ok.append(settings_summary(settings))
    report.problems += found
    slack = slack_summary(settings)
    if slack is not None:
        report.ok.append(slack)
    if settings.uses_github:
        secrets = github_secret_problems(settings)
        if not secrets:
            report.ok.append(github_summary(settings))
        report.problems += secrets
    report.problems += door_problems(settings)
    watching = watch_problems(settings)
    if any(route.watched for route in settings.routes) and not watching:
        report.ok.append(watch_summary(settings))
    report.problems += watching
    if settings.redis_url:
        await _check_redis(settings, report)
    if not settings.letta_api_key:
        report.skipped.append("destinations: LETTA_API_KEY is not set (relay worker needs it)")
    elif settings.routes:
        await _check_destinations(settings, report)
    return report


async def _check_redis(settings: Settings, report: Report) -> None:
    url = settings.redis_url or ""
    location = redis_location(url)
    try:
        redis = await open_redis(url, cluster=settings.redis_cluster, socket_timeout=5.0)  # type: ignore[arg-type]
    except QueueUnavailable as exc:
        report.problems.append(unreachable_redis(location, str(exc).removeprefix("redis: ")))
        return
    queue = Queue(redis, prefix=settings.key_prefix)
    try:
        try:
            info = await queue.server_info()
            topology = await queue.topology()
        except QueueUnavailable as exc:
            report.problems.append(unreachable_redis(location, str(exc).removeprefix("redis: ")))
            return
        found = redis_problems(info, await queue.durability_warnings())
    finally:
        await queue.aclose()
        await redis.aclose()
    found += topology_problems(topology, settings.redis_min_replicas)
    if not found:
        report.ok.append(f"Redis {info.get('redis_version')} at {location}: persistent, never evicts")
    if topology.cluster:
        report.ok.append("\n    ".join(topology.describe()))
    report.problems += found


async def _check_destinations(settings: Settings, report: Report) -> None:
    letta = LettaClient(settings.letta_base_url, settings.letta_api_key or "", timeout=LETTA_TIMEOUT)
    resolutions = []
    try:
        for route in settings.routes:
            try:
                resolutions.append(Resolution(route, await letta.connection_for(route.destination)))
            except ResolveFailed as failed:  # Letta refused, or could not be reached
                resolutions.append(Resolution(route, error=failed.outcome.describe()))
    finally:
        await letta.aclose()
    for resolution in resolutions:
        route = resolution.route
        if resolution.connection_id is not None:
            given = route.destination.selector[0] == "connection_id"
            report.ok.append(f"route {route.name}: {route.destination.describe()}"
                             + (" (a connection id is used as given, not looked up)" if given
                                else f" → connection {resolution.connection_id}"))
    report.problems += destination_problems(resolutions)
