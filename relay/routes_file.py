"""The routes file (TOML): routes by name, each a destination and the rules of its doors.

Every problem is a ConfigError naming the table and key; unknown keys are errors.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any, Callable, Mapping

from relay import door_config
from relay import config_parts as parts
from relay.errors import ConfigError
from relay.routing import (APPROVAL_PATHS, DEFAULT_ASSOCIATIONS, SELECTORS, Destination, GitHubRule, Route, SlackRule,
                           WatchRule)

GITHUB_ASSOCIATIONS = {"OWNER", "MEMBER", "COLLABORATOR", "CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR",
                       "FIRST_TIMER", "MANNEQUIN", "NONE"}
GITHUB_ACTIONS = {"created", "edited", "deleted"}
_ROUTE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ROUTE_PARTS = ("slack", "github", "watch", "approvals", *door_config.ROUTE_PARTS)
DESTINATION_KEYS = ("agent_id", "conversation_id", *SELECTORS)


def fallback(document: Mapping[str, Any], source: str, routes: Mapping[str, Route]) -> str | None:
    table = document.get(source, {})
    if not isinstance(table, dict):
        raise ConfigError(f"routes file: [{source}] must be a table")
    extra = sorted(set(table) - {"fallback"})
    if extra:
        raise ConfigError(f"routes file: [{source}] has an unknown key {extra[0]!r} (allowed: fallback)")
    fallback = table.get("fallback")
    if fallback is None:
        return None
    if not isinstance(fallback, str) or fallback not in routes:
        raise ConfigError(f"routes file: [{source}] fallback = {fallback!r} names no route "
                          f"(routes: {', '.join(sorted(routes)) or 'none'})")
    return fallback


def parse_routes(document: Mapping[str, Any], origin: str = "routes file",
                 environ: Mapping[str, str] | None = None) -> dict[str, Route]:
    """The parsed TOML routes document → routes by name. `environ` holds the secrets the
    routes file names (a route's `secret_env`)."""
    unknown = sorted(set(document) - {"routes", "slack", "github"})
    if unknown:
        raise ConfigError(f"{origin}: unknown top-level key {unknown[0]!r} "
                          "(expected [routes.NAME], [slack] or [github])")
    table = document.get("routes", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: 'routes' must be a table of [routes.NAME] sections")
    routes: dict[str, Route] = {}
    for name, spec in table.items():
        where = f"{origin}: [routes.{name}]"
        if not _ROUTE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a route name may use only letters, digits, '_', '.', '-'")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a table")
        extra = sorted(set(spec) - set(DESTINATION_KEYS) - set(_ROUTE_PARTS))
        if extra:
            raise ConfigError(f"{where}: unknown key {extra[0]!r} "
                              f"(allowed: {', '.join(sorted(DESTINATION_KEYS))}, {', '.join(_ROUTE_PARTS)})")
        destination = destination_from({k: v for k, v in spec.items() if k not in _ROUTE_PARTS}, where)
        slack = _slack_rule(spec["slack"], f"{origin}: [routes.{name}.slack]") if "slack" in spec else None
        github = (_github_rule(spec["github"], f"{origin}: [routes.{name}.github]", environ or {})
                  if "github" in spec else None)
        watch = _watch_rule(spec["watch"], f"{origin}: [routes.{name}.watch]") if "watch" in spec else None
        approvals = spec.get("approvals", "socket")
        if approvals not in APPROVAL_PATHS:
            raise ConfigError(f"{where}: approvals must be \"socket\" (the default) or \"rest\"")
        doors = door_config.route_parts(spec, where, environ or {})
        routes[name] = Route(name, destination, slack=slack, github=github, watch=watch, approvals=approvals, **doors)
    return routes


def destination_from(spec: Mapping[str, Any], where: str) -> Destination:
    """agent_id, optional conversation_id and exactly one selector → a Destination (ConfigError)."""
    extra = sorted(set(spec) - set(DESTINATION_KEYS))
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(DESTINATION_KEYS))})")
    for key, value in spec.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    return checked_destination(spec, where, keys={k: k for k in DESTINATION_KEYS})


def _slack_rule(spec: Any, where: str) -> SlackRule:
    allowed = {"teams", "channels", "approvers", "approver_groups"}
    spec = parts.table(spec, where, allowed)
    lists = {key: _id_list(spec.get(key, []), f"{where} {key}") for key in allowed}
    if not lists["teams"]:
        raise ConfigError(f"{where}: teams must list at least one workspace id (T…)")
    return SlackRule(teams=lists["teams"], channels=lists["channels"],
                     approvers=lists["approvers"], approver_groups=lists["approver_groups"])


def _github_rule(spec: Any, where: str, environ: Mapping[str, str]) -> GitHubRule:
    spec = parts.table(spec, where, {"repositories", "trigger", "associations", "approvers", "actions", "secret_env"})
    repositories = parts.strings(spec.get("repositories", []), f"{where} repositories",
                            r"[A-Za-z0-9_.-]+/([A-Za-z0-9_.-]+|\*)", "owner/name or owner/*")
    if not repositories:
        raise ConfigError(f"{where}: repositories must list at least one owner/name or owner/*")
    trigger = parts.trigger(spec, where)
    associations = tuple(a.upper() for a in parts.strings(spec.get("associations", list(DEFAULT_ASSOCIATIONS)),
                                                      f"{where} associations", r"[A-Za-z_]+", "OWNER, MEMBER, …"))
    unknown = sorted(set(associations) - GITHUB_ASSOCIATIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown association {unknown[0]!r} "
                          f"(known: {', '.join(sorted(GITHUB_ASSOCIATIONS))})")
    actions = parts.strings(spec.get("actions", ["created"]), f"{where} actions", r"[a-z]+", "created, edited, deleted")
    if set(actions) - GITHUB_ACTIONS or not actions:
        raise ConfigError(f"{where}: actions must be some of created, edited, deleted")
    approvers = parts.strings(spec.get("approvers", []), f"{where} approvers", r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})",
                         "GitHub logins")
    return GitHubRule(repositories=repositories, trigger=trigger, associations=associations,
                      approvers=approvers, actions=actions, secret=parts.route_secret(spec.get("secret_env"), where, environ, example="GITHUB_WEBHOOK_SECRET_ACME"))


def _watch_rule(spec: Any, where: str) -> WatchRule:
    if isinstance(spec, dict) and "approvals" in spec:
        raise ConfigError(f"{where}: approvals moved to the route itself ([routes.NAME] approvals = \"rest\"); "
                          "decisions now go over the status socket by default, without relay watch")
    spec = parts.table(spec, where, {"enabled", "slack_channel"})
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: enabled must be true or false")
    channel = spec.get("slack_channel")
    if channel is not None and not (isinstance(channel, str) and re.fullmatch(r"[CGD][A-Z0-9]{2,31}", channel)):
        raise ConfigError(f"{where}: slack_channel must be a Slack channel id such as \"C0123ABC\"")
    return WatchRule(enabled=enabled, slack_channel=channel)


def _id_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(r"[A-Z0-9]{2,32}", v)
                                              for v in value):
        raise ConfigError(f"{where} must be a list of Slack ids such as \"T0123ABC\"")
    return tuple(value)


def read_routes_file(path: str, read_text: Callable[[str], str]) -> dict[str, Any]:
    try:
        text = read_text(path)
    except OSError as exc:
        raise ConfigError(f"RELAY_ROUTES={path!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"RELAY_ROUTES={path!r} is not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"RELAY_ROUTES={path!r} is not valid TOML: {exc}") from None

def checked_destination(spec: Mapping[str, str], where: str, keys: Mapping[str, str]) -> Destination:
    """`keys` maps each destination field to the name the operator wrote (env var or TOML key)."""
    if not spec.get("agent_id"):
        others = ", ".join(keys[k] for k in spec)
        raise ConfigError(f"{where}: {keys['agent_id']} is required (set alongside {others})")
    chosen = [name for name in SELECTORS if spec.get(name)]
    names = " / ".join(keys[name] for name in SELECTORS)
    if len(chosen) != 1:
        got = " and ".join(keys[name] for name in chosen) if chosen else "none"
        raise ConfigError(f"{where}: set exactly one of {names} (got {got})")
    return Destination(**{k: v.strip() for k, v in spec.items()})
