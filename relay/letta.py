"""The Letta client: the only module that talks to the Letta API.

- `send` POSTs one body to `/v1/environments/{connectionId}/messages` and reports an
  `Outcome` (never raises for HTTP or transport trouble; `policy.decide` judges it).
- Short in-call retries (tenacity) cover failures to send: connection refused or reset,
  a stale pooled connection, an unreadable answer. A timeout (no answer in time, or no free
  connection in time) is not retried here; it becomes a "timeout" outcome and waits its turn in
  the delayed set, so a worker never sleeps long on one message.
- The HTTP engine is `relay.http1`, a lean keep-alive HTTP/1.1 client on httptools: at
  hundreds of calls in flight a worker is CPU-bound, and aiohttp's `ClientSession` spent ~3.5×
  its CPU per call (httpx's own pool slows down as concurrency grows, encode/httpx#3215, and
  httpx over aiohttp cost ~4× aiohttp); bench/README.md has the figures. A Letta reached
  through a proxy (HTTP(S)_PROXY / NO_PROXY, read once) is called with aiohttp's client,
  which speaks to proxies.
- `status_socket` opens one agent conversation's status WebSocket (bearer auth; the key never
  goes into the URL, and websockets' own DEBUG logging, which shows headers, stays quiet).
- `connection_for` resolves a destination named by device id or connection name to the live
  connectionId (`GET /v1/environments…`), cached for `resolve_ttl` seconds; `forget` drops
  the cache entry after a 404. It returns None for a device that is not online, and raises
  `relay.errors.ResolveFailed` (carrying an `Outcome`) when Letta cannot be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Callable
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base
from websockets.asyncio.client import ClientConnection, connect
from yarl import URL

from relay import __version__
from relay.errors import HttpFailed, ResolveFailed
from relay.http1 import Answer, Http1Pool
from relay.messages import Envelope
from relay.metrics import Metrics
from relay.policy import Outcome
from relay.routing import Destination, choose_connection
from relay.settings import Settings
from relay.status_frames import status_url

# websockets logs handshake headers (the bearer token) and frames at DEBUG: keep it quiet.
_socket_log = logging.getLogger("relay.letta.socket")
_socket_log.setLevel(logging.WARNING)

RESPONSE_BODY_LIMIT = 4000
#: The most of an answer's body kept (an environments page); the rest is read and dropped.
ANSWER_LIMIT = 8 * 1024 * 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024
SOCKET_OPEN_TIMEOUT = 10.0
PAGE_SIZE = 100
MAX_PAGES = 50


#: What a failed call raises: relay.http1's error, aiohttp's own (the proxied path), a timeout.
CallFailed = (HttpFailed, aiohttp.ClientError, asyncio.TimeoutError)


def _failure_kind(exc: BaseException) -> str:
    """timeout | connect | transport: refused or unresolvable is "connect", a peer that closed or
    reset the connection is "transport", only a real timeout is "timeout"."""
    if isinstance(exc, HttpFailed):
        return exc.kind
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return "transport"


def _worth_resending(exc: BaseException) -> bool:
    """Failures to send where resending at once is cheap and safe (the id is unchanged); not a
    timeout (the receiver may still be working on it)."""
    return isinstance(exc, (HttpFailed, aiohttp.ClientError)) and _failure_kind(exc) != "timeout"


class LettaClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_connections: int = 32,
        resolve_ttl: float = 30.0,
        retry_wait: wait_base | None = None,
        retry_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.base_url, self._api_key = base_url, api_key
        self._root = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": f"relay/{__version__}"}
        # As httpx's Timeout(timeout, connect=min(timeout, 5)) was: a pool wait and the whole
        # connect within `timeout`, the socket connect within 5 s, each read within `timeout`.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=min(timeout, 5.0),
                                              sock_read=timeout)
        self._max_connections = max_connections
        self._proxy = _env_proxy(self._root)
        self._session: aiohttp.ClientSession | None = None
        self._pool = None if self._proxy[0] else Http1Pool(
            self._root, self._headers, max_connections=max_connections, connect_timeout=min(timeout, 5.0),
            answer_timeout=timeout)
        self._retrying = dict(
            stop=stop_after_attempt(retry_attempts) | stop_after_delay(10),
            wait=retry_wait if retry_wait is not None else wait_exponential_jitter(multiplier=0.1, max=1.0),
            retry=retry_if_exception(_worth_resending),
            reraise=True,
        )
        self._resolve_ttl = resolve_ttl
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._clock = clock
        self._metrics = metrics or Metrics()

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str | None = None,
                      api_key: str | None = None, metrics: Metrics | None = None) -> LettaClient:
        return cls(
            base_url or settings.letta_base_url,
            api_key or settings.letta_api_key or "",
            timeout=settings.letta_timeout,
            max_connections=settings.concurrency,
            resolve_ttl=settings.resolve_ttl,
            metrics=metrics,
        )

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        """The proxied path's session, made on first use (aiohttp wants a running event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=5.0)
            # Not trust_env: aiohttp would read the proxy variables and ~/.netrc again on every call
            # (in a thread, ~half the worker's time); the proxy is looked up once, in __init__.
            # No cookie jar: Letta's API authenticates by bearer token, and a jar is consulted on
            # every call and updated from every answer.
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def deliver(self, envelope: Envelope) -> Outcome:
        """Resolve the destination's connection and send the envelope's message."""
        destination = envelope.destination
        try:
            connection_id = await self.connection_for(destination)
        except ResolveFailed as failed:
            return failed.outcome
        if connection_id is None:
            kind, value = destination.selector
            return Outcome(error="unresolved", detail=f"no online connection for {kind}={value}")
        return await self.send(connection_id, envelope.request_body())

    async def send(self, connection_id: str, body: dict[str, Any]) -> Outcome:
        path = f"/v1/environments/{quote(connection_id, safe='')}/messages"
        try:
            answer = await self._request("POST", path, orjson.dumps(body), keep=RESPONSE_BODY_LIMIT * 4)
        except CallFailed as exc:
            return _transport_outcome(exc)
        return Outcome(
            status=answer.status,
            body=answer.text[:RESPONSE_BODY_LIMIT],
            retry_after=answer.headers.get("retry-after"),
        )

    @contextlib.asynccontextmanager
    async def status_socket(self, connection_id: str, agent_id: str, conversation_id: str | None,
                            *, open_timeout: float = SOCKET_OPEN_TIMEOUT) -> AsyncIterator[ClientConnection]:
        """The status WebSocket of one agent conversation on one connection."""
        url = status_url(self.base_url, connection_id, agent_id, conversation_id)
        async with connect(url, additional_headers={"Authorization": f"Bearer {self._api_key}"},
                           user_agent_header=f"relay/{__version__}", open_timeout=open_timeout,
                           max_size=MAX_FRAME_BYTES, logger=_socket_log) as socket:
            yield socket

    async def connection_for(self, destination: Destination) -> str | None:
        kind, value = destination.selector
        if kind == "connection_id":
            return value
        now = self._clock()
        cached = self._cache.get((kind, value))
        if cached and cached[1] > now:
            self._metrics.cache(hit=True)
            return cached[0]
        self._metrics.cache(hit=False)
        connections = await self._connections(kind, value)
        chosen = choose_connection(connections, destination, int(now * 1000))
        if chosen is not None:
            self._cache[(kind, value)] = (chosen, now + self._resolve_ttl)
        return chosen

    def forget(self, destination: Destination) -> None:
        self._cache.pop(destination.selector, None)

    async def _connections(self, kind: str, value: str) -> list[dict[str, Any]]:
        if kind == "device_id":
            data = await self._get_json(f"/v1/environments/{quote(value, safe='')}", {}, missing_ok=True)
            return [data] if isinstance(data, dict) else []
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"onlineOnly": "true", "limit": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            data = await self._get_json("/v1/environments", params)
            page = data.get("connections") if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise ResolveFailed(Outcome(error="resolve", detail="environment list without connections"))
            found.extend(c for c in page if isinstance(c, dict))
            if not data.get("hasNextPage") or not page:
                break
            params["after"] = page[-1].get("id")
        return found

    async def _get_json(self, path: str, params: dict[str, Any], missing_ok: bool = False) -> Any:
        query = {k: "" if v is None else str(v) for k, v in params.items()}
        try:
            answer = await self._request("GET", f"{path}?{urlencode(query)}" if query else path)
        except CallFailed as exc:
            raise ResolveFailed(_transport_outcome(exc, while_="resolving the connection")) from exc
        if missing_ok and answer.status == 404:
            return None
        if not 200 <= answer.status < 300:
            # A 404 of the list itself must not read as "connection gone, resolve again".
            status = 502 if answer.status == 404 else answer.status
            raise ResolveFailed(Outcome(status=status, body=f"resolving the connection: {answer.text[:500]}",
                                         retry_after=answer.headers.get("retry-after")))
        try:
            return orjson.loads(answer.body)
        except (ValueError, RecursionError):
            raise ResolveFailed(Outcome(error="resolve", detail="environment list is not JSON")) from None

    async def _request(self, method: str, target: str, body: bytes | None = None, keep: int = ANSWER_LIMIT) -> Answer:
        try:
            return await self._once(method, target, body, keep)
        except CallFailed as exc:
            if not _worth_resending(exc):
                raise
            failed = exc
        # Rare: resend under tenacity's policy. Its first attempt is the call that just failed,
        # so the waits and the attempt count are as if tenacity had made it (it costs ~20 µs
        # per call, too much to pay on every delivery).
        async for attempt in AsyncRetrying(**self._retrying):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise failed
                return await self._once(method, target, body, keep)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, method: str, target: str, body: bytes | None, keep: int) -> Answer:
        if self._pool is not None:
            return await self._pool.request(method, target, body, keep=keep)
        headers = _JSON if body is not None else None
        async with self._http().request(method, URL(self._root + target, encoded=True), allow_redirects=False,
                                        proxy=self._proxy[0], proxy_auth=self._proxy[1], data=body,
                                        headers=headers) as response:
            kept: list[bytes] = []
            room = keep
            async for chunk in response.content.iter_any():  # past `keep`: read and dropped
                if room > 0:
                    kept.append(chunk[:room])
                    room -= len(chunk)
            return Answer(response.status, b"".join(kept), {k.lower(): v for k, v in response.headers.items()})


_JSON = {"Content-Type": "application/json"}


def _env_proxy(base_url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy HTTP(S)_PROXY / NO_PROXY name for Letta's URL, if any."""
    try:
        return get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return None, None


def _transport_outcome(exc: BaseException, while_: str = "") -> Outcome:
    kind = _failure_kind(exc)
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Outcome(error=kind, detail=f"{while_}: {detail}" if while_ else detail)
