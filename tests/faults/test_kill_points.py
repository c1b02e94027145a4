"""1. A worker SIGKILLed at each point of a delivery; another worker finishes the work."""

from __future__ import annotations

import pytest

from tests.faults.conftest import Rig
from tests.faults.crashing_worker import POINTS


@pytest.mark.parametrize("point", POINTS)
def test_worker_killed_at_each_point_loses_nothing(point: str, rig: Rig) -> None:
    for seq in range(5):
        for conversation in range(4):
            assert rig.ingest(conversation, seq).status_code == 202
    if point == "during_call":
        rig.standin.add_fault(200, delay=5.0)  # the first request hangs while its worker dies
    if point == "during_retry":
        rig.standin.add_fault(500)  # the first answer is retryable; scheduling the retry kills
    doomed = rig.worker(crash_at=point)
    assert doomed.wait(timeout=30) == -9, rig.log()  # it died by SIGKILL, at the point
    rig.ledger.fault(f"SIGKILL {point}")
    rig.worker()  # the survivor takes the claims over after RELAY_RECLAIM_AFTER
    result = rig.finish()
    assert result["dead_lettered"] == 0
