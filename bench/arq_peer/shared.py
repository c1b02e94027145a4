"""What the arq peer's processes and the benchmark runner agree on. Imports relay's pure
modules only, so it loads in both venvs."""

from __future__ import annotations

from relay.routing import Destination, Route
from relay.settings import Settings

#: relay's defaults (concurrency, dedup window, Letta timeout, backoff, max age, body limit):
#: the peer takes every knob it shares with relay from here.
SETTINGS = Settings()
#: The destination relay_serve is given in bench/infra.py (LETTA_AGENT_ID / LETTA_CONNECTION_ID).
ROUTE = Route("default", Destination(agent_id="agent-bench", connection_id="conn-bench"))
FUNCTION = "deliver"
QUEUE = "arq:queue"  # arq's default queue name (arq.constants.default_queue_name)
RESULT_PREFIX = "arq:result:"  # arq.constants.result_key_prefix
IN_PROGRESS_PREFIX = "arq:in-progress:"  # arq.constants.in_progress_key_prefix
HEALTH_KEY = QUEUE + ":health-check"  # arq writes it on the worker's first poll
HOOK_SECRET_ENV = "RELAY_HOOK_SECRET"
CLIENTS = ("relay", "httpx")  # relay's LettaClient, or a plain httpx.AsyncClient (see worker.py)
#: How often the worker looks for jobs. arq's own default is 0.5 s; see "Peer: arq" in bench/README.md.
POLL_DELAY = 0.01


class Undeliverable(Exception):
    """relay's policy dead-letters the message; arq records the job as failed, without retrying."""
