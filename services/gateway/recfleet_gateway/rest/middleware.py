"""The gateway's outermost ASGI layer: request id, trace context (when OpenTelemetry's
middleware is not installed), load shedding, body size limit, response headers
(`X-Request-ID`, `Recfleet-Tracks`), request metrics, and a problem+json answer for
anything that escaped the handlers."""

from __future__ import annotations

import asyncio
import re
import time

import orjson
from prometheus_client import Counter, Histogram
from recfleet_runtime import tracing
from recfleet_runtime.context import deadline_var, new_request_id, request_id_var
from recfleet_runtime.logging import get_logger
from recfleet_runtime.metrics import LATENCY_BUCKETS
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..downstream.tracks import tracks_header, tracks_var
from ..lifecycle import Drain
from .problems import PROBLEM_MEDIA_TYPE, problem_body
from .protocol import SLOW_CLIENTS

log = get_logger("recfleet.gateway")
access_log = get_logger("recfleet.gateway.access")
QUIET_ROUTES = frozenset({"/healthz/live", "/healthz/ready"})
# Probes and the operators' API answer even when the gateway sheds load: a rollback must
# get through while the fleet is overloaded. (Metrics have a port of their own.)
NEVER_SHED_PREFIXES = ("/healthz/", "/admin/")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")

REQUESTS = Counter("recfleet_gateway_requests_total", "REST requests, by route and status.", ["route", "status"])
SHED = Counter("recfleet_gateway_shed_total", "Requests refused with 503 because too many were in flight.")
REQUEST_SECONDS = Histogram(
    "recfleet_gateway_request_seconds", "REST request latency, by route.", ["route"], buckets=LATENCY_BUCKETS
)


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class GatewayMiddleware:
    """`max_in_flight` bounds the reads one process works on at once, and
    `max_in_flight_writes` the writes (0 = no bound): two bulkheads, so a write path that
    hangs (event-ingest frozen: every event request waits for its deadline) cannot take
    the slots of recommendations. Beyond its bound a request is refused at once with 503
    and Retry-After: under overload a quick refusal the client can retry beats every
    request queueing past its deadline.

    While the worker drains (`drain`), every response closes its connection, so
    keep-alive clients reconnect through the balancer to a pod that stays.

    With `carry_trace_context` (spans are not exported, so OpenTelemetry's middleware is
    not installed) the request's W3C `traceparent` becomes the current trace context, or
    a fresh random trace when it has none: the access line and every log line of the
    request carry its trace id, and the gRPC clients pass it on."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_in_flight: int = 0,
        drain: Drain | None = None,
        max_in_flight_writes: int = 0,
        carry_trace_context: bool = False,
        access_log_slow_ms: float = 100.0,
        body_timeout_seconds: float = 10.0,
    ):
        self.app = app
        self.body_timeout_seconds = body_timeout_seconds
        self.access_log_slow_seconds = access_log_slow_ms / 1000
        self.max_body_bytes = max_body_bytes
        # (bound, requests in flight) per kind: reads, writes
        self.limits = {False: max_in_flight, True: max_in_flight_writes}
        self.in_flight = {False: 0, True: 0}
        self.drain = drain
        self.carry_trace_context = carry_trace_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get("x-request-id", "")
        request_id = incoming if REQUEST_ID_RE.match(incoming) else new_request_id()
        tracks: dict[str, str] = {}
        request_id_token, tracks_token = request_id_var.set(request_id), tracks_var.set(tracks)
        deadline_token = deadline_var.set(None)
        trace_token = tracing.enter_hop(headers) if self.carry_trace_context else None
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                out = MutableHeaders(scope=message)
                out["X-Request-ID"] = request_id
                if tracks:
                    out["Recfleet-Tracks"] = tracks_header(tracks)
                if self.drain is not None and self.drain.draining:
                    out["Connection"] = "close"
            await send(message)

        write = scope["method"] in WRITE_METHODS
        limit = self.limits[write]
        sheddable = limit > 0 and not scope["path"].startswith(NEVER_SHED_PREFIXES)
        if sheddable:
            self.in_flight[write] += 1
        try:
            if sheddable and self.in_flight[write] > limit:
                SHED.inc()
                status = 503
                kind = "writes" if write else "requests"
                body = problem_body(503, f"the gateway is at capacity ({limit} {kind} in flight); retry shortly")
                await _send_problem(send_with_headers, 503, body, {"Retry-After": "1"})
                return
            declared = headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
                await self._too_large(send_with_headers)
                status = 413
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # The whole body is read here, each part within body_timeout_seconds, so a
                # client that trickles or never finishes its body is answered 408 instead
                # of holding a request slot; then the route reads it from memory.
                receive = await self._buffered(receive)
            await self.app(scope, receive, send_with_headers)
        except BodyTooLarge:
            if not response_started:
                await self._too_large(send_with_headers)
            status = 413
        except BodyTooSlow:
            SLOW_CLIENTS.labels("body").inc()
            if not response_started:
                body = problem_body(408, f"the request body did not arrive within {self.body_timeout_seconds:g} s")
                await _send_problem(send_with_headers, 408, body, {"Connection": "close"})
            status = 408
        except Exception:
            log.exception("unhandled error", path=scope.get("path"))
            if not response_started:
                body = problem_body(500, "internal error; quote the request id when reporting it")
                await _send_problem(send_with_headers, 500, body)
            status = 500
        finally:
            if sheddable:
                self.in_flight[write] -= 1
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            REQUESTS.labels(name, str(status)).inc()
            REQUEST_SECONDS.labels(name).observe(seconds)
            if name not in QUIET_ROUTES:
                # One line per request, carrying the trace and request ids (the logging
                # processors add them) so a request can be followed across services: at
                # INFO when its trace is sampled, it was refused or failed (4xx, 5xx), or
                # it was slow, like every service's RPC lines; DEBUG otherwise (at
                # thousands of requests a second the lines cost more than they tell;
                # the metrics count every request).
                worth_a_line = (
                    status >= 400 or seconds >= self.access_log_slow_seconds or tracing.current_trace_sampled()
                )
                (access_log.info if worth_a_line else access_log.debug)(
                    "request", method=scope["method"], route=name, status=status, ms=round(seconds * 1000, 2)
                )
            if trace_token is not None:
                tracing.leave_hop(trace_token)
            request_id_var.reset(request_id_token)
            tracks_var.reset(tracks_token)
            deadline_var.reset(deadline_token)

    async def _buffered(self, receive: Receive) -> Receive:
        """Reads the body up to the size limit, each part within the body timeout, then
        replays it."""
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                async with asyncio.timeout(self.body_timeout_seconds):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise BodyTooLarge
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        body = problem_body(413, f"the body exceeds {self.max_body_bytes} bytes")
        await _send_problem(send, 413, body)


async def _send_problem(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = orjson.dumps(body)
    raw_headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
