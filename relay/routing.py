"""Where a message goes: destinations, named routes, and choosing a live connection.

Pure: no I/O. `letta.py` fetches the environment list; `choose_connection` decides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from relay.errors import BadRequest, NoRoute, quoted

if TYPE_CHECKING:
    from relay.door_rules import DiscordRule, GitLabRule, LinearRule, MappedRule

#: The three ways a destination can name its Letta environment; exactly one is set.
SELECTORS = ("connection_id", "device_id", "connection_name")
#: A destination's fields, as its dict form names them.
DESTINATION_KEYS = ("agent_id", "conversation_id", *SELECTORS)

#: Letta's own CLI treats a connection as online only with a heartbeat this recent.
ONLINE_HEARTBEAT_MS = 120_000

DEFAULT_ROUTE = "default"


@dataclass(frozen=True)
class Destination:
    """A Letta agent conversation, reached through one environment connection."""

    agent_id: str
    conversation_id: str | None = None
    connection_id: str | None = None
    device_id: str | None = None
    connection_name: str | None = None

    @property
    def selector(self) -> tuple[str, str]:
        """Which field names the environment, and its value: ("device_id", "dev-1")."""
        for name in SELECTORS:
            value = getattr(self, name)
            if value:
                return name, value
        raise ValueError("destination names no connection")  # settings make this unreachable

    @cached_property  # routes are long-lived: computed once per destination, not per message
    def conversation_key(self) -> str:
        """Stable short key of the conversation; messages with the same key keep their order."""
        conversation = self.conversation_id or "default"
        digest = hashlib.blake2b(f"{self.agent_id}\0{conversation}".encode(), digest_size=10)
        return digest.hexdigest()

    def describe(self) -> str:
        kind, value = self.selector
        return f"agent {self.agent_id} via {kind}={value}"

    def to_dict(self) -> dict[str, str]:
        # Not asdict(): it deep-copies, and this runs for every message encoded.
        return {name: value for name in _DESTINATION_FIELDS if (value := getattr(self, name)) is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Destination:
        return cls(**{k: data.get(k) for k in DESTINATION_KEYS})


_DESTINATION_FIELDS = tuple(f.name for f in fields(Destination))


@dataclass(frozen=True)
class SlackRule:
    """Which Slack workspaces and channels reach a route, and who may decide its approvals."""

    teams: tuple[str, ...]
    channels: tuple[str, ...] = ()  # empty: every channel (and DM) of those workspaces
    approvers: tuple[str, ...] = ()  # Slack user ids
    approver_groups: tuple[str, ...] = ()  # Slack user group ids (S…)

    @property
    def has_approvers(self) -> bool:
        return bool(self.approvers or self.approver_groups)


DEFAULT_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")


@dataclass(frozen=True)
class GitHubRule:
    """Which repositories reach a route, what calls the agent, and who may write to it."""

    repositories: tuple[str, ...]  # "owner/name" or "owner/*", matched without regard to case
    trigger: str = "@agent"
    associations: tuple[str, ...] = DEFAULT_ASSOCIATIONS  # author_association values allowed
    approvers: tuple[str, ...] = ()  # logins whose /approve and /deny lines count
    actions: tuple[str, ...] = ("created",)  # comment actions that reach the agent
    secret: bytes | None = field(default=None, repr=False)  # this route's webhook secret (else the shared one)

    def matches(self, repository: str) -> int:
        """2 for an exact repository, 1 for the owner's wildcard, 0 for no match."""
        wanted = repository.lower()
        owner = wanted.split("/", 1)[0]
        patterns = {p.lower() for p in self.repositories}
        return 2 if wanted in patterns else 1 if f"{owner}/*" in patterns else 0


#: How a route's approval decisions reach the device. "socket" (the default): an
#: `approval_response` input on the status socket, the only form a Letta Code device takes;
#: "rest": the approval body of POST …/messages, for a server known to translate it.
APPROVAL_PATHS = ("socket", "rest")


@dataclass(frozen=True)
class WatchRule:
    """A route's opt-in to `relay watch`: keep its conversation's status socket open and bring
    the agent's approval requests and replies back to chat."""

    enabled: bool = True
    slack_channel: str | None = None  # where cards go when no thread of the turn is known


@dataclass(frozen=True)
class Route:
    name: str
    destination: Destination
    slack: SlackRule | None = None
    github: GitHubRule | None = None
    watch: WatchRule | None = None
    approvals: str = "socket"  # one of APPROVAL_PATHS
    # The doors of door_rules.py: Linear, GitLab, Discord, and a mapped webhook.
    linear: LinearRule | None = None
    gitlab: GitLabRule | None = None
    discord: DiscordRule | None = None
    mapped: MappedRule | None = None

    @property
    def watched(self) -> bool:
        return self.watch is not None and self.watch.enabled


class Router:
    """Named routes; a request that names none goes to the route called "default".

    Slack requests are matched by workspace and channel: a route listing the channel wins,
    then a route covering the whole workspace, then the `[slack] fallback` route. Unknown
    workspaces are refused. GitHub requests are matched by repository: an exact name wins over
    an `owner/*` wildcard, then the `[github] fallback` route.
    """

    def __init__(self, routes: Iterable[Route], slack_fallback: str | None = None,
                 github_fallback: str | None = None) -> None:
        self._routes = {route.name: route for route in routes}
        self._slack_fallback = slack_fallback
        self._github_fallback = github_fallback

    def __contains__(self, name: str) -> bool:
        return name in self._routes

    @property
    def names(self) -> list[str]:
        return sorted(self._routes)

    def pick(self, name: str | None) -> Route:
        if name is None:
            if DEFAULT_ROUTE in self._routes:
                return self._routes[DEFAULT_ROUTE]
            raise BadRequest("no route given and no default destination is configured")
        try:
            return self._routes[name]
        except KeyError:
            raise BadRequest(f"unknown route {quoted(name)}") from None

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    @property
    def routes(self) -> list[Route]:
        """Every route, by name."""
        return [self._routes[name] for name in sorted(self._routes)]

    def listing_slack_channel(self, channel: str) -> Route:
        """The route whose Slack rule names this channel (first by name). Raises BadRequest."""
        for route in sorted(self._routes.values(), key=lambda r: r.name):
            if route.slack and channel in route.slack.channels:
                return route
        raise BadRequest(f"no route lists Slack channel {quoted(channel)}; name a route instead")

    def for_slack(self, team: str, channel: str) -> Route:
        """The route for a Slack workspace and channel. Raises NoRoute."""
        in_team = [r for r in self._routes.values() if r.slack and team in r.slack.teams]
        if not in_team:
            raise NoRoute(f"Slack workspace {team} is not connected to relay")
        for route in sorted(in_team, key=lambda r: r.name):
            assert route.slack is not None
            if channel in route.slack.channels:
                return route
        for route in sorted(in_team, key=lambda r: r.name):
            assert route.slack is not None
            if not route.slack.channels:
                return route
        if self._slack_fallback is not None:
            return self._routes[self._slack_fallback]
        raise NoRoute(f"Slack channel {channel} is not routed to an agent")

    def for_github(self, repository: str) -> Route:
        """The route for a repository ("owner/name"). Raises NoRoute."""
        scored = [(route.github.matches(repository), name)
                  for name, route in self._routes.items() if route.github]
        matching = [(score, name) for score, name in scored if score]
        if matching:
            top = max(score for score, _ in matching)
            return self._routes[min(name for score, name in matching if score == top)]
        if self._github_fallback is not None:
            return self._routes[self._github_fallback]
        raise NoRoute(f"repository {repository} is not routed to an agent")

    def github_secret(self, repository: str | None, owner: str | None) -> bytes | None:
        """The secret of the route a payload claims to be for, or None (the shared secret then).

        By repository: the route it goes to. Without one (an organization hook's ping): the
        secret every route of that owner agrees on, if they do.
        """
        if repository is not None:
            try:
                route = self.for_github(repository)
            except NoRoute:
                return None
            return route.github.secret if route.github else None
        if owner is None:
            return None
        prefix = owner.lower() + "/"
        secrets = {route.github.secret for route in self._routes.values() if route.github
                   and any(p.lower().startswith(prefix) for p in route.github.repositories)}
        return secrets.pop() if len(secrets) == 1 else None


def choose_connection(
    connections: Iterable[Mapping[str, Any]], destination: Destination, now_ms: int
) -> str | None:
    """The live connectionId for a destination named by device id or connection name.

    Online means a connectionId is set and the heartbeat is under two minutes old; among
    several (a device that re-registered), the freshest heartbeat wins.
    """
    kind, value = destination.selector
    if kind == "connection_id":
        return value
    field = {"device_id": "deviceId", "connection_name": "connectionName"}[kind]
    best: tuple[float, str] | None = None
    for connection in connections:
        if connection.get(field) != value:
            continue
        connection_id = connection.get("connectionId")
        heartbeat = connection.get("lastHeartbeat")
        if not connection_id or not isinstance(heartbeat, (int, float)):
            continue
        if now_ms - heartbeat > ONLINE_HEARTBEAT_MS:
            continue
        if best is None or heartbeat > best[0]:
            best = (heartbeat, connection_id)
    return best[1] if best else None
