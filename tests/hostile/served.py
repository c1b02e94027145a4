"""A real `relay serve` process on loopback with every door open, as an attacker meets it: its
own Redis key prefix on the test Redis, a routes file with Slack, GitHub (one tenant on a secret
of its own), Linear, GitLab, Discord, a mapped webhook and the generic webhook, and the process's memory and sockets readable from /proc."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from relay.sources import discord
from tests.support import free_port, relay_env

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path(__file__).parent / "last-run.json"
HOOK_KEY = b"hostile-hook-key-0123456789abcdef"
HOOK_SECRET = "whsec_" + base64.b64encode(HOOK_KEY).decode()
SLACK_SECRET = b"hostile-slack-signing-secret-0123"
GITHUB_SECRET = b"hostile-github-shared-secret-0123"
ACME_SECRET = b"hostile-github-acme-secret-0123"
ADMIN_TOKEN = "hostile-admin-token-0123456789abcdef"
LINEAR_SECRET = b"hostile-linear-signing-secret-0123"
GITLAB_TOKEN = b"hostile-gitlab-webhook-token-0123"
DISCORD_SEED = b"hostile-discord-application-key!"  # 32 bytes: the application's Ed25519 key
MAPPED_SECRET = b"hostile-mapped-hmac-secret-0123"
ROUTES = """
[routes.default]
agent_id = "agent-default"
device_id = "device-h"

[routes.chat]
agent_id = "agent-chat"
device_id = "device-h"
[routes.chat.slack]
teams = ["T0001"]
approvers = ["U0001"]

[routes.octo]
agent_id = "agent-octo"
device_id = "device-h"
[routes.octo.github]
repositories = ["octo/*"]
approvers = ["octocat"]
actions = ["created", "edited", "deleted"]

[routes.acme]
agent_id = "agent-acme"
device_id = "device-h"
[routes.acme.github]
repositories = ["acme/*"]
approvers = ["wile"]
secret_env = "GITHUB_SECRET_ACME"

[routes.doors]
agent_id = "agent-doors"
device_id = "device-h"
[routes.doors.linear]
teams = ["ENG"]
[routes.doors.gitlab]
projects = ["octo/*"]
access_level = "any"
[routes.doors.discord]
guilds = ["1300000000000000001"]

[routes.pd]
agent_id = "agent-pd"
device_id = "device-h"
[routes.pd.mapped]
verify = "hmac"
secret_env = "PD_SECRET"
header = "X-PagerDuty-Signature"
prefix = "v1="
separator = ","
identity = "event.id"
text = "PagerDuty {{ event.event_type }}: {{ event.data.title }}"
"""


@dataclass
class Served:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the web process, in bytes."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match, status
        return int(match.group(1)) * 1024

    def sockets(self) -> int:
        """Open sockets of the web process (listening socket, Redis, clients)."""
        count = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:")
        return count

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False


@contextlib.contextmanager
def relay_serve(tmp: Path, redis_url: str, prefix: str, slack_api_url: str, slack_hooks_url: str,
                **settings: str) -> Iterator[Served]:
    """`relay serve` in a subprocess until the block ends (SIGTERM; the test deletes its keys)."""
    routes = tmp / "routes.toml"
    routes.write_text(ROUTES)
    port = free_port()
    env = relay_env(REDIS_URL=redis_url, RELAY_KEY_PREFIX=prefix, RELAY_HOOK_SECRET=HOOK_SECRET,
                    RELAY_ROUTES=str(routes), SLACK_SIGNING_SECRET=SLACK_SECRET.decode(),
                    SLACK_BOT_TOKEN="xoxb-hostile", SLACK_API_BASE_URL=slack_api_url,
                    SLACK_HOOKS_URL=slack_hooks_url, GITHUB_WEBHOOK_SECRET=GITHUB_SECRET.decode(),
                    GITHUB_SECRET_ACME=ACME_SECRET.decode(), RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
                    LINEAR_WEBHOOK_SECRET=LINEAR_SECRET.decode(), GITLAB_WEBHOOK_TOKEN=GITLAB_TOKEN.decode(),
                    DISCORD_PUBLIC_KEY=discord.public_key_of(DISCORD_SEED).hex(), PD_SECRET=MAPPED_SECRET.decode(),
                    **settings)
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "relay", "serve", "--port", str(port)], env=env,
                                   stdout=log, stderr=log, cwd=ROOT)
    served = Served(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while not served.healthy(timeout=1):
            assert time.monotonic() < deadline and process.poll() is None, served.log()
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def record_figures(name: str, figures: dict[str, object]) -> None:
    """Add one test's figures to tests/hostile/last-run.json (tests run in parallel: locked)."""
    with open(REPORT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            existing = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        except ValueError:
            existing = {}
        existing[name] = figures
        REPORT.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
