"""Write n jobs straight into arq's queue, for the drain benchmark.

The keys arq's `enqueue_job` would write (the pickled job under arq:job:<id> with arq's expiry,
its id in the queue's sorted set, scored now), pipelined 2000 at a time and without
enqueue_job's WATCH round trips: the queue starts full and the clock has not started.

    python -m bench.arq_peer.prefill REDIS_URL COUNT CONVERSATIONS
"""

from __future__ import annotations

import asyncio
import sys

from arq.connections import RedisSettings, create_pool
from arq.constants import expires_extra_ms, job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from bench.arq_peer.shared import FUNCTION, QUEUE
from bench.workload import envelopes
from relay.messages import encode

BATCH = 2000


async def prefill(redis_url: str, count: int, conversations: int) -> None:
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    messages = envelopes(count, conversations)
    try:
        for start in range(0, count, BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for envelope in messages[start:start + BATCH]:
                    now = timestamp_ms()
                    job_id = envelope.client_message_id
                    pipe.psetex(job_key_prefix + job_id, expires_extra_ms,
                                serialize_job(FUNCTION, (encode(envelope),), {}, None, now))
                    pipe.zadd(QUEUE, {job_id: now})
                await pipe.execute()
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(prefill(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
