"""The arq peer's real parts (see bench/arq_peer/), started and stopped like bench/infra.py's:
its venv, its web process and worker, a prefill of its queue, and questions about its queue.
Also an nginx like infra.nginx_letta that records every request it answers.

arq pins redis<6 and relay needs redis 8, so the peer runs on bench/.arq-venv's python; this
module runs in relay's venv and never imports arq.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import redis

from bench import infra
from bench.arq_peer.shared import HEALTH_KEY, IN_PROGRESS_PREFIX, POLL_DELAY, QUEUE, RESULT_PREFIX, SETTINGS

VENV = infra.ROOT / "bench" / ".arq-venv"
#: arq is pinned so the peer measured is the peer named in the results.
PEER_REQUIREMENTS = ["arq==0.28.0", "uvicorn[standard]>=0.30"]


def requirements() -> list[str]:
    """The peer's packages, plus relay's own dependencies less redis: arq brings the redis it
    pins (redis<6), and the peer imports relay's modules (its door's body reading runs through
    relay.web, whose package imports most of relay)."""
    project = tomllib.loads((infra.ROOT / "pyproject.toml").read_text())["project"]
    return [*PEER_REQUIREMENTS, *(d for d in project["dependencies"] if not re.match(r"redis\b", d))]


def arq_python() -> str:
    """bench/.arq-venv's python: the venv is made on first use, and made again when the requirements change."""
    python, stamp = VENV / "bin" / "python", VENV / "bench-requirements.txt"
    wanted = "\n".join([*requirements(), "-e . --no-deps"]) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    print("bench: making bench/.arq-venv (arq's own venv) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-qq", *requirements()], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-qq", "--no-deps", "-e", str(infra.ROOT)], check=True)
    stamp.write_text(wanted)
    return str(python)


@contextlib.contextmanager
def arq_serve(redis_url: str) -> Iterator[infra.Process]:
    """The peer's web process: POST /hooks/generic (signed with infra.HOOK_SECRET) → an arq job."""
    port = infra.free_port()
    env = infra.relay_env(RELAY_HOOK_SECRET=infra.HOOK_SECRET_SETTING)
    with infra.process(["-m", "bench.arq_peer.app", str(port), redis_url], env,
                       f"http://127.0.0.1:{port}/healthz", python=arq_python()) as proc:
        proc.url = f"http://127.0.0.1:{port}"
        yield proc


@contextlib.contextmanager
def arq_worker(redis_url: str, letta_url: str, *, client: str = "relay", poll_delay: float = POLL_DELAY,
               max_jobs: int = SETTINGS.concurrency, wait_ready: bool = True) -> Iterator[infra.Process]:
    """The peer's worker. `client`: "relay" (relay's LettaClient) or "httpx" (a plain AsyncClient).
    `wait_ready`: return once the worker has polled the queue once (arq's health-check key)."""
    command = ["-m", "bench.arq_peer.worker", redis_url, letta_url, "--client", client,
               "--poll-delay", str(poll_delay), "--max-jobs", str(max_jobs)]
    client_ = redis.Redis.from_url(redis_url)
    client_.delete(HEALTH_KEY)
    with infra.process(command, infra.relay_env(), python=arq_python()) as proc:
        if wait_ready:
            infra.wait_until(lambda: proc.popen.poll() is None and client_.exists(HEALTH_KEY), "arq worker")
        client_.close()
        yield proc


def prefill_arq(redis_url: str, count: int, conversations: int) -> None:
    """Queue `count` jobs (bench.workload.envelopes, the messages bench/drain.py gives relay)."""
    subprocess.run([arq_python(), "-m", "bench.arq_peer.prefill", redis_url, str(count), str(conversations)],
                   cwd=infra.ROOT, env=infra.relay_env(), check=True)


def arq_remaining(client: redis.Redis) -> int:
    """Jobs not finished: queued, running or waiting to retry. A job leaves arq's queue sorted set
    only when it finishes (success or failure), in the same MULTI that drops its in-progress key."""
    return int(client.zcard(QUEUE))


def arq_drained(client: redis.Redis) -> bool:
    return arq_remaining(client) == 0 and next(client.scan_iter(f"{IN_PROGRESS_PREFIX}*", count=1000), None) is None


@dataclass
class Outcomes:
    succeeded: int
    failed: int


def arq_outcomes(client: redis.Redis) -> Outcomes:
    """Finished jobs by their arq results (kept for relay's dedup window). Read once, after the clock."""
    succeeded = failed = 0
    keys = list(client.scan_iter(f"{RESULT_PREFIX}*", count=1000))
    for start in range(0, len(keys), 1000):
        for raw in client.mget(keys[start:start + 1000]):
            try:
                ok = raw is not None and bool(pickle.loads(raw)["s"])
            except Exception:  # a failure's exception may be arq's own class, unknown in this venv
                ok = False
            succeeded += ok
            failed += not ok
    return Outcomes(succeeded, failed)


# -- a receiver that records ----------------------------------------------------------------------

@dataclass
class Post:
    at: float  # epoch seconds (ms resolution) when nginx logged it
    uri: str
    body: str


@dataclass
class Recorder:
    url: str
    log: Path

    def posts(self) -> list[Post]:
        out = []
        for line in self.log.read_text().splitlines():
            at, method, uri, body = line.split("\t", 3)
            if method == "POST":
                out.append(Post(float(at), json.loads(f'"{uri}"'), json.loads(f'"{body}"')))
        return out


@contextlib.contextmanager
def nginx_recording() -> Iterator[Recorder]:
    """nginx answering Letta's success body, as infra.nginx_letta, logging each request's time, path
    and body. nginx reads a body only to pass it on, so it proxies to a second server that answers."""
    log: list[Path] = []

    def servers(workdir: Path, port: int) -> str:
        log.append(workdir / "posts.log")
        log[0].touch()
        return f"""
  log_format posts escape=json '$msec\\t$request_method\\t$request_uri\\t$request_body';
  upstream answer {{ server unix:{workdir}/answer.sock; keepalive 64; }}
  server {{
    listen unix:{workdir}/answer.sock;
    location / {{ default_type application/json; return 200 '{infra.LETTA_ANSWER}'; }}
  }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      access_log {log[0]} posts;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://answer;
    }}
  }}"""

    with infra.nginx(servers) as url:
        yield Recorder(url, log[0])
