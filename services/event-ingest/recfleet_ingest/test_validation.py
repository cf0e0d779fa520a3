"""Known answers for the event rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from recfleet_ingest.validation import (
    BatchTooLarge,
    InvalidEvent,
    parse_record,
    rfc3339,
    validate_batch,
    validate_event,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def raw(**fields):
    base = {"user_id": "u1", "item_id": "i1", "type": "view"}
    base.update(fields)
    return base


def reason(**fields) -> tuple[str, str]:
    with pytest.raises(InvalidEvent) as raised:
        validate_event(raw(**fields), NOW)
    return raised.value.field, raised.value.reason


def test_minimal_event_gets_an_id_and_the_current_time():
    event = validate_event(raw(), NOW)
    assert uuid.UUID(event.event_id).version == 4
    assert event.timestamp == NOW and event.value is None and event.context == {}


@pytest.mark.parametrize("user_id", ["", "a b", "é", "x" * 129, None, 5])
def test_ids_outside_the_charset_or_length_are_rejected(user_id):
    assert reason(user_id=user_id)[0] == "user_id"


def test_ids_of_128_allowed_characters_pass():
    assert validate_event(raw(item_id="Az09_.:-" * 16), NOW).item_id == "Az09_.:-" * 16


def test_types_and_values():
    assert reason(type="hover")[0] == "type"
    assert reason(type="rating") == ("value", "a rating needs a value within 0.5..5.0")
    assert reason(type="rating", value=5.5)[0] == "value"
    assert reason(type="rating", value=0.4)[0] == "value"
    assert validate_event(raw(type="rating", value=0.5), NOW).value == 0.5
    assert validate_event(raw(type="watch", value=-3), NOW).value == -3.0
    assert reason(value=float("inf"))[0] == "value"
    assert reason(value=True)[0] == "value"
    assert reason(value="3")[0] == "value"


def test_timestamps_within_1990_and_five_minutes_ahead():
    assert validate_event(raw(timestamp=NOW + timedelta(minutes=5)), NOW).timestamp == NOW + timedelta(minutes=5)
    assert reason(timestamp=NOW + timedelta(minutes=5, seconds=1))[0] == "timestamp"
    assert reason(timestamp=datetime(1989, 12, 31, tzinfo=UTC))[0] == "timestamp"
    assert reason(timestamp="yesterday")[0] == "timestamp"
    assert reason(timestamp="2026-01-01T00:00:00")[1].startswith("needs a UTC offset")
    parsed = validate_event(raw(timestamp="2026-01-01T01:00:00+01:00"), NOW).timestamp
    assert parsed == datetime(2026, 1, 1, tzinfo=UTC)


def test_event_id_must_be_a_uuid_and_is_normalised():
    given = uuid.uuid4()
    assert validate_event(raw(event_id=str(given).upper()), NOW).event_id == str(given)
    assert validate_event(raw(event_id="{" + str(given) + "}"), NOW).event_id == str(given)
    assert validate_event(raw(event_id=str(given)), NOW).event_id == str(given)
    assert reason(event_id="123")[0] == "event_id"
    assert reason(event_id=str(given) + "\n")[0] == "event_id"


def test_one_timestamp_spelling_on_the_topic():
    east = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 1, 1, 1, 0, tzinfo=east)) == "2025-12-31T23:00:00.000000Z"
    assert rfc3339(datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=UTC)) == "2026-01-01T00:00:00.000005Z"


def test_context_must_be_an_object():
    assert reason(context=[1, 2])[0] == "context"
    assert reason(context={"note": "a\x00b"}) == ("context", "must not contain NUL characters")
    assert validate_event(raw(context={"note": "a\\u0000b"}), NOW).context == {"note": "a\\u0000b"}
    assert reason(context={"deep": [{"x": ["ok", "a\x00"]}]})[0] == "context"
    assert reason(context={"key\x00": 1})[0] == "context"


def test_batch_limit_and_erased_users():
    with pytest.raises(BatchTooLarge, match="at most 3 events"):
        validate_batch([raw()] * 4, NOW, max_events=3)
    verdict = validate_batch([raw(), raw(user_id="gone"), raw(type="x")], NOW, 3, erased_users={"gone"})
    assert [i for i, _ in verdict.accepted] == [0]
    first = verdict.rejected[0]
    assert (first.index, first.field, first.reason) == (1, "user_id", "user erased")
    assert verdict.rejected[1].index == 2


def test_records_round_trip_and_bad_records_say_why():
    event = validate_event(raw(value=2.0, context={"a": 1}, timestamp=NOW), NOW, request_id="r")
    assert parse_record(event.to_json(), NOW) == event
    with pytest.raises(InvalidEvent, match="not JSON"):
        parse_record(b"{oops", NOW)
    with pytest.raises(InvalidEvent, match="event_id: missing"):
        parse_record(orjson.dumps(raw()), NOW)
    with pytest.raises(InvalidEvent, match="type"):
        parse_record(orjson.dumps(raw(event_id=str(uuid.uuid4()), type="hover")), NOW)
