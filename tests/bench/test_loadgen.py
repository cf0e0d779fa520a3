"""The load generator's client against a server that closes an idle keep-alive connection
just as the next request arrives on it (what uvicorn's keep-alive timeout can do)."""

from __future__ import annotations

import asyncio

import pytest
from bench_support import bench_script

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@pytest.fixture(scope="module")
def loadgen():
    with bench_script("loadgen") as module:
        yield module


async def closing_server() -> tuple[asyncio.Server, list[bytes]]:
    """Answers the first request of every connection and closes it, unanswered, when a
    second request comes on it; records every request line it reads."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b"\r\n", 1)[0])
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            if answered:
                writer.close()
                return
            writer.write(ANSWER)
            await writer.drain()
            answered += 1

    return await asyncio.start_server(handle, "127.0.0.1", 0), seen


async def test_a_get_on_a_connection_closed_unanswered_is_sent_again_and_a_post_is_not(loadgen):
    server, seen = await closing_server()
    port = server.sockets[0].getsockname()[1]
    client = loadgen.LeanClient(f"http://127.0.0.1:{port}")
    try:
        assert await client.get("/a") == (200, b"ok")
        # The pooled connection is closed unanswered: the GET goes again on a new one.
        assert await client.get("/b") == (200, b"ok")
        assert seen == [b"GET /a HTTP/1.1", b"GET /b HTTP/1.1", b"GET /b HTTP/1.1"]
        # A POST is not idempotent: the caller hears of the lost connection instead.
        with pytest.raises(loadgen.ConnectionLost):
            await client.post("/c", b"{}")
        assert seen[-1] == b"POST /c HTTP/1.1" and seen.count(b"POST /c HTTP/1.1") == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
