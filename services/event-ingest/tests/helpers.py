"""Small helpers the event-ingest tests share."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from recfleet.ingest.v1 import ingest_pb2


def event(
    user: str = "u1",
    item: str = "i1",
    kind: str = "view",
    value: float | None = None,
    event_id: str | None = None,
    at: datetime | None = None,
) -> ingest_pb2.Event:
    message = ingest_pb2.Event(
        event_id=event_id if event_id is not None else str(uuid.uuid4()), user_id=user, item_id=item, type=kind
    )
    if value is not None:
        message.value = value
    if at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(at.astimezone(UTC))
        message.timestamp.CopyFrom(stamp)
    return message


def count_rows(dsn: str, sql: str, params=()) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchone()[0]


def wait_until(check, timeout: float = 20.0, interval: float = 0.1):
    """Poll `check` until it returns a truthy value; returns the last value."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value
