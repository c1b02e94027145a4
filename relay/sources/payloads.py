"""Decoding request bodies for every source: JSON objects and form fields, each failure a
BadRequest with a reason fit for the sender (never an exception of another kind)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs

from relay.errors import BadRequest, quoted


def json_object(body: bytes | str, *, strict: bool = False) -> dict[str, Any]:
    """A JSON object. `strict` also refuses duplicate keys and NaN/Infinity (ambiguous input)."""
    hooks: dict[str, Any] = {"object_pairs_hook": _no_duplicate_keys, "parse_constant": _no_constants} if strict else {}
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        data = json.loads(text, **hooks)
    except UnicodeDecodeError:
        raise BadRequest("body is not valid JSON: not UTF-8") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and the strict hooks
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(data):
        raise BadRequest("body is not valid JSON: an escaped surrogate has no partner (not Unicode)")
    return data


# JSON may escape half of a surrogate pair alone ("\ud800"), which decodes to a str that is not
# Unicode text: it cannot be stored, logged or sent on as UTF-8. Only escapes can produce one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def form_fields(body: bytes, max_fields: int = 200) -> dict[str, str]:
    """An application/x-www-form-urlencoded body; the last value wins for a repeated key."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body is not a valid form") from None
    return {key: values[-1] for key, values in pairs.items()}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {quoted(key)}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
