"""Known answers for the event rules of `POST /v1/events` (the `EventBatch` model, which
also is the request body's schema) and for the events as event-ingest receives them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from recfleet.ingest.v1 import ingest_pb2

from .serving.api.events import add_event
from .serving.schemas import EventBatch

EVENT_ID = str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF))
BASE = {"event_id": EVENT_ID, "user_id": "u1", "item_id": "m1", "type": "view"}


def errors(event: object) -> list[str]:
    """The paths of what is wrong with one event, inside a batch of one."""
    try:
        EventBatch.model_validate({"events": [event]})
    except ValidationError as error:
        return [".".join(str(part) for part in e["loc"][2:]) for e in error.errors()]
    return []


@pytest.mark.parametrize(
    "event",
    [
        BASE,
        {"user_id": "u1", "item_id": "m1", "type": "click"},
        {**BASE, "event_id": EVENT_ID.upper()},
        {**BASE, "value": 3},
        {**BASE, "value": -2.5, "type": "watch"},
        {**BASE, "type": "rating", "value": 0.5},
        {**BASE, "type": "rating", "value": 5},
        {**BASE, "timestamp": "2026-11-23T10:00:00Z"},
        {**BASE, "timestamp": "2026-11-23T10:00:00.123456+02:30"},
        {**BASE, "timestamp": "2026-11-23t10:00:00.5z"},
        {**BASE, "timestamp": "0001-01-01T00:00:00+23:59"},
        {**BASE, "context": {"surface": "home", "position": 3, "tags": ["a", 1.5, None, True]}},
        {**BASE, "user_id": "u-1.a:b_C", "item_id": "x" * 128},
    ],
    ids=repr,
)
def test_valid_events(event):
    assert errors(event) == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "u1", "type": "view"}, "event.item_id"),
        ({"user_id": "u1", "item_id": "m1"}, ""),
        ({**BASE, "type": "teleport"}, ""),
        ({**BASE, "type": "VIEW"}, ""),
        ({**BASE, "user_id": "a b"}, "event.user_id"),
        ({**BASE, "user_id": "x" * 129}, "event.user_id"),
        ({**BASE, "item_id": 5}, "event.item_id"),
        ({**BASE, "event_id": "not-a-uuid"}, "event.event_id"),
        ({**BASE, "event_id": "{" + EVENT_ID + "}"}, "event.event_id"),
        ({**BASE, "event_id": ""}, "event.event_id"),
        ({**BASE, "value": True}, "event.value"),
        ({**BASE, "value": "3.5"}, "event.value"),
        ({**BASE, "value": float("nan")}, "event.value"),
        ({**BASE, "type": "rating"}, "rating.value"),
        ({**BASE, "type": "rating", "value": 5.5}, "rating.value"),
        ({**BASE, "type": "rating", "value": 0}, "rating.value"),
        ({**BASE, "timestamp": "2026-11-23T10:00:00"}, "event.timestamp"),
        ({**BASE, "timestamp": "2026-11-23"}, "event.timestamp"),
        ({**BASE, "timestamp": "2026-11-23 10:00:00Z"}, "event.timestamp"),
        ({**BASE, "timestamp": "2026-02-29T10:00:00Z"}, "event.timestamp"),
        ({**BASE, "timestamp": 1_700_000_000}, "event.timestamp"),
        ({**BASE, "context": [1, 2]}, "event.context"),
        ({**BASE, "colour": "red"}, "event.colour"),
    ],
    ids=repr,
)
def test_each_rule_names_its_field(event, field):
    assert errors(event) == [field]


def test_the_schema_states_the_batch_size_and_each_kind_of_event():
    schema = EventBatch.model_json_schema()
    events = schema["properties"]["events"]
    assert (events["minItems"], events["maxItems"]) == (1, 500)
    kinds = [schema["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in events["items"]["oneOf"]]
    assert [
        set(kind["properties"]["type"].get("enum", [kind["properties"]["type"].get("const")])) for kind in kinds
    ] == [
        {"view", "click", "add_to_cart", "purchase", "like", "dislike", "share", "watch", "skip"},
        {"rating"},
    ]
    assert kinds[1]["required"] == ["user_id", "item_id", "type", "value"]


def test_a_missing_or_unknown_type_names_every_type():
    for event in ({"user_id": "u1", "item_id": "m1"}, {**BASE, "type": "teleport"}, "an event"):
        with pytest.raises(ValidationError) as refused:
            EventBatch.model_validate({"events": [event]})
        assert refused.value.errors()[0]["msg"] == (
            "type: must be one of view, click, add_to_cart, purchase, like, dislike, share, watch, skip, rating"
        )


def as_proto(event: dict) -> ingest_pb2.Event:
    request = ingest_pb2.IngestRequest()
    add_event(request, EventBatch.model_validate({"events": [event]}).events[0])
    return request.events[0]


def test_proto_carries_the_instant_and_the_context():
    moment = datetime(2026, 11, 23, 10, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=-5)))
    message = as_proto(
        {**BASE, "event_id": None, "type": "rating", "value": 4, "timestamp": moment.isoformat(), "context": {"p": 2}}
    )
    assert message.timestamp.ToDatetime(tzinfo=UTC) == moment
    assert message.value == 4.0 and message.event_id == ""
    assert dict(message.context) == {"p": 2.0}
    bare = as_proto({"user_id": "u1", "item_id": "m1", "type": "view"})
    assert not bare.HasField("timestamp") and not bare.HasField("value") and not bare.HasField("context")


def test_instants_at_the_ends_of_the_calendar_convert_without_overflow():
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    early = as_proto({**BASE, "timestamp": "0001-01-01T00:00:00+23:59"}).timestamp
    assert early.seconds == (datetime(1, 1, 1, tzinfo=UTC) - epoch).total_seconds() - 86_340
    late = as_proto({**BASE, "timestamp": "9999-12-31T23:59:59-23:59"}).timestamp
    assert late.seconds == (datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - epoch).total_seconds() + 86_340
