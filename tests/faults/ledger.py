"""The ledger every fault scenario ends with.

Every message answered 2xx at ingest is either delivered (seen by the Letta stand-in) or in the
dead-letter stream with a reason. Nothing arrives with an id that was never accepted. Repeats
are the same client_message_id sent again after a fault. Within a conversation the first
arrivals keep the order of ingest: no gap (unless dead-lettered) and no reversal.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from relay.queue import DeadEntry
from relay.standin import LettaStandIn


@dataclass
class Ledger:
    scenario: str
    accepted: dict[str, tuple[str, int]] = field(default_factory=dict)  # id → (conversation, seq)
    faults: list[str] = field(default_factory=list)

    def accept(self, message_id: str, conversation: str, seq: int) -> None:
        assert message_id not in self.accepted, "ingest gave two messages one id"
        self.accepted[message_id] = (conversation, seq)

    def fault(self, what: str) -> None:
        self.faults.append(what)

    def check(self, standin: LettaStandIn, dead: list[DeadEntry]) -> dict[str, Any]:
        delivered = standin.delivered_ids()
        dead_ids = {d.client_message_id for d in dead}
        invented = set(delivered) - set(self.accepted)
        assert not invented, f"{self.scenario}: ids nobody sent arrived: {sorted(invented)[:5]}"
        assert all(d.reason for d in dead), f"{self.scenario}: a dead letter without a reason"
        lost = set(self.accepted) - set(delivered) - dead_ids
        assert not lost, f"{self.scenario}: {len(lost)} accepted messages neither delivered nor dead-lettered"
        counts = collections.Counter(delivered)
        for conversation in {c for c, _ in self.accepted.values()}:
            firsts = [self.accepted[i][1] for i in dict.fromkeys(delivered)
                      if self.accepted[i][0] == conversation and i not in dead_ids]
            expected = sorted(s for i, (c, s) in self.accepted.items() if c == conversation and i not in dead_ids)
            assert firsts == expected, f"{self.scenario}: conversation {conversation} arrived as {firsts}"
        return {
            "scenario": self.scenario,
            "accepted": len(self.accepted),
            "delivered": len(set(delivered)),
            "dead_lettered": len(dead_ids & set(self.accepted)),
            "lost": len(lost),
            "resent_same_id": sum(n - 1 for n in counts.values()),
            "new_ids": len(invented),
            "faults": len(self.faults),
        }
