"""Logging: an event name plus structured fields, one line per event.

Call sites pass fields, never bodies or secrets:

    log.info("delivered", extra=fields(client_message_id=..., source="generic", attempt=1))
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; keep our own lines the ones an operator reads.
    logging.getLogger("httpx").setLevel(logging.WARNING)
