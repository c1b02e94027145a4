"""Logging: an event name plus structured fields, one line per event.

Call sites pass fields, never bodies or secrets:

    log.info("delivered", extra=fields(client_message_id=..., source="generic", attempt=1))

Two renderings of the same record: JSON, one object per line (the default, for log
pipelines), and key=value text (`relay dev`, or RELAY_LOG_FORMAT=text). Every JSON line
carries `source`, `delivery_id` and `client_message_id` (null when the event is not about
one message), so grepping one id follows a message from ingest to delivery.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

FORMATS = ("json", "text")
#: Keys of every JSON line; a field of the same name as the first four is renamed field_<name>.
BASE_KEYS = ("ts", "level", "logger", "event")
MESSAGE_KEYS = ("source", "delivery_id", "client_message_id")


def fields(**values: Any) -> dict[str, Any]:
    return {"fields": values}


def _render(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class KeyValueFormatter(logging.Formatter):
    """`2026-11-25 10:00:00,000 INFO relay.worker delivered client_message_id=… attempt=1`"""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{k}={_render(v)}" for k, v in extra.items() if v is not None)
        return line


class JsonFormatter(logging.Formatter):
    """`{"ts":"2026-11-25T10:00:00.000Z","level":"INFO","logger":"relay.worker","event":"delivered",
    "source":"generic","delivery_id":"msg_1","client_message_id":"…","attempt":1}`"""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, timezone.utc)
        line: dict[str, Any] = {
            "ts": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **dict.fromkeys(MESSAGE_KEYS),
        }
        for key, value in (getattr(record, "fields", None) or {}).items():
            line[f"field_{key}" if key in BASE_KEYS else key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    raise ValueError(f"unknown log format {log_format!r} (expected one of {', '.join(FORMATS)})")


def configure(level: str = "INFO", log_format: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; keep our own lines the ones an operator reads.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # At DEBUG, websockets writes every handshake header (a bearer token among them), for
    # uvicorn's WebSocket side as "uvicorn.error" and for clients as "websockets.*".
    for name in ("uvicorn.error", "websockets"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
