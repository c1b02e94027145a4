"""6. SIGTERM during load: in-flight work is finished or handed back; nothing is lost."""

from __future__ import annotations

from tests.faults.conftest import Rig


def test_sigterm_under_load_finishes_or_hands_back_everything(rig: Rig) -> None:
    rig.standin.add_fault(200, delay=0.05, times=None)  # a slow Letta keeps calls in flight
    settings = {"RELAY_SHUTDOWN_GRACE": "0.3", "RELAY_LETTA_TIMEOUT": "30"}
    first, second = rig.worker(**settings), rig.worker(**settings)
    for seq in range(15):
        for conversation in range(6):
            assert rig.ingest(conversation, seq).status_code == 202
    rig.wait(lambda: len(rig.standin.delivered()) >= 30, what="deliveries under way")
    rig.standin.clear_faults()
    rig.standin.add_fault(200, delay=10.0, times=3)  # calls that outlast the grace period
    rig.standin.add_fault(200, delay=0.05, times=None)
    for seq in range(15, 25):
        for conversation in range(6):
            assert rig.ingest(conversation, seq).status_code == 202
    rig.wait(lambda: sum(a.status == 0 for a in rig.standin.attempts) >= 2, what="calls hanging")
    assert rig.terminate(first) == 0 and rig.terminate(second) == 0, rig.log()
    rig.ledger.fault("SIGTERM both workers under load")
    assert rig.depth().in_flight == 0  # nothing left claimed by a stopped worker: finished or handed back
    assert "handed back" in rig.log()
    rig.worker()
    result = rig.finish()
    assert result["dead_lettered"] == 0
