"""Every Redis key relay writes, and the partition a conversation lives in."""

from __future__ import annotations

import zlib

PARTITIONS = 16
GROUP = "workers"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def partition_of(conversation: str) -> int:
        return zlib.crc32(conversation.encode()) % PARTITIONS

    @property
    def tag_start(self) -> str:
        """What every partition's tag starts with: the tag is this, two digits and "}"."""
        return f"{self.prefix}:{{p"

    def _tag(self, partition: int) -> str:
        return f"{self.tag_start}{partition:02d}}}"

    def ready(self, partition: int) -> str:
        return f"{self._tag(partition)}:ready"

    def body(self, partition: int) -> str:
        return f"{self._tag(partition)}:body"

    def delayed(self, partition: int) -> str:
        return f"{self._tag(partition)}:delayed"

    def dead(self, partition: int) -> str:
        return f"{self._tag(partition)}:dead"

    def pause(self, partition: int) -> str:
        return f"{self._tag(partition)}:pause"

    def dead_codes(self, partition: int) -> str:
        return f"{self._tag(partition)}:deadcodes"

    def failures(self, partition: int, hour: int) -> str:
        return f"{self._tag(partition)}:failures:{hour}"

    def mailbox(self, partition: int, conversation: str) -> str:
        return f"{self._tag(partition)}:mbox:{conversation}"

    def seen(self, partition: int, message_id: str) -> str:
        return f"{self._tag(partition)}:seen:{message_id}"

    def identity(self, message_id: str) -> str:
        return f"{self._tag(self.partition_of(message_id))}:id:{message_id}"

    def record(self, kind: str, key: str) -> str:
        return f"{self.prefix}:rec:{kind}:{key}"

    def pattern(self) -> str:
        """Matches every key relay writes under this prefix (for tests and tooling)."""
        return f"{self.prefix}:*"
