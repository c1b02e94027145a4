"""Grouped round trips (relay.queue.calls): GroupCommit and its lanes, one per master."""

from __future__ import annotations

import asyncio

import pytest

from relay.queue.calls import GroupCommit, Lanes

pytestmark = pytest.mark.anyio


class Sender:
    """A `send` that records each batch and holds lane "slow" until released."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.release = asyncio.Event()

    async def send(self, items: list[tuple[str, int]]) -> list[int | Exception]:
        self.batches.append(items)
        if any(lane == "slow" for lane, _ in items):
            await self.release.wait()
        else:
            await asyncio.sleep(0)
        return [n * 10 for _, n in items]


async def test_calls_made_while_a_round_trip_is_out_go_together_in_the_next() -> None:
    sender = Sender()
    commit: GroupCommit[tuple[str, int], int] = GroupCommit(sender.send)
    first = asyncio.create_task(commit.submit(("slow", 1)))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(commit.submit(("slow", n))) for n in (2, 3, 4)]
    await asyncio.sleep(0.01)
    sender.release.set()
    assert [await first, *[await w for w in waiting]] == [10, 20, 30, 40]
    assert [len(b) for b in sender.batches] == [1, 3]


async def test_a_batch_bound_for_one_master_never_waits_for_another_masters_round_trip() -> None:
    sender = Sender()
    lanes: Lanes[tuple[str, int], int] = Lanes(sender.send, lambda item: item[0])
    slow = asyncio.create_task(lanes.submit(("slow", 1)))
    await asyncio.sleep(0.01)
    fast = await asyncio.wait_for(asyncio.gather(*(lanes.submit(("fast", n)) for n in (2, 3))), 5)
    assert fast == [20, 30] and not slow.done()
    sender.release.set()
    assert await slow == 10


async def test_one_lane_batches_as_one_group_commit() -> None:
    sender = Sender()
    lanes: Lanes[tuple[str, int], int] = Lanes(sender.send, lambda item: "")
    assert await asyncio.gather(*(lanes.submit(("", n)) for n in range(5))) == [0, 10, 20, 30, 40]
    assert [len(b) for b in sender.batches] == [5]


async def test_an_exception_for_one_item_reaches_that_caller_alone() -> None:
    async def send(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"bad {n}") if n == 2 else n for n in items]

    commit: GroupCommit[int, int] = GroupCommit(send)
    results = await asyncio.gather(*(commit.submit(n) for n in (1, 2, 3)), return_exceptions=True)
    assert results[0] == 1 and results[2] == 3 and isinstance(results[1], ValueError)
