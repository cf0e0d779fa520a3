"""Event validation: the rules an interaction event must meet, pure and shared by the API
and the consumers (which re-check what they read, so a bad record goes to the dead-letter
topic instead of stopping the partition)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EVENT_TYPES = frozenset(
    {"view", "click", "add_to_cart", "purchase", "like", "dislike", "share", "watch", "rating", "skip"}
)
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# A UUID already spelt the way the topic carries it (lower-case hex, hyphenated).
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RATING_MIN = 0.5
RATING_MAX = 5.0
EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(minutes=5)
ID_RULE = "must be 1-128 characters of A-Z a-z 0-9 _ . : -"


class InvalidEvent(ValueError):
    """One event breaks a rule: `field` names the offending field, `reason` says why."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class BatchTooLarge(ValueError):
    """A batch with more events than the limit; rejected as a whole."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"events: a batch holds at most {limit} events, got {size}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class Event:
    """A valid interaction event, as it travels on the events topic."""

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: datetime
    context: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""

    def to_record(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "type": self.type,
            "value": self.value,
            "timestamp": rfc3339(self.timestamp),
            "context": self.context,
            "request_id": self.request_id,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_record())


@dataclass(frozen=True)
class Rejection:
    """Why the event at `index` of a batch was not accepted."""

    index: int
    field: str
    reason: str


@dataclass
class BatchVerdict:
    accepted: list[tuple[int, Event]]
    rejected: list[Rejection]


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, `Z` suffix: one spelling for every timestamp on the topic."""
    # isoformat of a UTC time ends in "+00:00".
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _check_id(name: str, value: Any) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidEvent(name, ID_RULE)
    return value


def _check_event_id(value: Any) -> str:
    if value is None or value == "":
        return str(uuid.uuid4())
    if not isinstance(value, str):
        raise InvalidEvent("event_id", "must be a UUID string")
    if CANONICAL_UUID.fullmatch(value):
        return value
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidEvent("event_id", f"not a UUID: {value[:64]!r}") from None


def _check_value(kind: str, value: Any) -> float | None:
    if value is None:
        if kind == "rating":
            raise InvalidEvent("value", f"a rating needs a value within {RATING_MIN}..{RATING_MAX}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidEvent("value", "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidEvent("value", "must be a finite number")
    if kind == "rating" and not RATING_MIN <= number <= RATING_MAX:
        raise InvalidEvent("value", f"a rating must be within {RATING_MIN}..{RATING_MAX}, got {number:g}")
    return number


def _check_timestamp(value: Any, now: datetime) -> datetime:
    if value is None or value == "":
        return now
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent("timestamp", f"not an RFC 3339 timestamp: {value[:64]!r}") from None
    if not isinstance(value, datetime):
        raise InvalidEvent("timestamp", "must be an RFC 3339 timestamp")
    if value.tzinfo is None:
        raise InvalidEvent("timestamp", "needs a UTC offset (e.g. 2026-01-01T12:00:00Z)")
    if value < EARLIEST:
        raise InvalidEvent("timestamp", "is before 1990-01-01")
    if value > now + MAX_FUTURE:
        raise InvalidEvent("timestamp", "is more than 5 minutes in the future")
    return value.astimezone(UTC)


def _has_nul(value: Any) -> bool:
    # Plain loops: this runs on every event's context, and generators cost more here.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        for key, item in value.items():
            if _has_nul(key) or _has_nul(item):
                return True
    elif isinstance(value, list):
        for item in value:
            if _has_nul(item):
                return True
    return False


def validate_event(raw: Mapping[str, Any], now: datetime, request_id: str = "") -> Event:
    """Check one event given as a mapping of its fields; raises InvalidEvent.

    `timestamp` may be a datetime or an RFC 3339 string; a missing one means `now`. A
    missing `event_id` gets a fresh UUID.
    """
    user_id = _check_id("user_id", raw.get("user_id"))
    item_id = _check_id("item_id", raw.get("item_id"))
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        raise InvalidEvent("type", f"must be one of {', '.join(sorted(EVENT_TYPES))}; got {str(kind)[:32]!r}")
    value = _check_value(kind, raw.get("value"))
    timestamp = _check_timestamp(raw.get("timestamp"), now)
    context = raw.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        raise InvalidEvent("context", "must be a JSON object")
    if context and _has_nul(context):
        # Postgres jsonb cannot hold a NUL character; say so now rather than dead-letter it.
        raise InvalidEvent("context", "must not contain NUL characters")
    event_id = _check_event_id(raw.get("event_id"))
    return Event(event_id, user_id, item_id, kind, value, timestamp, context, raw.get("request_id") or request_id)


def validate_batch(
    raws: Sequence[Mapping[str, Any]],
    now: datetime,
    max_events: int,
    erased_users: Container[str] = frozenset(),
    request_id: str = "",
) -> BatchVerdict:
    """Validate every event of a batch; raises BatchTooLarge over the limit.

    Events of users whose erasure was requested are rejected with "user erased".
    """
    if len(raws) > max_events:
        raise BatchTooLarge(len(raws), max_events)
    verdict = BatchVerdict(accepted=[], rejected=[])
    for index, raw in enumerate(raws):
        try:
            event = validate_event(raw, now, request_id)
        except InvalidEvent as error:
            verdict.rejected.append(Rejection(index, error.field, error.reason))
            continue
        if event.user_id in erased_users:
            verdict.rejected.append(Rejection(index, "user_id", "user erased"))
            continue
        verdict.accepted.append((index, event))
    return verdict


def parse_record(value: bytes | None, now: datetime) -> Event:
    """Decode and re-check a record read from the events topic; raises InvalidEvent."""
    if value is None:
        raise InvalidEvent("record", "empty record")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent("record", f"not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("record", "not a JSON object")
    if not raw.get("event_id"):
        # Downstream an event without an id cannot be deduplicated: refuse to invent one.
        raise InvalidEvent("event_id", "missing")
    return validate_event(raw, now)


def describe(rejections: Sequence[Rejection], limit: int = 20) -> str:
    """A one-line summary of rejections for an error message."""
    parts = [f"[{r.index}] {r.field}: {r.reason}" for r in rejections[:limit]]
    if len(rejections) > limit:
        parts.append(f"... and {len(rejections) - limit} more")
    return "; ".join(parts)
