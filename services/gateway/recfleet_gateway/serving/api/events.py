"""`POST /v1/events`: validate each event, hand the good ones to event-ingest.

The `EventIn` model states the rules and words every rejection. A batch holds up to 500
events, nearly all of them in the plain shape clients send (strings, a JSON number, an
RFC 3339 timestamp with its offset, a JSON object), so such an event is checked field by
field here (`plain_event`) instead of building a model of it; anything else, every event
that breaks a rule included, goes through the model, which has the last word and the
exact reason.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import grpc
from fastapi import APIRouter, Depends
from pydantic import ValidationError
from recfleet.ingest.v1 import ingest_pb2
from recfleet_runtime.context import request_id_var
from recfleet_runtime.grpcclient import DeadlineSpentError
from recfleet_runtime.resilience import CircuitOpenError

from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...rest.auth import Principal
from ...rest.problems import Problem, validation_errors
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..schemas import EVENT_TYPES, EventBatch, EventIn, EventsAccepted

router = APIRouter(tags=["events"])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIELDS = frozenset(EventIn.model_fields)
_TYPES = frozenset(EVENT_TYPES)
_ID = re.compile(ID_PATTERN)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
# Integers a double holds exactly; the model is asked about larger ones.
_EXACT_INT = 2**53


class CheckedEvent(NamedTuple):
    """An event that passed the gateway's checks, as event-ingest will receive it."""

    event_id: str  # "" when the client sent none: event-ingest assigns one
    user_id: str
    item_id: str
    type: str
    value: float | None
    timestamp: datetime | None  # with its offset
    context: dict[str, Any]


def plain_event(raw: object) -> CheckedEvent | None:
    """The event when it is in the plain shape and meets every rule; None when the model
    has to decide (another shape, or a rule broken). Never accepts what the model refuses."""
    if type(raw) is not dict or not _FIELDS.issuperset(raw):
        return None
    user_id, item_id, kind = raw.get("user_id"), raw.get("item_id"), raw.get("type")
    if type(user_id) is not str or type(item_id) is not str or type(kind) is not str:
        return None
    if kind not in _TYPES or not _ID.fullmatch(user_id) or not _ID.fullmatch(item_id):
        return None
    event_id = raw.get("event_id")
    if event_id is None:
        event_id = ""
    elif type(event_id) is not str or (event_id and not _UUID.fullmatch(event_id)):
        return None
    value = raw.get("value")
    if value is not None:
        if type(value) is int and -_EXACT_INT <= value <= _EXACT_INT:
            value = float(value)
        elif type(value) is not float or not math.isfinite(value):
            return None
    timestamp = raw.get("timestamp")
    if timestamp is not None:
        if type(timestamp) is not str or not _RFC3339.fullmatch(timestamp):
            return None
        try:
            timestamp = datetime.fromisoformat(timestamp)
        except ValueError:
            return None
    context = raw.get("context", {})
    if type(context) is not dict:
        return None
    return CheckedEvent(event_id, user_id, item_id, kind, value, timestamp, context)


def modelled_event(raw: object) -> tuple[CheckedEvent | None, str]:
    """(event, "") or (None, why it was refused), by the `EventIn` model."""
    try:
        event = EventIn.model_validate(raw)
    except ValidationError as error:
        return None, "; ".join(f"{e['field']}: {e['message']}" for e in validation_errors(list(error.errors())))
    if event.event_id:
        try:
            uuid.UUID(event.event_id)
        except ValueError:
            return None, "event_id: must be a UUID"
    if event.timestamp is not None and event.timestamp.tzinfo is None:
        return None, "timestamp: RFC 3339 needs a UTC offset (e.g. Z)"
    if event.value is not None and not math.isfinite(event.value):
        return None, "value: must be a finite number"
    return CheckedEvent(
        event.event_id or "", event.user_id, event.item_id, event.type, event.value, event.timestamp, event.context
    ), ""


def check_event(raw: object) -> tuple[CheckedEvent | None, str]:
    """(event, "") or (None, why it was refused)."""
    event = plain_event(raw)
    return (event, "") if event is not None else modelled_event(raw)


def add_event(request: ingest_pb2.IngestRequest, event: CheckedEvent) -> None:
    """Append the event to the request (built in place: copying messages costs more)."""
    message = request.events.add(event_id=event.event_id, user_id=event.user_id, item_id=event.item_id, type=event.type)
    if event.value is not None:
        message.value = event.value
    if event.timestamp is not None:
        since_epoch = event.timestamp.astimezone(UTC) - EPOCH
        message.timestamp.seconds = since_epoch.days * 86_400 + since_epoch.seconds
        message.timestamp.nanos = since_epoch.microseconds * 1000
    if event.context:
        message.context.update(event.context)


def _unavailable(detail: str, retry_after: int = 1) -> Problem:
    return Problem(503, detail, headers={"Retry-After": str(retry_after)})


@router.post(
    "/v1/events",
    status_code=202,
    response_model=EventsAccepted,
    responses={**COMMON_ERRORS, 413: PROBLEM, 503: PROBLEM},
    summary="Record a batch of interaction events",
)
async def post_events(
    *, batch: EventBatch, _: Annotated[Principal, Depends(authorize("events:write"))], services: Services
):
    rejected: list[dict] = []
    valid: list[tuple[int, CheckedEvent]] = []
    for index, raw in enumerate(batch.events):
        event, error = check_event(raw)
        if event is None:
            rejected.append({"index": index, "error": error})
        else:
            valid.append((index, event))
    accepted = 0
    accepted_ids: list[str] = []
    accepted_users: set[str] = set()
    if valid:
        client = services.fleet.event_ingest.pick(services.fleet.router, valid[0][1].user_id)
        request = ingest_pb2.IngestRequest(request_id=request_id_var.get() or "")
        for _index, event in valid:
            add_event(request, event)
        try:
            reply = await client.ingest(request, timeout=services.settings.event_ingest_timeout)
        except CircuitOpenError as error:
            raise _unavailable("event ingest is unavailable; retry later", max(1, math.ceil(error.retry_in))) from None
        except DeadlineSpentError:
            raise _unavailable("event ingest did not answer in time; retry later") from None
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Problem(400, f"event ingest refused the batch: {error.details()}") from None
            raise _unavailable(f"event ingest is unavailable ({error.code().name}); retry later") from None
        refused = {}
        for rejection in reply.rejected:
            original = valid[rejection.index][0] if 0 <= rejection.index < len(valid) else rejection.index
            prefix = f"{rejection.field}: " if rejection.field else ""
            refused[original] = prefix + rejection.error
        rejected.extend({"index": index, "error": error} for index, error in refused.items())
        accepted_users = {e.user_id for index, e in valid if index not in refused}
        accepted_ids = list(reply.event_ids)
        accepted = reply.accepted
    rejected.sort(key=lambda r: r["index"])
    if not accepted:
        raise Problem(
            400,
            "no event in the batch was valid",
            errors=[{"field": f"body.events[{r['index']}]", "message": r["error"]} for r in rejected],
        )
    # New events change what the user should see next: drop their cached lists now.
    await services.cache.invalidate(*accepted_users)
    return JSONBody(
        {"accepted": accepted, "rejected": rejected, "event_ids": accepted_ids},
        status_code=202,
    )
