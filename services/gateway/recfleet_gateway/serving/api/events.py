"""`POST /v1/events`: hand a batch of events to event-ingest.

The `EventIn` models state every rule the schema can say (required fields, ids, types,
a rating's value); a batch that breaks one is refused whole with 400, naming each field.
What only event-ingest can judge (a timestamp before 1990 or ahead of its clock, a user
being erased, NUL in a context) refuses that event alone: it is reported in `rejected`
and the rest of the batch is accepted; when no event is left, the answer is 400.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends
from recfleet.ingest.v1 import ingest_pb2
from recfleet_runtime.context import request_id_var
from recfleet_runtime.grpcclient import DeadlineSpentError
from recfleet_runtime.resilience import CircuitOpenError

from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ..schemas import EventBatch, EventsAccepted, InteractionEvent, RatingEvent

router = APIRouter(tags=["events"])

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def add_event(request: ingest_pb2.IngestRequest, event: InteractionEvent | RatingEvent) -> None:
    """Append the event to the request (built in place: copying messages costs more)."""
    message = request.events.add(
        event_id=event.event_id or "", user_id=event.user_id, item_id=event.item_id, type=event.type
    )
    if event.value is not None:
        message.value = event.value
    if event.timestamp is not None:
        # Aware minus aware: no conversion, so no overflow at the ends of the calendar.
        since_epoch = event.timestamp - EPOCH
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
    client = services.fleet.event_ingest.pick(services.fleet.router, batch.events[0].user_id)
    request = ingest_pb2.IngestRequest(request_id=request_id_var.get() or "")
    for event in batch.events:
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
    refused: dict[int, str] = {}
    for rejection in reply.rejected:
        prefix = f"{rejection.field}: " if rejection.field else ""
        refused[rejection.index] = prefix + rejection.error
    if not reply.accepted:
        raise Problem(
            400,
            "no event in the batch was accepted",
            errors=[{"field": f"body.events[{index}]", "message": error} for index, error in sorted(refused.items())],
        )
    services.served_lists.received(batch.events, refused)
    # New events change what the user should see next: drop their cached lists now.
    await services.cache.invalidate(
        *{event.user_id for index, event in enumerate(batch.events) if index not in refused}
    )
    return JSONBody(
        {
            "accepted": reply.accepted,
            "rejected": [{"index": index, "error": error} for index, error in sorted(refused.items())],
            "event_ids": list(reply.event_ids),
        },
        status_code=202,
    )
