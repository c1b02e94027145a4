"""Who reaches a route through the Linear, GitLab, Discord and mapped-webhook doors, and who may
decide its approvals: one rule per door on a route (`[routes.NAME.linear]`, …), and how a
request picks its route.

Pure: no I/O. `door_config.py` parses the rules from the routes file; `routing.Route` carries
them; the doors ask `pick_*` for the route of a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from relay.errors import NoRoute

if TYPE_CHECKING:
    from relay.routing import Route
    from relay.template import Template

#: GitLab's member access levels, by the name a routes file uses.
GITLAB_ACCESS_LEVELS = {"guest": 10, "reporter": 20, "developer": 30, "maintainer": 40, "owner": 50}


@dataclass(frozen=True)
class LinearRule:
    """Which Linear workspaces and teams reach a route (agent sessions, and comments that carry
    the trigger), and with which webhook secret."""

    organizations: tuple[str, ...] = ()  # organization ids; empty: any (then teams decide)
    teams: tuple[str, ...] = ()  # team keys ("ENG") or ids; empty: every team of those organizations
    trigger: str = "@agent"  # what a comment must carry (agent sessions need none)
    comments: bool = True  # comment webhooks with the trigger reach the agent
    secret: bytes | None = field(default=None, repr=False)  # this route's signing secret (else the shared one)

    def matches(self, organization: str, team_key: str, team_id: str) -> int:
        """2 for a listed team, 1 for a whole listed organization, 0 for no match."""
        if self.organizations and organization not in self.organizations:
            return 0
        if self.teams:
            wanted = {t.lower() for t in self.teams}
            return 2 if team_key.lower() in wanted or team_id.lower() in wanted else 0
        return 1


@dataclass(frozen=True)
class GitLabRule:
    """Which GitLab projects reach a route, what calls the agent, and who may write to it."""

    projects: tuple[str, ...]  # "group/sub/project" or "group/*" (every project below the group)
    trigger: str = "@agent"
    access_level: int = GITLAB_ACCESS_LEVELS["developer"]  # the least member access that may write
    approvers: tuple[str, ...] = ()  # usernames whose /approve and /deny lines count
    actions: tuple[str, ...] = ("create",)  # note actions that reach the agent
    secret: bytes | None = field(default=None, repr=False)  # this route's X-Gitlab-Token (else the shared one)

    def matches(self, project: str) -> int:
        """Longer is better: len(pattern) for a match (an exact path beats its group's wildcard), 0 for none."""
        wanted = project.lower()
        best = 0
        for pattern in (p.lower() for p in self.projects):
            if pattern == wanted:
                best = max(best, 10_000)
            elif pattern.endswith("/*") and wanted.startswith(pattern[:-1]):
                best = max(best, len(pattern))
        return best


@dataclass(frozen=True)
class DiscordRule:
    """Which Discord servers and channels reach a route, and who may decide its approvals."""

    guilds: tuple[str, ...]
    channels: tuple[str, ...] = ()  # empty: every channel of those servers
    approvers: tuple[str, ...] = ()  # Discord user ids
    approver_roles: tuple[str, ...] = ()  # Discord role ids

    @property
    def has_approvers(self) -> bool:
        return bool(self.approvers or self.approver_roles)

    def may_decide(self, user: str, roles: Iterable[str]) -> bool:
        return user in self.approvers or bool(set(roles) & set(self.approver_roles))


@dataclass(frozen=True)
class HmacScheme:
    """A signature header: HMAC of the raw body with a named algorithm, prefix and encoding."""

    header: str  # lower case
    algorithm: str = "sha256"
    prefix: str = ""  # e.g. "v1=" or "sha256="
    encoding: str = "hex"  # or "base64"
    separator: str | None = None  # several signatures in one header (PagerDuty: ",")


@dataclass(frozen=True)
class MappedRule:
    """A JSON webhook from any sender mapped to a message: how it is verified, what identifies
    a delivery, and the text the agent gets."""

    verify: str  # "standard" (v1, HMAC), "standard-ed25519" (v1a), "hmac"
    template: Template
    identity: tuple[str, ...]  # JSON paths into the signed body, or ("webhook-id",)
    key: bytes = field(default=b"", repr=False)  # the HMAC secret, or the Ed25519 public key
    hmac: HmacScheme | None = None  # for verify = "hmac"


def _sorted(routes: Iterable[Route]) -> list[Route]:
    return sorted(routes, key=lambda r: r.name)


def pick_linear(routes: Iterable[Route], organization: str, team_key: str, team_id: str) -> Route:
    """The route of a Linear workspace and team: a route listing the team wins over a whole
    workspace's. Raises NoRoute."""
    scored = [(r.linear.matches(organization, team_key, team_id), r) for r in _sorted(routes) if r.linear]
    matching = [(score, r) for score, r in scored if score]
    if not matching:
        raise NoRoute(f"Linear team {team_key or team_id or '?'} of organization {organization} is not routed")
    top = max(score for score, _ in matching)
    return next(r for score, r in matching if score == top)


def linear_secret(routes: Iterable[Route], organization: str, team_key: str, team_id: str) -> bytes | None:
    """The secret of the route a payload claims, or None (the shared secret then)."""
    try:
        route = pick_linear(routes, organization, team_key, team_id)
    except NoRoute:
        return None
    return route.linear.secret if route.linear else None


def pick_gitlab(routes: Iterable[Route], project: str) -> Route:
    """The route of a GitLab project ("group/project"): an exact path wins, then the longest
    group wildcard. Raises NoRoute."""
    scored = [(r.gitlab.matches(project), r) for r in _sorted(routes) if r.gitlab]
    matching = [(score, r) for score, r in scored if score]
    if not matching:
        raise NoRoute(f"GitLab project {project} is not routed to an agent")
    top = max(score for score, _ in matching)
    return next(r for score, r in matching if score == top)


def pick_discord(routes: Iterable[Route], guild: str, channel: str) -> Route:
    """The route of a Discord server and channel: a route listing the channel wins over a
    server-wide route. Raises NoRoute."""
    in_guild = [r for r in _sorted(routes) if r.discord and guild in r.discord.guilds]
    if not in_guild:
        raise NoRoute(f"Discord server {guild} is not connected to relay")
    for route in in_guild:
        if route.discord and channel in route.discord.channels:
            return route
    for route in in_guild:
        if route.discord and not route.discord.channels:
            return route
    raise NoRoute(f"Discord channel {channel} is not routed to an agent")
