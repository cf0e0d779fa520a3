"""Known answers for the event checks of `POST /v1/events`: the field-by-field check of
plain events agrees with the `EventIn` model on every event it accepts, and leaves every
rejection (and its wording) to the model."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from recfleet.ingest.v1 import ingest_pb2

from .serving.api.events import CheckedEvent, add_event, check_event, modelled_event, plain_event

EVENT_ID = str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF))
BASE = {"event_id": EVENT_ID, "user_id": "u1", "item_id": "m1", "type": "view"}

# Every value each field is tried with, alone on top of BASE.
VARIANTS = {
    "event_id": [
        None,
        "",
        EVENT_ID.upper(),
        "{" + EVENT_ID + "}",
        EVENT_ID.replace("-", ""),
        "not-a-uuid",
        7,
        "urn:uuid:" + EVENT_ID,
        EVENT_ID + "\n",
    ],
    "user_id": ["u-1.a:b_C", "x" * 128, "x" * 129, "", "a b", "é", "abc\n", 5, None, "\u0661"],
    "item_id": ["m2", "", "m\x00", ["m1"]],
    "type": ["click", "rating", "teleport", "VIEW", None, 1],
    "value": [None, 0, 4.5, -3, 2**53, 2**53 + 1, 10**30, float("nan"), float("inf"), True, "3.5", "nan", [1]],
    "timestamp": [
        None,
        "",
        "2026-11-23T10:00:00Z",
        "2026-11-23T10:00:00.5Z",
        "2026-11-23T10:00:00.123456Z",
        "2026-11-23T10:00:00.1234567Z",
        "2026-11-23T10:00:00+02:30",
        "2026-11-23T10:00:00-00:00",
        "2026-11-23T10:00:00",
        "2026-11-23",
        "2026-11-23 10:00:00Z",
        "2026-11-23t10:00:00z",
        "2026-02-29T10:00:00Z",
        "2024-02-29T10:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:00:60Z",
        "2026-11-23T10:00:00+24:00",
        "2026-11-23T10:00:00+23:59",
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59Z",
        "1960-01-01T00:00:00Z",
        "\u0662026-11-23T10:00:00Z",
        1_700_000_000,
        "1700000000",
        "yesterday",
    ],
    "context": [
        None,
        {},
        {"surface": "home", "position": 3, "tags": ["a", 1.5, None, True], "nested": {"x": {}}},
        [1, 2],
        "home",
    ],
    "extra": ["field"],
}
CASES = [{**BASE, field: value} for field, values in VARIANTS.items() for value in values]
CASES += [
    {"user_id": "u1", "item_id": "m1", "type": "view"},
    {"user_id": "u1", "type": "view"},
    {},
    "an event",
    None,
    [BASE],
    {**BASE, "type": "rating", "value": 4, "timestamp": "2026-11-23T10:00:00.25+01:00", "context": {"a": "b"}},
]


def as_proto(event: CheckedEvent) -> ingest_pb2.Event:
    request = ingest_pb2.IngestRequest()
    add_event(request, event)
    return request.events[0]


@pytest.mark.parametrize("raw", CASES, ids=repr)
def test_plain_events_are_accepted_only_as_the_model_accepts_them(raw):
    plain = plain_event(raw)
    modelled, reason = modelled_event(raw)
    if plain is None:
        assert check_event(raw) == (modelled, reason)
        return
    assert modelled is not None, reason
    assert plain._replace(timestamp=None) == modelled._replace(timestamp=None)
    assert plain.timestamp == modelled.timestamp
    assert as_proto(plain) == as_proto(modelled)


def test_what_clients_usually_send_takes_the_plain_path():
    for raw in (
        BASE,
        {"user_id": "u1", "item_id": "m1", "type": "click"},
        {**BASE, "type": "rating", "value": 4.5, "timestamp": "2026-11-23T10:00:00Z", "context": {"surface": "home"}},
        {**BASE, "value": 3, "timestamp": "2026-11-23T10:00:00.123+02:00", "event_id": EVENT_ID.upper()},
    ):
        assert plain_event(raw) is not None, raw


def test_rejections_keep_the_model_wording():
    assert check_event({**BASE, "event_id": "not-a-uuid"}) == (None, "event_id: must be a UUID")
    assert check_event({**BASE, "timestamp": "2026-11-23T10:00:00"}) == (
        None,
        "timestamp: RFC 3339 needs a UTC offset (e.g. Z)",
    )
    assert check_event({**BASE, "value": float("nan")}) == (None, "value: must be a finite number")
    assert check_event({**BASE, "type": "teleport"})[1].startswith("type: ")
    assert check_event({"item_id": "m1"})[1].count("Field required") == 2


def test_proto_carries_the_instant_and_the_context():
    moment = datetime(2026, 11, 23, 10, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=-5)))
    event = CheckedEvent("", "u1", "m1", "rating", 4.0, moment, {"surface": "home", "position": 2})
    message = as_proto(event)
    assert message.timestamp.ToDatetime(tzinfo=UTC) == moment
    assert message.value == 4.0 and message.event_id == ""
    assert dict(message.context) == {"surface": "home", "position": 2.0}
    bare = as_proto(CheckedEvent("", "u1", "m1", "view", None, None, {}))
    assert not bare.HasField("timestamp") and not bare.HasField("value") and not bare.HasField("context")
