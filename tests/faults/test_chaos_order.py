"""5. Ordering under chaos: many conversations × a numbered sequence each, several workers,
workers SIGKILLed and restarted at random (seeded), a flaky Letta. No gap, no reversal."""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.faults.conftest import CONVERSATIONS, Rig

SEED = 20261125
PER_CONVERSATION = 20


@pytest.mark.slow
def test_no_conversation_sees_a_gap_or_a_reversal_while_workers_die_at_random(rig: Rig) -> None:
    chance = random.Random(SEED)
    rig.standin.add_fault(500, probability=0.1, times=None)
    rig.standin.add_fault(200, delay=0.05, probability=0.3, times=None)
    workers = [rig.worker() for _ in range(3)]
    refused: list[int] = []

    def traffic() -> None:  # one sender, so each conversation's arrival order is its numbering
        for seq in range(PER_CONVERSATION):
            for conversation in range(CONVERSATIONS):
                if rig.ingest(conversation, seq).status_code != 202:
                    refused.append(seq)
                time.sleep(chance_traffic.uniform(0, 0.01))

    chance_traffic = random.Random(SEED + 1)
    sender = threading.Thread(target=traffic)
    sender.start()
    kills = 0
    started = time.monotonic()
    while time.monotonic() - started < 10 or sender.is_alive():
        time.sleep(chance.uniform(0.2, 0.8))
        victim = chance.randrange(len(workers))
        rig.kill(workers[victim])
        kills += 1
        workers[victim] = rig.worker()
    sender.join()
    rig.standin.clear_faults()

    assert refused == []
    result = rig.finish()
    assert kills >= 10
    assert result["accepted"] == CONVERSATIONS * PER_CONVERSATION and result["dead_lettered"] == 0
