"""Per-call context carried across hops: request id and the caller's deadline."""

from __future__ import annotations

import contextvars
import time
import uuid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# Absolute deadline on the monotonic clock, set by the server interceptor from the
# caller's deadline; clients never wait past it.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def remaining(default: float) -> float:
    """Seconds a downstream call may take: its own budget, capped by the caller's deadline."""
    deadline = deadline_var.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))
