"""The web's connection limits, over raw loopback sockets against uvicorn with relay's protocol:
oversized and too many headers, slow headers and bodies, bodies nobody will read, idle
keep-alives, and more connections than allowed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from relay.connections import ConnectionLimits
from tests.support import ServerThread

LIMITS = ConnectionLimits(max_header_bytes=4096, max_headers=20, header_timeout=0.5, body_timeout=0.5,
                          keepalive_timeout=0.5, max_connections=4)
RELEASE = threading.Event()


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def echo(request: Request) -> Response:
    return JSONResponse({"length": len(await request.body())})


async def refuse(request: Request) -> Response:
    return JSONResponse({"error": "missing signature"}, status_code=401)


async def slow(request: Request) -> Response:
    await asyncio.to_thread(RELEASE.wait, 10)
    return JSONResponse({"ok": True})


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_text(await websocket.receive_text())


APP = Starlette(routes=[Route("/ok", ok), Route("/echo", echo, methods=["POST"]),
                        Route("/refuse", refuse, methods=["POST"]), Route("/slow", slow),
                        WebSocketRoute("/ws", ws_echo)])


@pytest.fixture
def server() -> Iterator[tuple[ServerThread, list[str]]]:
    closes: list[str] = []
    RELEASE.clear()
    with ServerThread(APP, LIMITS, closes.append) as running:
        yield running, closes
    RELEASE.set()


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def response(sock: socket.socket) -> tuple[int, bytes]:
    """One response: (status, body); (0, b"") when the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = receive(sock)
        if not chunk:
            return 0, b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        chunk = receive(sock)
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ")[1]), body


def receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def closed(sock: socket.socket) -> bool:
    """The server closed the connection (EOF or reset) within the socket's timeout."""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def request(path: str = "/ok", *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_head(path: str, length: int) -> bytes:
    """A POST's request line and headers, announcing a body of `length` bytes not sent yet."""
    return f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: {length}\r\n\r\n".encode()


def test_requests_within_the_limits_are_served_on_one_kept_alive_connection(server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    headers = [f"X-Filler-{i}: {'v' * 150}" for i in range(18)]  # ~3 KiB in 20 header fields
    for _ in range(3):
        sock.sendall(request("/echo", *headers, method="POST", body=b"x" * 100_000))
        assert response(sock) == (200, b'{"length":100000}')
    sock.close()
    assert closes == []


@pytest.mark.parametrize("size", [5000, 64 * 1024, 2 * 1024 * 1024])
def test_headers_over_the_limit_are_431_and_the_connection_closed(size: int,
                                                                  server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    try:
        sock.sendall(request("/ok", "X-Big: " + "a" * size))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading at the limit
    assert response(sock)[0] in (431, 0) and closed(sock)
    assert closes == ["header_too_large"]


def test_an_unfinished_header_is_cut_off_at_the_limit_not_buffered(server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    sock.sendall(b"GET /ok HTTP/1.1\r\nX-Endless: ")
    sent = 0
    try:
        while sent < 8 * 1024 * 1024:  # never a final CRLF
            sock.sendall(b"a" * 16384)
            sent += 16384
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 8 * 1024 * 1024  # refused long before the end
    assert closed(sock) and closes == ["header_too_large"]


def test_a_long_url_counts_as_header_bytes(server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    sock.sendall(request("/ok?" + "q" * 5000))
    assert response(sock)[0] == 431 and closed(sock)


def test_more_header_fields_than_allowed_are_431(server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    sock.sendall(request("/ok", *(f"X-{i}: 1" for i in range(25))))
    assert response(sock)[0] == 431 and closed(sock)
    assert closes == ["too_many_headers"]


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
        server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    assert response(sock)[0] == 408 and closed(sock)
    assert closes == ["header_timeout"]


def test_headers_trickled_a_byte_at_a_time_are_cut_off_after_the_header_timeout(
        server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    data = request("/ok", *(f"X-{i}: {'v' * 20}" for i in range(10)))
    sent = 0
    try:
        for byte in data:
            sock.send(bytes([byte]))
            sent += 1
            time.sleep(0.02)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < len(data)
    assert response(sock)[0] in (408, 0) and closes == ["header_timeout"]


def test_a_body_trickled_too_slowly_is_cut_off_after_the_body_timeout(server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    sock.sendall(post_head("/echo", 1000))
    sent = 0
    try:
        while sent < 1000:
            sock.send(b"x")
            sent += 1
            time.sleep(0.02)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 1000 and response(sock)[0] != 200
    assert closes == ["body_timeout"]


def test_a_request_refused_before_its_body_is_read_closes_the_connection(
        server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    sock = connect(running)
    sock.sendall(post_head("/refuse", 1048576) + b"x" * 65536)
    assert response(sock)[0] == 401 and closed(sock)
    assert closes == ["unread_body"]


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
        server: tuple[ServerThread, list[str]]) -> None:
    running, _ = server
    sock = connect(running)
    sock.sendall(request("/ok"))
    assert response(sock)[0] == 200
    assert closed(sock)


def test_beyond_max_connections_the_one_waiting_longest_for_headers_makes_room(
        server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    idle = [connect(running) for _ in range(LIMITS.max_connections)]
    time.sleep(0.1)  # all four are open and waiting
    newcomer = connect(running)
    newcomer.sendall(request("/ok"))
    assert response(newcomer)[0] == 200
    assert response(idle[0]) == (408, b'{"error":"evicted"}') and closed(idle[0])
    assert "evicted" in closes
    for sock in (*idle, newcomer):
        sock.close()


def test_when_every_connection_is_busy_with_a_request_a_newcomer_gets_503(
        server: tuple[ServerThread, list[str]]) -> None:
    running, closes = server
    busy = [connect(running) for _ in range(LIMITS.max_connections)]
    for sock in busy:
        sock.sendall(request("/slow"))
    time.sleep(0.2)  # every request is in the app
    newcomer = connect(running)
    assert response(newcomer)[0] == 503 and closed(newcomer)
    assert closes == ["over_capacity"]
    RELEASE.set()
    assert all(response(sock)[0] == 200 for sock in busy)  # the busy ones were left alone


def test_a_websocket_outlives_the_header_and_body_timeouts(server: tuple[ServerThread, list[str]]) -> None:
    from websockets.sync.client import connect as ws_connect

    running, closes = server
    with ws_connect(f"ws://127.0.0.1:{running.port}/ws", open_timeout=5) as ws:
        time.sleep(LIMITS.header_timeout + LIMITS.body_timeout + 0.3)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    assert closes == []
