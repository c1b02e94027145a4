"""The configuration of the Linear, GitLab, Discord and mapped-webhook doors: their environment
variables, their route tables (`[routes.NAME.linear|gitlab|discord|mapped]`), and the checks
that a door is never served without a way to verify it, nor configured without a route.

Pure: `settings.load` calls `environment`, `route_parts` and `check`; every problem is a
ConfigError naming the setting or the table.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any, Mapping

from relay.door_rules import GITLAB_ACCESS_LEVELS, DiscordRule, GitLabRule, HmacScheme, LinearRule, MappedRule
from relay import config_parts as parts
from relay.errors import ConfigError
from relay.sources.generic import decode_secret
from relay.template import parse as parse_template

if TYPE_CHECKING:
    from relay.settings import Settings

DEFAULT_LINEAR_API_URL = "https://api.linear.app/graphql"
DEFAULT_GITLAB_URL = "https://gitlab.com"
DEFAULT_DISCORD_API_URL = "https://discord.com/api/v10"

#: Environment variables this module reads (the README's configuration reference lists them).
VARIABLES = ("LINEAR_WEBHOOK_SECRET", "LINEAR_API_KEY", "LINEAR_API_URL", "GITLAB_WEBHOOK_TOKEN", "GITLAB_TOKEN",
             "GITLAB_URL", "DISCORD_PUBLIC_KEY", "DISCORD_BOT_TOKEN", "DISCORD_API_URL")
ROUTE_PARTS = ("linear", "gitlab", "discord", "mapped")
MAPPED_VERIFY = ("standard", "standard-ed25519", "hmac")
HMAC_ALGORITHMS = ("sha256", "sha384", "sha512", "sha1")
_SNOWFLAKE = r"[0-9]{1,20}"


def environment(env: Mapping[str, str]) -> dict[str, Any]:
    """The Settings values of these doors' environment variables."""
    values: dict[str, Any] = {}
    if "LINEAR_WEBHOOK_SECRET" in env:
        values["linear_webhook_secret"] = parts.secret("LINEAR_WEBHOOK_SECRET", env["LINEAR_WEBHOOK_SECRET"])
    if "LINEAR_API_KEY" in env:
        values["linear_api_key"] = _token("LINEAR_API_KEY", env["LINEAR_API_KEY"])
    if "GITLAB_WEBHOOK_TOKEN" in env:
        values["gitlab_webhook_token"] = parts.secret("GITLAB_WEBHOOK_TOKEN", env["GITLAB_WEBHOOK_TOKEN"])
    if "GITLAB_TOKEN" in env:
        values["gitlab_token"] = _token("GITLAB_TOKEN", env["GITLAB_TOKEN"])
    if "DISCORD_PUBLIC_KEY" in env:
        values["discord_public_key"] = public_key_hex("DISCORD_PUBLIC_KEY", env["DISCORD_PUBLIC_KEY"])
    if "DISCORD_BOT_TOKEN" in env:
        values["discord_bot_token"] = _token("DISCORD_BOT_TOKEN", env["DISCORD_BOT_TOKEN"])
    for name, attr in (("LINEAR_API_URL", "linear_api_url"), ("GITLAB_URL", "gitlab_url"),
                       ("DISCORD_API_URL", "discord_api_url")):
        if name in env:
            values[attr] = http_url(name, env[name])
    return values


def _token(name: str, value: str) -> str:
    token = value.strip()
    if not token or not token.isprintable() or " " in token or len(token) > 1024:
        raise ConfigError(f"{name} must be one token (printable, no spaces)")
    return token


def public_key_hex(name: str, value: str) -> bytes:
    """An Ed25519 public key as Discord shows it: 64 hex digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise ConfigError(f"{name} must be the application's public key: 64 hex digits")
    return bytes.fromhex(value.strip())


def http_url(name: str, value: str) -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url) or not url.isprintable() or " " in url:
        raise ConfigError(f"{name}={value!r} must be an http:// or https:// URL")
    return url


# -- route tables -------------------------------------------------------------------------------

def route_parts(spec: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The Route keyword arguments of a route's door tables. `where` is "…: [routes.NAME]"."""
    parsers = {"linear": _linear_rule, "gitlab": _gitlab_rule, "discord": _discord_rule, "mapped": _mapped_rule}
    return {part: parsers[part](spec[part], f"{where[:-1]}.{part}]", environ)
            for part in ROUTE_PARTS if part in spec}


def _linear_rule(spec: Any, where: str, environ: Mapping[str, str]) -> LinearRule:
    spec = parts.table(spec, where, {"organizations", "teams", "trigger", "comments", "secret_env"})
    organizations = parts.strings(spec.get("organizations", []), f"{where} organizations", r"[A-Za-z0-9-]{1,64}",
                             "Linear organization ids")
    teams = parts.strings(spec.get("teams", []), f"{where} teams", r"[A-Za-z0-9_-]{1,64}", "team keys such as \"ENG\"")
    if not organizations and not teams:
        raise ConfigError(f"{where}: list organizations (ids) and/or teams (keys such as \"ENG\")")
    comments = spec.get("comments", True)
    if not isinstance(comments, bool):
        raise ConfigError(f"{where}: comments must be true or false")
    return LinearRule(organizations=organizations, teams=teams, trigger=parts.trigger(spec, where), comments=comments,
                      secret=parts.route_secret(spec.get("secret_env"), where, environ))


def _gitlab_rule(spec: Any, where: str, environ: Mapping[str, str]) -> GitLabRule:
    spec = parts.table(spec, where, {"projects", "trigger", "access_level", "approvers", "actions", "secret_env"})
    projects = parts.strings(spec.get("projects", []), f"{where} projects",
                        r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/([A-Za-z0-9_.-]+|\*)", "group/project or group/*")
    if not projects:
        raise ConfigError(f"{where}: projects must list at least one group/project or group/*")
    level = spec.get("access_level", "developer")
    if level != "any" and level not in GITLAB_ACCESS_LEVELS:
        raise ConfigError(f"{where}: access_level must be one of any, {', '.join(GITLAB_ACCESS_LEVELS)}")
    actions = parts.strings(spec.get("actions", ["create"]), f"{where} actions", r"[a-z]+", "create, update")
    if not actions or set(actions) - {"create", "update"}:
        raise ConfigError(f"{where}: actions must be some of create, update")
    approvers = parts.strings(spec.get("approvers", []), f"{where} approvers", r"[A-Za-z0-9_.-]{1,255}", "GitLab usernames")
    return GitLabRule(projects=projects, trigger=parts.trigger(spec, where),
                      access_level=0 if level == "any" else GITLAB_ACCESS_LEVELS[level], approvers=approvers,
                      actions=actions, secret=parts.route_secret(spec.get("secret_env"), where, environ))


def _discord_rule(spec: Any, where: str, environ: Mapping[str, str]) -> DiscordRule:
    allowed = {"guilds", "channels", "approvers", "approver_roles"}
    spec = parts.table(spec, where, allowed)
    lists = {key: parts.strings(spec.get(key, []), f"{where} {key}", _SNOWFLAKE, "Discord ids (digits)") for key in allowed}
    if not lists["guilds"]:
        raise ConfigError(f"{where}: guilds must list at least one Discord server id")
    return DiscordRule(guilds=lists["guilds"], channels=lists["channels"], approvers=lists["approvers"],
                       approver_roles=lists["approver_roles"])


def _mapped_rule(spec: Any, where: str, environ: Mapping[str, str]) -> MappedRule:
    spec = parts.table(spec, where, {"verify", "secret_env", "public_key_env", "header", "algorithm", "prefix", "encoding",
                                "separator", "identity", "text"})
    verify = spec.get("verify")
    if verify not in MAPPED_VERIFY:
        raise ConfigError(f"{where}: verify must be one of {', '.join(MAPPED_VERIFY)}")
    template = parse_template(spec.get("text"), f"{where} text")
    identity = _identity(spec.get("identity"), verify, where)
    if verify == "standard-ed25519":
        _only(spec, where, {"public_key_env"}, verify)
        raw = parts.route_secret(spec.get("public_key_env"), where, environ, key="public_key_env")
        if raw is None:
            raise ConfigError(f"{where}: verify = \"standard-ed25519\" needs public_key_env (a whpk_… key)")
        return MappedRule(verify, template, identity, key=_ed25519_public(raw, where))
    raw = parts.route_secret(spec.get("secret_env"), where, environ)
    if raw is None:
        raise ConfigError(f"{where}: verify = \"{verify}\" needs secret_env")
    if verify == "standard":
        _only(spec, where, {"secret_env"}, verify)
        try:
            return MappedRule(verify, template, identity, key=decode_secret(raw.decode()))
        except ValueError as exc:
            raise ConfigError(f"{where}: the secret secret_env names {exc}") from None
    return MappedRule(verify, template, identity, key=raw, hmac=_hmac_scheme(spec, where))


def _only(spec: Mapping[str, Any], where: str, keys: set[str], verify: str) -> None:
    extra = sorted(set(spec) - keys - {"verify", "identity", "text"})
    if extra:
        raise ConfigError(f"{where}: {extra[0]} is not used with verify = \"{verify}\"")


def _identity(value: Any, verify: str, where: str) -> tuple[str, ...]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths or len(paths) > 8 or not all(
            isinstance(p, str) and re.fullmatch(r"[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+){0,15}", p) for p in paths):
        raise ConfigError(f"{where}: identity must be a JSON path into the body (\"event.id\"), a list of them, "
                          "or \"webhook-id\" (the signed Standard Webhooks id)")
    if "webhook-id" in paths and (verify == "hmac" or len(paths) > 1):
        raise ConfigError(f"{where}: identity \"webhook-id\" is only signed with verify = \"standard\" or "
                          "\"standard-ed25519\", and stands alone")
    return tuple(paths)


def _ed25519_public(raw: bytes, where: str) -> bytes:
    text = raw.decode(errors="replace").strip()
    text = text[len("whpk_"):] if text.startswith("whpk_") else text
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{where}: the public key public_key_env names must be whpk_ and 32 bytes of base64")
    return key


def _hmac_scheme(spec: Mapping[str, Any], where: str) -> HmacScheme:
    header = spec.get("header")
    if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", header):
        raise ConfigError(f"{where}: header must name the signature header, such as \"X-Signature\"")
    algorithm = spec.get("algorithm", "sha256")
    if algorithm not in HMAC_ALGORITHMS:
        raise ConfigError(f"{where}: algorithm must be one of {', '.join(HMAC_ALGORITHMS)}")
    prefix = spec.get("prefix", "")
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9=_:.-]{0,16}", prefix):
        raise ConfigError(f"{where}: prefix must be a short literal such as \"sha256=\" or \"v1=\"")
    encoding = spec.get("encoding", "hex")
    if encoding not in ("hex", "base64"):
        raise ConfigError(f"{where}: encoding must be hex or base64")
    separator = spec.get("separator")
    if separator is not None and separator not in (",", " "):
        raise ConfigError(f"{where}: separator must be \",\" or \" \"")
    return HmacScheme(header=header.lower(), algorithm=algorithm, prefix=prefix, encoding=encoding,
                      separator=separator)


# -- consistency ----------------------------------------------------------------------------------

def check(settings: Settings) -> None:
    """A door's routes need a way to verify it, and a door's secret needs routes."""
    linear = [r for r in settings.routes if r.linear]
    gitlab = [r for r in settings.routes if r.gitlab]
    discord = [r for r in settings.routes if r.discord]
    shared_linear = [r.name for r in linear if r.linear and r.linear.secret is None]
    if shared_linear and settings.linear_webhook_secret is None:
        raise ConfigError(f"routes accept Linear ({', '.join(shared_linear)}) but LINEAR_WEBHOOK_SECRET is not set "
                          "(or give each of them its own: secret_env in [routes.NAME.linear])")
    shared_gitlab = [r.name for r in gitlab if r.gitlab and r.gitlab.secret is None]
    if shared_gitlab and settings.gitlab_webhook_token is None:
        raise ConfigError(f"routes accept GitLab ({', '.join(shared_gitlab)}) but GITLAB_WEBHOOK_TOKEN is not set "
                          "(or give each of them its own: secret_env in [routes.NAME.gitlab])")
    gated = [r.name for r in gitlab if r.gitlab and r.gitlab.access_level]
    if gated and settings.gitlab_token is None:
        raise ConfigError(f"routes {', '.join(gated)} admit GitLab notes by the author's access level, which relay "
                          "reads with GITLAB_TOKEN: set it (a token with read_api), or access_level = \"any\"")
    if discord and settings.discord_public_key is None:
        raise ConfigError("routes accept Discord but DISCORD_PUBLIC_KEY is not set")
    for variable, value, used, table, example in (
            ("LINEAR_WEBHOOK_SECRET", settings.linear_webhook_secret, linear, "linear", 'teams = ["ENG"]'),
            ("GITLAB_WEBHOOK_TOKEN", settings.gitlab_webhook_token, gitlab, "gitlab", 'projects = ["group/project"]'),
            ("DISCORD_PUBLIC_KEY", settings.discord_public_key, discord, "discord", 'guilds = ["1234…"]')):
        if value is not None and not used:
            raise ConfigError(f"{variable} is set but no route accepts it: add [routes.NAME.{table}] {example} "
                              "to the routes file (RELAY_ROUTES)")
