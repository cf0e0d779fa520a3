"""The gateway's HTTP/1.1 protocol: uvicorn's httptools protocol with a deadline on each
request's line and headers.

uvicorn bounds how long a keep-alive connection may sit idle between requests, but not how
long a request's head may take to arrive: its keep-alive timer stops at the first byte, so
a client that sends its headers a byte at a time would hold the connection for as long as
it liked. Here a request's head must be complete within `header_timeout_seconds` of its
first byte (the first request of a connection: of the connection); a client slower than
that is answered 408 and its connection closed, and a connection that has sent nothing of
a request by then is closed without an answer. An idle keep-alive connection stays
uvicorn's business. The body has its own bound in the middleware (`body_timeout_seconds`).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

import orjson
from prometheus_client import Counter
from recfleet_runtime.context import new_request_id
from recfleet_runtime.logging import get_logger
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from .problems import PROBLEM_MEDIA_TYPE, problem_body

access_log = get_logger("recfleet.gateway.access")
# The entrypoint imports this module before it empties the metrics directory: labelled
# metrics only (an unlabelled one opens its sample file at import), and nothing that
# declares others (the middleware imports from here, not the other way round).
SLOW_CLIENTS = Counter(
    "recfleet_gateway_slow_clients_total",
    "Connections closed because a request arrived too slowly, by phase (headers, body).",
    ["phase"],
)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """One connection: uvicorn's httptools protocol, plus the header deadline."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout_seconds: float = 10.0,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_seconds = header_timeout_seconds
        self.header_deadline: asyncio.TimerHandle | None = None
        # Between a request's complete body and the next request's complete head: any
        # byte that arrives now belongs to a head.
        self.awaiting_head = True
        # A request has begun (the parser saw its first byte) and its head is incomplete.
        self.head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Armed on any byte, not only at a request's first: the parser skips blank lines
        # between requests, and each one stops uvicorn's keep-alive timer.
        if self.awaiting_head and self.header_deadline is None:
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.awaiting_head = self.head_begun = True
        if self.header_deadline is None:  # a pipelined request, in the same read as the last
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self.awaiting_head = self.head_begun = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_head = True

    def _arm(self) -> None:
        self.header_deadline = self.loop.call_later(self.header_timeout_seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        SLOW_CLIENTS.labels("headers").inc()
        if self.cycle is not None and not self.cycle.response_complete:
            # The previous request's response is still going out (the late head was
            # pipelined behind it): nothing may be written between its bytes, so the
            # connection closes once it is complete, and the late request goes unread.
            self.flow.pause_reading()
            self.cycle.keep_alive = False
            return
        if self.head_begun:
            self._answer_408()
        self.transport.close()

    def _answer_408(self) -> None:
        request_id = new_request_id()
        detail = f"the request headers did not arrive within {self.header_timeout_seconds:g} s"
        payload = orjson.dumps(problem_body(408, detail, request_id=request_id))
        content = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(payload)).encode() + b"\r\n",
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            payload,
        ]
        self.transport.write(b"".join(content))
        access_log.info("request headers timed out", status=408, request_id=request_id)


def header_deadline_protocol(header_timeout_seconds: float) -> type[asyncio.Protocol]:
    """What `uvicorn.run(http=...)` takes: builds a `HeaderDeadlineProtocol` per connection.

    A partial of the class, not a class made here: uvicorn pickles it into each worker
    process, which finds the class again by its import path."""
    factory = functools.partial(HeaderDeadlineProtocol, header_timeout_seconds=header_timeout_seconds)
    # uvicorn only calls it (and looks for an optional `alpn_protocols`), as it would a class.
    return cast("type[asyncio.Protocol]", factory)
