"""A lean HTTP/1.1 keep-alive client for load generation.

The load generator shares the machine's two cores with the fleet it measures, so its own
cost per request matters: httpx spends about 2 ms of CPU per request here, as much as a
service hop, which both caps the rates it can offer and takes CPU from the fleet. This
client writes each request as a few bytes on a pooled connection and parses the answer
with httptools (the parser uvicorn uses), at a small fraction of that cost.

    client = LeanClient("http://127.0.0.1:8080", {"Authorization": "Bearer ..."})
    status, body = await client.get("/v1/recommendations", {"user_id": "1", "limit": 20})
    await client.close()
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode, urlsplit

import httptools


class ConnectionLost(Exception):
    """The server closed the connection before answering."""


class _StaleConnection(ConnectionLost):
    """A reused keep-alive connection was closed before any byte of the answer came back."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.reusable = True
        # Whether any byte of an answer came back on this connection (its current request).
        self.answered = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionLost(str(exc or "closed")))

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.reusable = False
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(error)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.body = []
        self.answered = False
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self.waiter
        finally:
            self.waiter = None


class LeanClient:
    """GET and POST requests over a pool of keep-alive connections (opened on demand)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._head = f"Host: {self.host}:{self.port}\r\n{extra}\r\n".encode()
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def _connection(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection and whether it is a reused one (from the pool)."""
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.reusable:
                return connection, True
            self._all.discard(connection)
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        self._all.add(connection)
        return connection, False

    async def get(self, path: str, params: dict | None = None) -> tuple[int, bytes]:
        """(status, body) of one GET; raises ConnectionLost, TimeoutError or OSError. As
        HTTP clients do for an idempotent request, a GET whose reused keep-alive connection
        the server closed before answering (its idle timeout racing the request) is sent
        once more on a new connection."""
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        request = b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._head
        try:
            return await self._send(request)
        except _StaleConnection:
            return await self._send(request, fresh=True)

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        """(status, body) of one POST of `body`; raises like `get`, and is never sent twice."""
        head = f"POST {path} HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        return await self._send(head.encode() + self._head + body)

    async def _send(self, request: bytes, fresh: bool = False) -> tuple[int, bytes]:
        connection, reused = await self._connection(fresh)
        try:
            async with asyncio.timeout(self.timeout):
                answer = await connection.send(request)
        except BaseException as error:
            connection.reusable = False
            connection.transport.close()
            self._all.discard(connection)
            if reused and isinstance(error, ConnectionLost) and not connection.answered:
                raise _StaleConnection(str(error)) from error
            raise
        if connection.reusable:
            self._idle.append(connection)
        else:
            connection.transport.close()
            self._all.discard(connection)
        return answer

    async def close(self) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()
        self._all.clear()
        self._idle.clear()
