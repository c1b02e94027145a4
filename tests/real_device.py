"""The real Letta Code device (PyPI `letta` 0.34.12), run offline for tests.

A fresh `HOME` per run, the local backend with a scripted model, and `letta server` pointed at
relay's own stand-in of Letta's hosted server (relay.standin), which plays the bridge: the
device registers there, connects its socket, and from then on the stand-in moves frames
between it and relay exactly as for a simulated device (../shared/letta-real-device.md).

The package is used at test time only (the `test` extra installs it); nothing of it is copied.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from relay.standin import Device, LettaStandIn
from tests.support import ServerThread

VERSION = "0.34.12"
API_KEY = "real-device-test-key"
#: The scripted model: every turn answers "pong"; a message containing "$TRANSCRIPT_PATH" first
#: asks to run a Bash tool (an approval request), then answers once it is decided.
EXECUTOR = "deterministic-reflection"


def letta_command() -> list[str] | None:
    """How to run the installed device, or None (with the reason in `why_not`)."""
    found = shutil.which("letta", path=str(Path(sys.executable).parent)) or os.environ.get("RELAY_LETTA_BIN")
    return [found] if found else None


def why_not() -> str | None:
    """Why the real device cannot run here, or None when it can."""
    try:
        version = importlib.metadata.version("letta")
    except importlib.metadata.PackageNotFoundError:
        return f"letta=={VERSION} is not installed (pip install -e '.[test]' installs it)"
    if version != VERSION:
        return f"letta {version} is installed; these tests pin the {VERSION} protocol"
    if letta_command() is None:
        return "the letta command of the installed package was not found next to this Python"
    if shutil.which("git") is None:
        return "the device's local backend needs git on PATH"
    return None


class RealDevice:
    """One `letta server` process registered with a stand-in server, and agents on it."""

    def __init__(self, home: Path, name: str, agents: int = 1) -> None:
        self.home, self.name, self.agents_wanted = home, name, agents
        self._agents: list[str] = []
        self.standin = LettaStandIn([], api_key=API_KEY)
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")}
        return {**keep, "HOME": str(self.home), "LETTA_API_KEY": API_KEY, "LETTA_BASE_URL": self.base_url,
                "IGNORE_SELF_HOSTED_LISTENER_ERROR": "1", "LETTA_LOCAL_BACKEND_EXPERIMENTAL": "1",
                "LETTA_LOCAL_BACKEND_EXECUTOR": EXECUTOR, "NO_COLOR": "1", "DO_NOT_TRACK": "1"}

    def new_agent(self) -> str:
        """An agent of its own for a test: the device only knows agents made before it started."""
        assert self._agents, f"all {self.agents_wanted} agents made for this device are taken"
        return self._agents.pop(0)

    def _make_agent(self) -> str:
        """A new agent in the local backend (its id is `agent-local-…`)."""
        command = letta_command()
        assert command is not None
        done = subprocess.run([*command, "-p", "hello", "--backend", "local", "--new-agent", "--output-format",
                               "json"], env=self.env(), capture_output=True, timeout=60, cwd=self.home)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        agent_id = json.loads(done.stdout)["agent_id"]
        assert isinstance(agent_id, str) and agent_id.startswith("agent-local-")
        return agent_id

    def device(self) -> Device:
        with self.standin._changed:
            return next(d for d in self.standin.devices if d.connection_name == self.name)

    def require_approvals(self, agent_id: str) -> None:
        """What a person at the device would do: leave "unrestricted" mode, so tools need approval."""
        self.standin.command_device(self.device().device_id, {
            "type": "change_device_state", "runtime": {"agent_id": agent_id, "conversation_id": "default"},
            "payload": {"mode": "standard"}})
        assert self.standin.wait_for(lambda s: any(
            isinstance(f.get("device_status"), dict) and f["device_status"].get("current_permission_mode")
            == "standard" for f in s.device_frames), 15.0), "the device did not change its mode"

    @contextlib.contextmanager
    def running(self) -> Iterator[RealDevice]:
        command = letta_command()
        assert command is not None
        self.home.mkdir(parents=True, exist_ok=True)
        for key, value in (("user.email", "relay-tests@example.invalid"), ("user.name", "relay tests")):
            subprocess.run(["git", "config", "--global", key, value], env=self.env(), check=True)
        self._agents = [self._make_agent() for _ in range(self.agents_wanted)]
        with ServerThread(self.standin.app) as server:
            self.base_url = server.url
            log = open(self.home / "device.log", "wb")
            self.process = subprocess.Popen([*command, "server", "--computer-name", self.name,
                                             "--lifecycle-output", "jsonl"], env=self.env(), cwd=self.home,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                live = self.standin.wait_for(lambda s: any(d.connection_name == self.name and d.live
                                                           for d in s.devices), 60.0)
                assert live, f"the device did not connect:\n{self.log_tail()}"
                yield self
            finally:
                self.stop()
                log.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def log_tail(self, size: int = 4000) -> str:
        path = self.home / "device.log"
        return path.read_bytes()[-size:].decode(errors="replace") if path.exists() else ""
