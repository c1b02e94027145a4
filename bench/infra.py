"""The real parts the benchmarks run against, started and stopped by the benchmarks themselves:
a redis-server, an nginx answering Letta's fixed JSON, uvicorn apps, and wrk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import redis

from relay.sources.generic import signed_headers

ROOT = Path(__file__).parent.parent
HOOK_SECRET = b"bench-hook-secret-0123456789abcdef"
HOOK_SECRET_SETTING = "whsec_" + __import__("base64").b64encode(HOOK_SECRET).decode()
LETTA_ANSWER = '{"message":"Message sent","success":true}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SystemExit(f"bench needs {binary}: apt-get install {package}")
    return path


def wait_until(check: "callable", what: str, timeout: float = 20.0) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not come up")
        time.sleep(0.05)


@contextlib.contextmanager
def redis_server(appendonly: bool = True) -> Iterator[str]:
    """A redis-server on a free port; AOF with fsync every second, as production should run."""
    binary = need("redis-server", "redis-server")
    port, workdir = free_port(), tempfile.mkdtemp(prefix="relay-bench-redis-")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
                                "--dir", workdir, "--logfile", f"{workdir}/redis.log"])
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis.Redis.from_url(url).ping(), "redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)


NGINX_HTTP = """
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
{servers}
}}
"""


@contextlib.contextmanager
def nginx(servers: Callable[[Path, int], str]) -> Iterator[str]:
    """An nginx on a free port, its http block's servers written by `servers(workdir, port)`."""
    binary = need("nginx", "nginx-light")
    port, workdir = free_port(), Path(tempfile.mkdtemp(prefix="relay-bench-nginx-"))
    workdir.chmod(0o755)  # nginx's workers (not root) may need to reach sockets in it
    (workdir / "nginx.conf").write_text(NGINX_HTTP.format(workdir=workdir, servers=servers(workdir, port)))
    process = subprocess.Popen([binary, "-p", str(workdir), "-c", str(workdir / "nginx.conf")],
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/ready").status_code == 200, "nginx")  # a GET: recorders count POSTs
        yield url
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def nginx_letta() -> Iterator[str]:
    """nginx answering every request with Letta's success body: a receiver that is not the bottleneck."""
    with nginx(lambda workdir, port: f"""
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{ default_type application/json; return 200 '{LETTA_ANSWER}'; }}
  }}""") as url:
        yield url


@contextlib.contextmanager
def slow_letta(delay: float) -> Iterator[str]:
    """A Letta stand-in answering every POST after `delay` seconds (bench/slow_letta.py)."""
    port = free_port()
    with process(["-m", "bench.slow_letta", str(port), str(delay)], relay_env(),
                 f"http://127.0.0.1:{port}/ready"):
        yield f"http://127.0.0.1:{port}"


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    url: str = ""

    def rss_mib(self) -> float:
        import psutil

        return float(psutil.Process(self.popen.pid).memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def relay_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "LETTA_")) and k != "REDIS_URL"}
    env.update({"RELAY_LOG_LEVEL": "WARNING", **values})
    return env


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], ready_url: str | None = None,
            python: str = sys.executable) -> Iterator[Process]:
    log = tempfile.NamedTemporaryFile(prefix="relay-bench-", suffix=".log", delete=False)
    popen = subprocess.Popen([python, *command], env=env, stdout=log, stderr=log, cwd=ROOT)
    proc = Process(popen)
    try:
        if ready_url:
            wait_until(lambda: httpx.get(ready_url).status_code < 500, " ".join(command[:3]))
        yield proc
    finally:
        proc.stop()
        if popen.returncode not in (0, -15):
            print(Path(log.name).read_text()[-3000:], file=sys.stderr)


@contextlib.contextmanager
def relay_serve(redis_url: str, **settings: str) -> Iterator[Process]:
    port = free_port()
    env = relay_env(REDIS_URL=redis_url, RELAY_HOOK_SECRET=HOOK_SECRET_SETTING, LETTA_AGENT_ID="agent-bench",
                    LETTA_CONNECTION_ID="conn-bench", RELAY_KEY_PREFIX="bench", **settings)
    with process(["-m", "relay", "serve", "--port", str(port)], env, f"http://127.0.0.1:{port}/healthz") as proc:
        proc.url = f"http://127.0.0.1:{port}"
        yield proc


@contextlib.contextmanager
def bare_starlette() -> Iterator[Process]:
    """The baseline: a Starlette endpoint answering 202, on the same uvicorn settings as relay serve."""
    port = free_port()
    with process(["-m", "bench.bare_app", str(port)], relay_env(), f"http://127.0.0.1:{port}/healthz") as proc:
        proc.url = f"http://127.0.0.1:{port}"
        yield proc


@contextlib.contextmanager
def relay_worker(redis_url: str, letta_url: str, **settings: str) -> Iterator[Process]:
    env = relay_env(REDIS_URL=redis_url, LETTA_API_KEY="bench-key", LETTA_BASE_URL=letta_url,
                    RELAY_KEY_PREFIX="bench", **settings)
    with process(["-m", "relay", "worker"], env) as proc:
        yield proc


# -- load generation ------------------------------------------------------------------------------

def signed_requests(count: int, route: str | None = None) -> list[str]:
    """Raw HTTP requests for /hooks/generic, each a distinct signed webhook (~100-byte JSON body)."""
    now = int(time.time())
    out = []
    for n in range(count):
        body = json.dumps({"text": f"deploy {n} finished, please summarize the log", "route": route}
                          if route else {"text": f"deploy {n} finished, please summarize the log"}).encode()
        headers = signed_headers(HOOK_SECRET, f"msg_{uuid.uuid4().hex}", now, body)
        lines = ["POST /hooks/generic HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        out.append("\r\n".join(lines) + "\r\n\r\n" + body.decode())
    return out


@dataclass
class WrkResult:
    rate: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


def wrk(url: str, requests: list[str] | None, seconds: float, connections: int = 64, threads: int = 2,
        rate: float | None = None) -> WrkResult:
    """Run wrk. `requests`: raw requests each wrk thread cycles through its own share of (so no
    two threads send the same webhook id); None: POST a fixed body. `rate`: pace to about this
    many requests/s in total (for latency at a given load), else as fast as possible."""
    binary = need("wrk", "wrk")
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-wrk-"))
    shares = [requests[i::threads] for i in range(threads)] if requests else []
    for i, share in enumerate(shares):
        (workdir / f"requests{i}.lua").write_text("return {" + ",".join(_lua_string(r) for r in share) + "}")
    delay = f"function delay() return {connections * 1000.0 / rate:.3f} end" if rate else ""
    (workdir / "script.lua").write_text(f"""
local count = 0
function setup(thread) thread:set("tid", count); count = count + 1 end
function init(args)
  {"reqs = dofile('" + str(workdir) + "/requests' .. tid .. '.lua')" if requests else "reqs = nil"}
  i = 0
end
function request()
  if reqs then i = i % #reqs + 1; return reqs[i] end
  return wrk.format("POST", "/", {{["Content-Type"] = "application/json"}}, '{{"text":"hello"}}')
end
{delay}
function done(summary, latency, requests)
  io.write(string.format("BENCH %d %d %d %d %f %f\\n", summary.requests, summary.duration,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0))
end
""")
    result = subprocess.run([binary, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                             "--timeout", "10s", "-s", str(workdir / "script.lua"), url],
                            capture_output=True, text=True, cwd=workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    match = re.search(r"BENCH (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", result.stdout)
    if not match:
        raise SystemExit(f"wrk failed: {result.stdout[-500:]} {result.stderr[-500:]}")
    total, micros, status_errors, errors = (int(match.group(i)) for i in range(1, 5))
    return WrkResult(rate=total / (micros / 1e6), p50_ms=float(match.group(5)), p99_ms=float(match.group(6)),
                     non_2xx=status_errors, errors=errors)


def _lua_string(text: str) -> str:
    """A quoted Lua string (a long [[…]] string would turn the request's CR LF into LF)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n")
    return '"' + escaped + '"'
