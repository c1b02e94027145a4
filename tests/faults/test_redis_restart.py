"""2. Redis SIGKILLed and restarted from its AOF while messages sit in every state."""

from __future__ import annotations

import time

from relay.standin import Device
from tests.faults.conftest import Rig


def test_redis_restart_loses_nothing_and_everyone_recovers_by_themselves(rig: Rig) -> None:
    rig.standin.devices.append(Device("late-device", "late-box", "conn-late", online=False))
    # One delivery slot: while it is busy, nothing more is claimed. A long backoff keeps the
    # offline device's message in the delayed set for a while.
    worker = rig.worker(RELAY_CONCURRENCY="1", RELAY_RETRY_BASE="10", RELAY_RETRY_CAP="10")
    # dead-lettered: a message Letta always refuses
    assert rig.ingest(0, 0).status_code == 202
    poison = next(iter(rig.ledger.accepted))
    rig.standin.add_fault(400, times=None, message_id=poison)
    rig.wait(lambda: len(rig.dead_letters()) == 1, what="the poison message dead-lettered")
    # delayed: a message for a device that is offline, retried with backoff
    assert rig.ingest(1, 0, route="late").status_code == 202
    # in flight, with a backlog behind it in the same conversation: the call hangs
    rig.standin.add_fault(200, delay=6.0)
    for seq in range(3):
        assert rig.ingest(2, seq).status_code == 202
    rig.wait(lambda: any(a.status == 0 for a in rig.standin.attempts), what="the hanging call under way")
    rig.wait(lambda: rig.depth().delayed == 1, what="the offline device's message waiting to retry")
    # ready: once the readers' blocking reads (1 s) have ended, they wait for room
    time.sleep(1.3)
    for conversation in range(3, 8):
        assert rig.ingest(conversation, 0).status_code == 202
    depth = rig.depth()
    assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (5, 1, 1, 1), depth

    rig.redis.kill()
    rig.ledger.fault("SIGKILL redis-server")
    refused = rig.ingest(9, 0)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    time.sleep(1.5)  # longer than RELAY_RECLAIM_AFTER: no renewals happen meanwhile
    rig.redis.restart()
    depth = rig.depth()
    assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (5, 1, 1, 1), depth  # all reloaded

    assert rig.ingest(9, 1).status_code == 202  # the web recovered without a restart
    rig.standin.devices[-1].online = True
    result = rig.finish()
    assert result["dead_lettered"] == 1 and rig.dead_letters()[0].client_message_id == poison
    assert worker.poll() is None  # the same worker process reconnected by itself
