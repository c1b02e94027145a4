"""`relay dev`'s settings: the public development secret and admin token are for a laptop only.
With real deliveries (LETTA_API_KEY) or a non-loopback address, relay dev wants secrets of its own."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from relay.dev import DEV_ADMIN_TOKEN, DEV_HOOK_SECRET, prepare
from relay.errors import ConfigError
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.sources.generic import decode_secret
from tests.support import free_port, relay_env

ROOT = Path(__file__).resolve().parents[1]
OWN_SECRET = decode_secret("whsec_" + "b3duLXNlY3JldC1vZi1hdC1sZWFzdC0yNC1ieXRlcw==")
OWN_TOKEN = "an-admin-token-of-my-own-0123"
ROUTE = Route("default", Destination(agent_id="agent-1", device_id="device-1"))
REAL = Settings(letta_api_key="real-key", routes=(ROUTE,))


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_on_loopback_without_letta_the_public_development_secret_and_token_fill_in(host: str) -> None:
    prepared = prepare(Settings(), host)
    assert prepared.hook_secret == decode_secret(DEV_HOOK_SECRET) and prepared.admin_token == DEV_ADMIN_TOKEN


@pytest.mark.parametrize("settings, host", [(REAL, "127.0.0.1"), (Settings(), "0.0.0.0"), (Settings(), "::"),
                                            (Settings(), "192.168.1.20"), (REAL, "10.0.0.5")],
                         ids=["letta-api-key", "all-interfaces", "all-interfaces-v6", "lan", "both"])
def test_real_deliveries_or_a_public_address_require_a_hook_secret_of_ones_own(settings: Settings, host: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_HOOK_SECRET"):
        prepare(settings, host)
    with pytest.raises(ConfigError, match="public development secret"):
        prepare(replace(settings, hook_secret=decode_secret(DEV_HOOK_SECRET)), host)
    with pytest.raises(ConfigError, match="RELAY_ADMIN_TOKEN"):
        prepare(replace(settings, hook_secret=OWN_SECRET, admin_token=DEV_ADMIN_TOKEN), host)
    prepared = prepare(replace(settings, hook_secret=OWN_SECRET), host)
    assert prepared.hook_secret == OWN_SECRET and prepared.admin_token is None  # no public token: no admin API
    assert prepare(replace(settings, hook_secret=OWN_SECRET, admin_token=OWN_TOKEN), host).admin_token == OWN_TOKEN


def test_relay_dev_on_all_interfaces_with_the_public_secret_refuses_to_start() -> None:
    result = subprocess.run([sys.executable, "-m", "relay", "dev", "--host", "0.0.0.0", "--port", str(free_port())],
                            env=relay_env(), capture_output=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert b"RELAY_HOOK_SECRET" in result.stderr and b"Traceback" not in result.stderr
