"""Pieces every route table is read with: tables with known keys only, string lists, triggers,
secrets (a route's own one from the variable the routes file names). Pure; ConfigError names
what is wrong and where. settings.py and door_config.py both read with these.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from relay.errors import ConfigError

_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def table(spec: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    """A route's sub-table, with only the `allowed` keys (ConfigError otherwise)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a table")
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return spec


def strings(value: Any, where: str, pattern: str, example: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and re.fullmatch(pattern, v) for v in value):
        raise ConfigError(f"{where} must be a list of {example}")
    return tuple(value)


def trigger(spec: Mapping[str, Any], where: str) -> str:
    found = spec.get("trigger", "@agent")
    if not isinstance(found, str) or not re.fullmatch(r"\S{2,64}", found):
        raise ConfigError(f"{where}: trigger must be one word such as \"@agent\"")
    return found


def secret(name: str, value: str) -> bytes:
    """A shared secret; a blank one would let anyone in (fail open), so it is an error."""
    if not value.strip():
        raise ConfigError(f"{name} is blank")
    return value.strip().encode()


def route_secret(name: Any, where: str, environ: Mapping[str, str], *, key: str = "secret_env",
                 example: str = "WEBHOOK_SECRET_ACME") -> bytes | None:
    """A route's own secret, from the environment variable the routes file names (the routes
    file is configuration, often a ConfigMap; the secret stays with the other secrets)."""
    if name is None:
        return None
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or name.startswith("RELAY_"):
        raise ConfigError(f"{where}: {key} must name an environment variable such as \"{example}\" "
                          "(capitals, digits, _; not RELAY_…)")
    value = environ.get(name, "")
    if not value.strip():
        raise ConfigError(f"{where}: {key} names {name}, which is not set")
    return secret(name, value)
