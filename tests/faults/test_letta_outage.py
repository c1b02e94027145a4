"""3. A Letta outage: 500s, then 429 with Retry-After, then calls that hang past the timeout,
for longer than the in-call retry budget (10 s); then recovery."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Rig


@pytest.mark.slow
def test_outage_ends_with_every_message_delivered_in_order_and_retry_after_honoured(rig: Rig) -> None:
    rig.worker()
    rig.worker()  # two workers: the 429's pause must hold both
    outage_started = time.monotonic()
    rig.standin.add_fault(500, times=None)
    for seq in range(6):
        for conversation in range(4):
            assert rig.ingest(conversation, seq).status_code == 202
    rig.wait(lambda: len(rig.standin.attempts) >= 12, what="the workers retrying through the 500s")
    time.sleep(3)
    rig.standin.clear_faults()

    rig.standin.add_fault(429, retry_after="2")
    rig.wait(lambda: any(a.status == 429 for a in rig.standin.attempts), what="the 429")
    rig.wait(lambda: rig.pause() > 0, what="the pause published to every worker")
    for conversation in range(4):  # nothing relay holds yet: must wait for the pause to end
        assert rig.ingest(conversation, 6).status_code == 202
    after_pause = {i for i, (_, seq) in rig.ledger.accepted.items() if seq == 6}
    rig.standin.add_fault(200, delay=3.0, times=None)  # past RELAY_LETTA_TIMEOUT (2 s)
    rig.wait(lambda: any(a.status == 0 for a in rig.standin.attempts), what="a call hanging")
    while time.monotonic() - outage_started < 12:  # longer than the in-call budget (3 tries, 10 s)
        time.sleep(0.2)
    rig.standin.clear_faults()
    rig.ledger.fault("Letta 500s, a 429 with Retry-After: 2, hangs past the timeout")

    result = rig.finish()
    assert result["dead_lettered"] == 0
    # Retry-After honoured: the limited message waits, and so does everything relay took in after
    # the pause was published (requests already committed when the 429 came back cannot be recalled).
    [limited] = [a for a in rig.standin.attempts if a.status == 429]
    again = [a.at for a in rig.standin.attempts if a.at > limited.at and set(a.message_ids) & set(limited.message_ids)]
    newer = [a.at for a in rig.standin.attempts if set(a.message_ids) & after_pause]
    assert again and newer and min(again + newer) >= limited.answered_at + 2.0, "a request went out before Retry-After"
    hung = [a for a in rig.standin.attempts if a.answered_at - a.at >= 3.0]
    assert hung, "no call outlived the client timeout"
