"""`POST /v1/events`: validate each event, hand the good ones to event-ingest."""

from __future__ import annotations

import math
import uuid
from datetime import UTC
from typing import Annotated

import grpc
from fastapi import APIRouter, Depends
from google.protobuf import struct_pb2, timestamp_pb2
from pydantic import ValidationError
from recfleet.ingest.v1 import ingest_pb2
from recfleet_runtime.context import request_id_var
from recfleet_runtime.grpcclient import DeadlineSpentError
from recfleet_runtime.resilience import CircuitOpenError

from ..auth import Principal
from ..problems import Problem, validation_errors
from ..responses import JSONBody
from ..schemas import EventBatch, EventIn, EventsAccepted
from .deps import COMMON_ERRORS, PROBLEM, Services, authorize

router = APIRouter(tags=["events"])


def to_proto(event: EventIn) -> ingest_pb2.Event:
    message = ingest_pb2.Event(
        event_id=event.event_id or "", user_id=event.user_id, item_id=event.item_id, type=event.type
    )
    if event.value is not None:
        message.value = event.value
    if event.timestamp is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(event.timestamp.astimezone(UTC))
        message.timestamp.CopyFrom(stamp)
    if event.context:
        context = struct_pb2.Struct()
        context.update(event.context)
        message.context.CopyFrom(context)
    return message


def check_event(raw: object) -> tuple[EventIn | None, str]:
    """(event, "") or (None, why it was refused)."""
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
    return event, ""


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
    valid: list[tuple[int, EventIn]] = []
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
        request = ingest_pb2.IngestRequest(
            events=[to_proto(e) for _, e in valid], request_id=request_id_var.get() or ""
        )
        try:
            reply = await client.call("Ingest", request, timeout=services.settings.event_ingest_timeout)
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
