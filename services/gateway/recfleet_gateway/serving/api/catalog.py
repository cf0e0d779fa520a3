"""Catalog upserts: `PUT /v1/items/{item_id}` and `POST /v1/items:batch`."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import grpc
from fastapi import APIRouter, Depends, Path
from recfleet.features.v1 import features_pb2

from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...downstream.clients import DOWNSTREAM_ERRORS
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..schemas import ItemBatch, ItemIn, ItemsUpserted

router = APIRouter(tags=["catalog"])
ReplyT = TypeVar("ReplyT")
WRITE = "catalog:write"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_proto(item_id: str, item: ItemIn) -> features_pb2.Item:
    message = features_pb2.Item(
        item_id=item_id,
        title=item.title,
        categories=item.categories,
        creator=item.creator,
        tags=item.tags,
        age_rating=item.age_rating,
        regions=item.regions,
        available=item.available,
    )
    if item.published_at is not None:
        # Aware minus aware: no conversion, so no overflow at the ends of the calendar.
        since_epoch = item.published_at - EPOCH
        message.published_at.seconds = since_epoch.days * 86_400 + since_epoch.seconds
        message.published_at.nanos = since_epoch.microseconds * 1000
    return message


async def feature_store_write(call: Awaitable[ReplyT]) -> ReplyT:
    """A write or export on the feature store (`client.upsert_items(...)`), with its errors
    as problems."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise Problem(400, error.details() or "invalid request") from None
        if error.code() == grpc.StatusCode.NOT_FOUND:
            raise Problem(404, error.details() or "not found") from None
        raise Problem(
            503, f"the feature store is unavailable ({error.code().name})", headers={"Retry-After": "1"}
        ) from None
    except DOWNSTREAM_ERRORS:
        raise Problem(503, "the feature store is unavailable", headers={"Retry-After": "1"}) from None


@router.put(
    "/v1/items/{item_id}",
    response_model=ItemsUpserted,
    responses={**COMMON_ERRORS, 413: PROBLEM, 503: PROBLEM},
    summary="Create or replace one catalog item",
)
async def put_item(
    *,
    item_id: Annotated[str, Path(pattern=ID_PATTERN)],
    item: ItemIn,
    _: Annotated[Principal, Depends(authorize(WRITE))],
    services: Services,
):
    request = features_pb2.UpsertItemsRequest(items=[to_proto(item_id, item)])
    client = services.fleet.feature_store.pick(services.fleet.router, None)
    reply = await feature_store_write(client.upsert_items(request, timeout=services.settings.write_timeout))
    # At once in this process; other processes hear it from the feature store's announcement.
    services.recommender.attributes.forget([item_id])
    return JSONBody({"upserted": reply.upserted, "created": reply.created})


@router.post(
    "/v1/items:batch",
    response_model=ItemsUpserted,
    responses={**COMMON_ERRORS, 413: PROBLEM, 503: PROBLEM},
    summary="Create or replace up to 500 catalog items",
)
async def post_items(*, batch: ItemBatch, _: Annotated[Principal, Depends(authorize(WRITE))], services: Services):
    # Upserts in order: of two entries for one id, the later one is what stays.
    latest = {item.item_id: item for item in batch.items}
    request = features_pb2.UpsertItemsRequest(items=[to_proto(item_id, item) for item_id, item in latest.items()])
    client = services.fleet.feature_store.pick(services.fleet.router, None)
    reply = await feature_store_write(client.upsert_items(request, timeout=services.settings.write_timeout))
    services.recommender.attributes.forget(latest)
    return JSONBody({"upserted": reply.upserted, "created": reply.created})
