"""Run ASGI apps under uvicorn inside a process that owns its signal handling.

`relay serve` lets uvicorn handle SIGTERM itself. `relay dev` (and the tests) run several
servers and a worker in one event loop; there the caller decides when each server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from typing import Any, Callable, Coroutine, Iterator

import uvicorn

from relay.connections import ConnectionLimits, protocol_for


def tune_gc() -> None:
    """Collect the young generation less often. A request allocates a few hundred short-lived
    objects, so the default threshold (700) runs a collection every few requests; the objects
    alive at start (modules, settings, scripts) are frozen out of every later full collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on uvloop when it is installed (as uvicorn itself would), else on asyncio's loop."""
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event SIGINT and SIGTERM set: the process's cue to finish its work and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def close_all(*clients: Any) -> None:
    """aclose() each client that was made (None: that part was not configured)."""
    for client in clients:
        if client is not None:
            await client.aclose()


async def wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    return event.is_set()


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its owner: set `should_exit` to stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: Any, host: str, port: int, limits: ConnectionLimits | None = None,
                  closed: Callable[[str], None] | None = None) -> uvicorn.Config:
    """uvicorn's settings for relay: no access log (relay logs each request itself, with
    reasons), and `limits` on every connection (relay/connections.py; the defaults when
    none are given); `closed(reason)` hears of each connection the limits close."""
    limits = limits or ConnectionLimits()
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, server_header=False,
                          lifespan="off", http=protocol_for(limits, closed),
                          timeout_keep_alive=limits.keepalive_timeout)  # type: ignore[arg-type]


def bound_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with getsockname())."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
