"""The ingest baseline: a bare Starlette endpoint answering 202, on relay serve's uvicorn settings."""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.serving import server_config, tune_gc


async def accept(request: Request) -> Response:
    await request.body()
    return JSONResponse({"client_message_id": "bare"}, status_code=202)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/hooks/generic", accept, methods=["POST"]), Route("/", accept, methods=["POST"]),
                        Route("/healthz", healthz)])

if __name__ == "__main__":
    tune_gc()  # the same process tuning as relay's, so the ratio compares the work per request
    uvicorn.Server(server_config(app, "127.0.0.1", int(sys.argv[1]))).run()
