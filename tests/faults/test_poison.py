"""4. Poison messages: one Letta always refuses, one whose destination never resolves."""

from __future__ import annotations

import subprocess
import sys

from relay.standin import Device
from tests.faults.conftest import ROOT, Rig
from tests.support import relay_env


def test_poison_is_dead_lettered_with_reasons_without_delaying_others_and_replays(rig: Rig) -> None:
    rig.worker(RELAY_MAX_AGE="6s")  # long enough for the 20 others on a loaded machine
    assert rig.ingest(0, 0).status_code == 202
    refused = next(iter(rig.ledger.accepted))
    rig.standin.add_fault(400, times=None, message_id=refused, body={"detail": "tool_call_id not pending"})
    assert rig.ingest(11, 0, route="unresolvable").status_code == 202
    unresolvable = list(rig.ledger.accepted)[-1]
    for seq in range(4):
        for conversation in range(1, 6):
            assert rig.ingest(conversation, seq).status_code == 202
    rig.ledger.fault("a message Letta always refuses; a destination that never resolves")

    rig.wait(lambda: len(rig.dead_letters()) == 2, what="both poison messages dead-lettered")
    dead = {d.client_message_id: d for d in rig.dead_letters()}
    assert dead[refused].code == "http_400" and "tool_call_id not pending" in dead[refused].reason
    assert dead[unresolvable].code == "expired"
    assert "no online connection for device_id=no-such-device" in dead[unresolvable].reason
    others = [a for a in rig.standin.delivered() if a.message_ids[0] not in dead]
    assert len(others) == 20 and max(a.answered_at for a in others) < dead[unresolvable].at  # not held up

    rig.standin.clear_faults()
    rig.standin.devices.append(Device("no-such-device", "found-box", "conn-found"))
    replay = subprocess.run([sys.executable, "-m", "relay", "dlq", "replay", "--all"], capture_output=True, cwd=ROOT,
                            env=relay_env(REDIS_URL=rig.redis.url, RELAY_KEY_PREFIX=rig.prefix))
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.decode().count("replayed") == 2
    result = rig.finish()
    assert result["dead_lettered"] == 0 and set(rig.standin.delivered_ids()) >= {refused, unresolvable}
