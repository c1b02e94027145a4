"""A Letta stand-in with realistic latency: every POST is answered with Letta's fixed success
JSON `delay` seconds after its body arrived. A raw asyncio protocol on uvloop (HTTP/1.1,
keep-alive, no pipelining needed), so thousands of calls can wait at once without it being
the bottleneck.

    python -m bench.slow_letta PORT DELAY_SECONDS
"""

from __future__ import annotations

import asyncio
import sys

ANSWER = b'{"message":"Message sent","success":true}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(ANSWER), ANSWER))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


class SlowLetta(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is one

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            total = end + 4 + _content_length(self.buffer[:end])
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            # Equal delays keep a connection's answers in the order its requests came.
            asyncio.get_running_loop().call_later(self.delay, self._answer)

    def _answer(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowLetta(delay), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), float(sys.argv[2])))
