"""gRPC `recfleet.ingest.v1.EventIngest`: maps protobuf to the validation and adapters and back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import structlog
from google.protobuf import struct_pb2
from prometheus_client import Counter
from recfleet.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from recfleet_runtime.context import request_id_var

from .adapters.postgres import ErasureStore
from .adapters.producer import EventProducer, ProduceFailed
from .erased import ErasedUsers
from .validation import ID_PATTERN, ID_RULE, BatchTooLarge, describe, validate_batch

log = structlog.get_logger("recfleet.ingest")

SERVICE_NAME = ingest_pb2.DESCRIPTOR.services_by_name["EventIngest"].full_name

INGESTED = Counter(
    "recfleet_ingest_events_total",
    "Events offered to Ingest, by outcome (accepted, rejected, unavailable).",
    ["outcome"],
)


def _plain(value: struct_pb2.Value) -> Any:
    """A Struct value as plain Python (much faster than json_format on the hot path)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _plain(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def event_fields(event: ingest_pb2.Event) -> dict[str, Any]:
    """The protobuf event as the plain mapping validation works on."""
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type,
        "value": event.value if event.HasField("value") else None,
        "timestamp": event.timestamp.ToDatetime(tzinfo=UTC) if event.HasField("timestamp") else None,
        "context": (
            {key: _plain(item) for key, item in event.context.fields.items()} if event.HasField("context") else None
        ),
    }


class EventIngestServicer(ingest_pb2_grpc.EventIngestServicer):
    def __init__(
        self,
        producer: EventProducer,
        erasures: ErasureStore,
        erased: ErasedUsers,
        events_topic: str,
        users_topic: str,
        max_batch_events: int,
    ):
        self.producer = producer
        self.erasures = erasures
        self.erased = erased
        self.events_topic = events_topic
        self.users_topic = users_topic
        self.max_batch_events = max_batch_events

    async def Ingest(
        self, request: ingest_pb2.IngestRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.IngestResponse:
        if not request.events:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "events: the batch is empty")
        request_id = request.request_id or request_id_var.get() or ""
        try:
            verdict = validate_batch(
                [event_fields(e) for e in request.events],
                datetime.now(UTC),
                self.max_batch_events,
                self.erased,
                request_id,
            )
        except BatchTooLarge as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        rejected = [ingest_pb2.Rejection(index=r.index, field=r.field, error=r.reason) for r in verdict.rejected]
        INGESTED.labels("rejected").inc(len(rejected))
        if not verdict.accepted:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"no valid events in the batch: {describe(verdict.rejected)}"
            )
        events = [event for _, event in verdict.accepted]
        try:
            await self.producer.send(self.events_topic, [(e.user_id, e.to_json()) for e in events])
        except ProduceFailed as error:
            INGESTED.labels("unavailable").inc(len(events))
            log.warning("produce failed", error=str(error), events=len(events))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"event log unavailable: {error}")
        INGESTED.labels("accepted").inc(len(events))
        return ingest_pb2.IngestResponse(
            accepted=len(events), rejected=rejected, event_ids=[e.event_id for e in events]
        )

    async def EraseUser(
        self, request: ingest_pb2.EraseUserRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.EraseUserResponse:
        if not ID_PATTERN.fullmatch(request.user_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"user_id: {ID_RULE}")
        receipt_id = request.receipt_id or str(uuid.uuid4())
        try:
            removed = await self.erasures.erase(request.user_id, receipt_id)
        except psycopg.OperationalError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"postgres unavailable: {error}")
        self.erased.add(request.user_id)
        try:
            await self.producer.send(self.users_topic, [(request.user_id, None)])
        except ProduceFailed as error:
            # The Postgres part is done and idempotent: the caller retries the whole call.
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"tombstone not written: {error}")
        log.info("user erased", user_id=request.user_id, receipt_id=receipt_id, events_removed=removed)
        return ingest_pb2.EraseUserResponse(events_removed=removed, tombstone_written=True)
