"""A Letta stand-in that timestamps each body it receives: the far end of the end-to-end
benchmark. The sender puts its send time in the message text (`sent=<epoch seconds>`); the
receiver keeps now − sent per message and answers Letta's fixed JSON.

    python -m bench.receiver PORT        GET /latencies → [seconds, …]; DELETE /latencies resets
"""

from __future__ import annotations

import json
import re
import sys
import time

from aiohttp import web

SENT = re.compile(rb"sent=([0-9.]+)")
ANSWER = b'{"message":"Message sent","success":true}'


def app() -> web.Application:
    latencies: list[float] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        match = SENT.search(body)
        if match:
            latencies.append(now - float(match.group(1)))
        return web.Response(body=ANSWER, content_type="application/json")

    async def report(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(latencies), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        latencies.clear()
        return web.Response(text="[]", content_type="application/json")

    application = web.Application()
    application.router.add_get("/latencies", report)
    application.router.add_delete("/latencies", reset)
    application.router.add_post("/{tail:.*}", receive)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
