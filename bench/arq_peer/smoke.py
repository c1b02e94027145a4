"""End-to-end check of the arq peer on real parts: redis-server, nginx as Letta, the peer's
web process and worker. 200 distinct signed webhooks go in (and a few resent, and one forged);
Letta must receive exactly 200 POSTs, each with the body relay would send for its webhook.

    python -m bench.arq_peer.smoke
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import redis

from bench import infra, peer_infra
from relay.messages import client_message_id
from relay.sources.generic import signed_headers

COUNT = 200
RESENT = 20


def webhooks(count: int) -> list[tuple[str, bytes, dict[str, str]]]:
    now = int(time.time())
    out = []
    for n in range(count):
        msg_id = f"msg_{uuid.uuid4().hex}"
        body = json.dumps({"text": f"deploy {n} finished, please summarize the log"}).encode()
        out.append((msg_id, body, signed_headers(infra.HOOK_SECRET, msg_id, now, body)))
    return out


def expected_body(msg_id: str, text: str) -> dict[str, object]:
    """Letta's request body for one generic webhook, written out from the Letta contract."""
    message_id = client_message_id("generic", msg_id)
    return {"messages": [{"role": "user", "client_message_id": message_id, "content": text, "otid": message_id}],
            "agentId": "agent-bench"}


async def send(url: str, hooks: list[tuple[str, bytes, dict[str, str]]]) -> list[int]:
    async with httpx.AsyncClient(base_url=url) as client:
        lanes = asyncio.Semaphore(16)

        async def one(body: bytes, headers: dict[str, str]) -> int:
            async with lanes:
                return (await client.post("/hooks/generic", content=body, headers=headers)).status_code

        return list(await asyncio.gather(*(one(body, headers) for _, body, headers in hooks)))


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"arq peer smoke: FAILED: {what}")


def main() -> None:
    hooks = webhooks(COUNT)
    forged = (hooks[0][0], hooks[0][1], {**hooks[0][2], "webhook-signature": "v1,AAAA"})
    with infra.redis_server() as redis_url, peer_infra.nginx_recording() as letta, \
            peer_infra.arq_serve(redis_url) as app, peer_infra.arq_worker(redis_url, letta.url):
        statuses = asyncio.run(send(app.url, hooks))
        check(statuses == [202] * COUNT, f"webhooks answered {sorted(set(statuses))}, want 202")
        again = asyncio.run(send(app.url, hooks[:RESENT] + [forged]))
        check(again == [200] * RESENT + [401], f"resent/forged webhooks answered {again}, want 200s then 401")
        client = redis.Redis.from_url(redis_url)
        infra.wait_until(lambda: peer_infra.arq_drained(client), "the arq queue's drain", timeout=30)
        outcomes = peer_infra.arq_outcomes(client)
        client.close()
        time.sleep(0.2)  # let nginx write its last log lines
        posts = letta.posts()
    check(outcomes == peer_infra.Outcomes(succeeded=COUNT, failed=0), f"arq results: {outcomes}")
    check(len(posts) == COUNT, f"Letta received {len(posts)} POSTs, want {COUNT}")
    check({p.uri for p in posts} == {"/v1/environments/conn-bench/messages"}, f"paths: {({p.uri for p in posts})}")
    received = sorted((json.loads(p.body) for p in posts), key=lambda b: b["messages"][0]["client_message_id"])
    wanted = sorted((expected_body(msg_id, json.loads(body)["text"]) for msg_id, body, _ in hooks),
                    key=lambda b: b["messages"][0]["client_message_id"])
    check(received == wanted, "Letta's request bodies differ from the webhooks' messages")
    print(f"arq peer smoke: ok ({COUNT} webhooks → {COUNT} Letta POSTs with the right bodies; "
          f"{RESENT} resent answered as duplicates; a forged signature refused)")


if __name__ == "__main__":
    main()
