"""All configuration, parsed once: environment variables (+ an optional TOML routes file).

Every problem is a ConfigError naming the setting. Unknown `RELAY_*` variables and unknown
keys in the routes file are errors, not silently ignored.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from relay import door_config
from relay import config_parts as parts
from relay.errors import ConfigError
from relay.routes_file import checked_destination, fallback, parse_routes, read_routes_file
from relay.routing import DEFAULT_ROUTE, Destination, Route
from relay.sources.generic import decode_secret

DEFAULT_LETTA_BASE_URL = "https://api.letta.com"
DEFAULT_SLACK_API_BASE_URL = "https://slack.com/api"
DEFAULT_SLACK_HOOKS_URL = "https://hooks.slack.com/"
DEFAULT_GITHUB_API_URL = "https://api.github.com"
MIN_ADMIN_TOKEN_LENGTH = 16

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_ENV_DESTINATION = {
    "LETTA_AGENT_ID": "agent_id",
    "LETTA_CONVERSATION_ID": "conversation_id",
    "LETTA_CONNECTION_ID": "connection_id",
    "LETTA_DEVICE_ID": "device_id",
    "LETTA_CONNECTION_NAME": "connection_name",
}


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    letta_api_key: str | None = field(default=None, repr=False)
    letta_base_url: str = DEFAULT_LETTA_BASE_URL
    hook_secret: bytes | None = field(default=None, repr=False)
    routes: tuple[Route, ...] = ()
    slack_fallback: str | None = None  # route for Slack channels no route lists
    slack_signing_secret: bytes | None = field(default=None, repr=False)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)  # xapp-…: the Socket Mode door
    slack_api_base_url: str = DEFAULT_SLACK_API_BASE_URL
    slack_hooks_url: str = DEFAULT_SLACK_HOOKS_URL  # response_urls relay may POST to start with this
    admin_token: str | None = field(default=None, repr=False)
    github_fallback: str | None = None  # route for repositories no route lists
    github_webhook_secret: bytes | None = field(default=None, repr=False)
    github_token: str | None = field(default=None, repr=False)
    github_api_url: str = DEFAULT_GITHUB_API_URL
    # Linear, GitLab and Discord (door_config.py reads their variables)
    linear_webhook_secret: bytes | None = field(default=None, repr=False)
    linear_api_key: str | None = field(default=None, repr=False)  # an API key (lin_api_…) or an OAuth token
    linear_api_url: str = door_config.DEFAULT_LINEAR_API_URL
    gitlab_webhook_token: bytes | None = field(default=None, repr=False)
    gitlab_token: str | None = field(default=None, repr=False)
    gitlab_url: str = door_config.DEFAULT_GITLAB_URL
    discord_public_key: bytes | None = None  # Ed25519, 32 bytes (public)
    discord_bot_token: str | None = field(default=None, repr=False)
    discord_api_url: str = door_config.DEFAULT_DISCORD_API_URL
    key_prefix: str = "relay"
    redis_cluster: str = "auto"  # auto: ask the server (INFO cluster); on | off: do not ask
    redis_min_replicas: int = 0  # webhooks answered 2xx only once on this many replicas (WAIT)
    redis_replica_timeout: float = 1.0  # how long to wait for them before answering 503
    max_body_bytes: int = 1024 * 1024
    # The web's connections (relay/connections.py): worst-case memory is about
    # max_connections × (max_header_bytes + max_body_bytes) above the process's own.
    max_header_bytes: int = 16 * 1024  # a request line and its headers
    max_headers: int = 100
    header_timeout: float = 10.0  # from a connection opening, or a request's first byte, to its last header
    body_timeout: float = 30.0  # from the last header to the last byte of the body
    keepalive_timeout: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 100
    dedup_window: float = 96 * 3600.0
    reclaim_after: float = 60.0
    max_age: float = 24 * 3600.0
    approval_max_age: float = 3600.0
    retry_base: float = 1.0
    retry_cap: float = 300.0
    concurrency: int = 32
    letta_timeout: float = 30.0
    resolve_ttl: float = 30.0
    shutdown_grace: float = 20.0
    origin_ttl: float = 7 * 24 * 3600.0  # how long relay remembers where a message came from
    log_level: str = "INFO"
    log_format: str | None = None  # "json" or "text"; None: the command's default (dev: text)
    web_metrics: bool = True  # serve GET /metrics on the web port
    metrics_port: int | None = None  # the worker's metrics port; None: 9100 if free; 0: none
    metrics_host: str = "0.0.0.0"
    thread_history_messages: int = 20  # a Slack thread's earlier messages a first mention brings; 0: none
    thread_history_chars: int = 8000
    inline_file_bytes: int = 64 * 1024  # a small text file attached to a message is included; 0: never

    def max_age_for(self, kind: str) -> float:
        return self.approval_max_age if kind == "approval" else self.max_age

    @property
    def uses_slack(self) -> bool:
        return any(route.slack for route in self.routes) or self.slack_fallback is not None

    @property
    def receives_slack(self) -> bool:
        """Some Slack door is open: the HTTP one (signing secret) or Socket Mode (app token)."""
        return self.slack_signing_secret is not None or self.slack_app_token is not None

    @property
    def uses_github(self) -> bool:
        return any(route.github for route in self.routes) or self.github_fallback is not None

    @property
    def github_routes_on_the_shared_secret(self) -> list[Route]:
        """Routes taking GitHub deliveries verified with GITHUB_WEBHOOK_SECRET (no secret of their own)."""
        names = {r.name for r in self.routes if r.github} | ({self.github_fallback} if self.github_fallback else set())
        return [r for r in self.routes if r.name in names and (r.github is None or r.github.secret is None)]

    @property
    def serves_github(self) -> bool:
        """/github/webhook is served: some secret can verify a delivery."""
        return self.github_webhook_secret is not None or any(r.github and r.github.secret for r in self.routes)


def parse_duration(name: str, value: str) -> float:
    """'60', '0.5', '500ms', '90s', '5m', '24h', '4d' → seconds (> 0)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", value)
    if not match:
        raise ConfigError(f"{name}={value!r} is not a duration (examples: 60, 500ms, 90s, 5m, 24h)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"{name} must be greater than zero")
    return seconds


def parse_count(name: str, value: str) -> int:
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive whole number")
    return int(digits)


def _parse_amount(name: str, value: str) -> int:
    """A whole number, 0 included (0 turns the feature off)."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 12:
        raise ConfigError(f"{name}={value!r} must be a whole number (0 turns it off)")
    return int(digits)


def _parse_level(name: str, value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{name}={value!r} must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _parse_log_format(name: str, value: str) -> str:
    log_format = value.strip().lower()
    if log_format not in ("json", "text"):
        raise ConfigError(f"{name}={value!r} must be json or text")
    return log_format


def _parse_cluster_mode(name: str, value: str) -> str:
    mode = value.strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"{name}={value!r} must be auto, on or off")
    return mode


def _parse_switch(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{name}={value!r} must be on or off")


def _parse_port(name: str, value: str) -> int:
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > 65535:
        raise ConfigError(f"{name}={value!r} must be a port number (0 to 65535; 0 turns it off)")
    return int(digits)


def _parse_host(name: str, value: str) -> str:
    host = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", host):
        raise ConfigError(f"{name}={value!r} is not a host name or IP address")
    return host


def _parse_prefix(name: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ConfigError(f"{name}={value!r} may use only letters, digits, '_', '.', '-'")
    return value


#: RELAY_* tunables: variable → (Settings attribute, parser). Defaults live on Settings;
#: the README's configuration reference lists them all.
_TUNABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "RELAY_KEY_PREFIX": ("key_prefix", _parse_prefix),
    "RELAY_REDIS_CLUSTER": ("redis_cluster", _parse_cluster_mode),
    "RELAY_REDIS_MIN_REPLICAS": ("redis_min_replicas", _parse_amount),
    "RELAY_REDIS_REPLICA_TIMEOUT": ("redis_replica_timeout", parse_duration),
    "RELAY_MAX_BODY_BYTES": ("max_body_bytes", parse_count),
    "RELAY_MAX_HEADER_BYTES": ("max_header_bytes", parse_count),
    "RELAY_MAX_HEADERS": ("max_headers", parse_count),
    "RELAY_HEADER_TIMEOUT": ("header_timeout", parse_duration),
    "RELAY_BODY_TIMEOUT": ("body_timeout", parse_duration),
    "RELAY_KEEPALIVE_TIMEOUT": ("keepalive_timeout", parse_duration),
    "RELAY_MAX_CONNECTIONS": ("max_connections", parse_count),
    "RELAY_DEDUP_WINDOW": ("dedup_window", parse_duration),
    "RELAY_RECLAIM_AFTER": ("reclaim_after", parse_duration),
    "RELAY_MAX_AGE": ("max_age", parse_duration),
    "RELAY_APPROVAL_MAX_AGE": ("approval_max_age", parse_duration),
    "RELAY_RETRY_BASE": ("retry_base", parse_duration),
    "RELAY_RETRY_CAP": ("retry_cap", parse_duration),
    "RELAY_CONCURRENCY": ("concurrency", parse_count),
    "RELAY_LETTA_TIMEOUT": ("letta_timeout", parse_duration),
    "RELAY_RESOLVE_TTL": ("resolve_ttl", parse_duration),
    "RELAY_SHUTDOWN_GRACE": ("shutdown_grace", parse_duration),
    "RELAY_ORIGIN_TTL": ("origin_ttl", parse_duration),
    "RELAY_LOG_LEVEL": ("log_level", _parse_level),
    "RELAY_LOG_FORMAT": ("log_format", _parse_log_format),
    "RELAY_WEB_METRICS": ("web_metrics", _parse_switch),
    "RELAY_METRICS_PORT": ("metrics_port", _parse_port),
    "RELAY_METRICS_HOST": ("metrics_host", _parse_host),
    "RELAY_THREAD_HISTORY_MESSAGES": ("thread_history_messages", _parse_amount),
    "RELAY_THREAD_HISTORY_CHARS": ("thread_history_chars", _parse_amount),
    "RELAY_INLINE_FILE_BYTES": ("inline_file_bytes", _parse_amount),
}
#: RELAY_* names that are read elsewhere than _TUNABLES.
_OTHER_RELAY_NAMES = {"RELAY_HOOK_SECRET", "RELAY_ROUTES", "RELAY_ADMIN_TOKEN"}
KNOWN_RELAY_NAMES = frozenset(_TUNABLES) | _OTHER_RELAY_NAMES


def load(environ: Mapping[str, str], read_text: Callable[[str], str] | None = None) -> Settings:
    """Build Settings from an environment mapping; `read_text` reads the routes file."""
    env = {k: v for k, v in environ.items() if v != ""}  # an empty variable counts as unset
    _reject_unknown(env)
    values: dict[str, Any] = {
        attr: parse(name, env[name]) for name, (attr, parse) in _TUNABLES.items() if name in env
    }
    if values.get("retry_cap", 300.0) < values.get("retry_base", 1.0):
        raise ConfigError("RELAY_RETRY_CAP must not be smaller than RELAY_RETRY_BASE")
    if "REDIS_URL" in env:
        values["redis_url"] = _parse_redis_url(env["REDIS_URL"])
    if "LETTA_API_KEY" in env:
        values["letta_api_key"] = env["LETTA_API_KEY"].strip()
    if "LETTA_BASE_URL" in env:
        values["letta_base_url"] = _parse_http_url("LETTA_BASE_URL", env["LETTA_BASE_URL"])
    if "RELAY_HOOK_SECRET" in env:
        try:
            values["hook_secret"] = decode_secret(env["RELAY_HOOK_SECRET"])
        except ValueError as exc:
            raise ConfigError(f"RELAY_HOOK_SECRET {exc}") from None
    values.update(_slack_settings(env))
    values.update(_github_settings(env))
    values.update(door_config.environment(env))
    if "RELAY_ADMIN_TOKEN" in env:
        token = env["RELAY_ADMIN_TOKEN"].strip()
        if len(token) < MIN_ADMIN_TOKEN_LENGTH:
            raise ConfigError(f"RELAY_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters")
        values["admin_token"] = token
    routes: dict[str, Route] = {}
    document: dict[str, Any] = {}
    if "RELAY_ROUTES" in env:
        reader = read_text or (lambda path: Path(path).read_text(encoding="utf-8"))
        document = read_routes_file(env["RELAY_ROUTES"], reader)
        routes = parse_routes(document, origin=f"RELAY_ROUTES={env['RELAY_ROUTES']}", environ=env)
    default = _env_destination(env)
    if default is not None:
        if DEFAULT_ROUTE in routes:
            raise ConfigError(
                "LETTA_AGENT_ID sets the default destination, and RELAY_ROUTES also defines "
                f"a route named {DEFAULT_ROUTE!r}; keep one"
            )
        routes[DEFAULT_ROUTE] = Route(DEFAULT_ROUTE, default)
    values["routes"] = tuple(routes.values())
    values["slack_fallback"] = fallback(document, "slack", routes)
    values["github_fallback"] = fallback(document, "github", routes)
    settings = Settings(**values)
    _check_sources(settings)
    door_config.check(settings)
    return settings


def _slack_settings(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "SLACK_SIGNING_SECRET" in env:
        values["slack_signing_secret"] = parts.secret("SLACK_SIGNING_SECRET", env["SLACK_SIGNING_SECRET"])
    if "SLACK_BOT_TOKEN" in env:
        token = env["SLACK_BOT_TOKEN"].strip()
        if not token.startswith("xoxb-"):
            raise ConfigError("SLACK_BOT_TOKEN must be a bot token (it starts with xoxb-)")
        values["slack_bot_token"] = token
    if "SLACK_APP_TOKEN" in env:
        values["slack_app_token"] = _app_token(env["SLACK_APP_TOKEN"])
    if "SLACK_API_BASE_URL" in env:
        values["slack_api_base_url"] = _parse_http_url("SLACK_API_BASE_URL", env["SLACK_API_BASE_URL"])
    if "SLACK_HOOKS_URL" in env:
        values["slack_hooks_url"] = _parse_url_prefix("SLACK_HOOKS_URL", env["SLACK_HOOKS_URL"])
    return values


def _app_token(value: str) -> str:
    token = value.strip()
    if not token.startswith("xapp-") or not (token.isascii() and token.isprintable()) or " " in token:
        hint = " (that is a bot token: it goes in SLACK_BOT_TOKEN)" if token.startswith("xoxb-") else ""
        raise ConfigError("SLACK_APP_TOKEN must be an app-level token (it starts with xapp-; Basic Information → "
                          f"App-Level Tokens, with connections:write){hint}")
    return token


def _github_settings(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "GITHUB_WEBHOOK_SECRET" in env:
        values["github_webhook_secret"] = parts.secret("GITHUB_WEBHOOK_SECRET", env["GITHUB_WEBHOOK_SECRET"])
    if "GITHUB_TOKEN" in env:
        values["github_token"] = env["GITHUB_TOKEN"].strip()
    if "GITHUB_API_URL" in env:
        values["github_api_url"] = _parse_http_url("GITHUB_API_URL", env["GITHUB_API_URL"])
    return values


def _check_sources(settings: Settings) -> None:
    """A source's routes need its secret, and a secret needs routes: never fail open or idle."""
    if settings.uses_slack and not settings.receives_slack:
        raise ConfigError("routes accept Slack but SLACK_SIGNING_SECRET is not set "
                          "(nor SLACK_APP_TOKEN, for Socket Mode)")
    shared = [r.name for r in settings.github_routes_on_the_shared_secret]
    if shared and settings.github_webhook_secret is None:
        raise ConfigError(f"routes accept GitHub ({', '.join(shared)}) but GITHUB_WEBHOOK_SECRET is not set "
                          "(or give each of them its own: secret_env in [routes.NAME.github])")
    for name, table, variable, used, secret, example in (
            ("Slack", "slack", "SLACK_SIGNING_SECRET", settings.uses_slack, settings.slack_signing_secret,
             'teams = [\"T…\"]'),
            ("GitHub", "github", "GITHUB_WEBHOOK_SECRET", settings.uses_github, settings.github_webhook_secret,
             'repositories = [\"owner/name\"]')):
        if secret is not None and not used:
            raise ConfigError(f"{variable} is set but no route accepts {name}: add "
                              f"[routes.NAME.{table}] {example} to the routes file (RELAY_ROUTES)")
    if settings.slack_app_token is not None and not settings.uses_slack:
        raise ConfigError("SLACK_APP_TOKEN is set but no route accepts Slack: add [routes.NAME.slack] "
                          'teams = ["T…"] to the routes file (RELAY_ROUTES)')
    if settings.slack_fallback is not None and not any(route.slack for route in settings.routes):
        raise ConfigError("[slack] fallback only serves workspaces some route names: add "
                          "[routes.NAME.slack] teams = [\"T…\"] to the routes file")


def _env_destination(env: Mapping[str, str]) -> Destination | None:
    present = {name: env[name].strip() for name in _ENV_DESTINATION if name in env}
    if not present:
        return None
    return checked_destination(
        {_ENV_DESTINATION[name]: value for name, value in present.items()},
        where="default destination",
        keys={attr: name for name, attr in _ENV_DESTINATION.items()},
    )




def _reject_unknown(env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if name.startswith("RELAY_") and name not in KNOWN_RELAY_NAMES:
            guess = difflib.get_close_matches(name, sorted(KNOWN_RELAY_NAMES), n=1)
            hint = f"; did you mean {guess[0]}?" if guess else ""
            raise ConfigError(f"unknown setting {name}{hint}")


def _parse_redis_url(value: str) -> str:
    value = value.strip()
    if not re.match(r"^(redis|rediss|unix)://", value):
        # Never echo the value: it may carry a password.
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", value)
        got = f"scheme {scheme.group(1)!r}" if scheme else "a value without a scheme"
        raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix:// (got {got})")
    return value


def _parse_url_prefix(name: str, value: str) -> str:
    """An origin and path that URLs must start with; always ending in "/" (so that
    https://hooks.slack.com cannot be extended into https://hooks.slack.com.example)."""
    url = _parse_http_url(name, value) + "/"
    parts = urlsplit(url)
    if "@" in parts.netloc or parts.query or parts.fragment or not url.isprintable() or " " in url:
        raise ConfigError(f"{name}={value!r} must be a plain http(s)://host[:port]/path/ prefix")
    return url


def _parse_http_url(name: str, value: str) -> str:
    value = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ConfigError(f"{name}={value!r} must be an http:// or https:// URL")
    return value
