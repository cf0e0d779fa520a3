"""`/admin/v1/index`, `/admin/v1/fleet`, `/admin/v1/items` and `/admin/v1/cache/{user_id}`:
what on-call needs beside models and traffic (scope `admin`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Path, Query
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, StringConstraints
from recfleet.candidates.v1 import candidates_pb2
from recfleet.features.v1 import features_pb2
from recfleet_runtime.grpcclient import Downstream

from ...deps import COMMON_ERRORS, PROBLEM, AdminKey, Services, authorize
from ...downstream.clients import DOWNSTREAM_ERRORS, CandidateClient
from ...downstream.tracks import SERVICES, STABLE
from ...gateway import Gateway
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..schemas import CatalogItems, FleetStatus
from ..traffic import service_of


class IndexStatus(BaseModel):
    shards: list[dict]


class CacheFlushed(BaseModel):
    user_id: str
    flushed: bool


router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(authorize("admin"))])


async def _shard_status(downstream: CandidateClient) -> dict:
    try:
        reply = await downstream.get_shard_status(candidates_pb2.GetShardStatusRequest(), timeout=1.0)
    except Exception as error:
        return {"target": downstream.target, "track": downstream.track, "error": str(error).splitlines()[0][:200]}
    status = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return {"target": downstream.target, "track": downstream.track, **status}


@router.get(
    "/index",
    response_model=IndexStatus,
    responses=COMMON_ERRORS,
    summary="Index version and reload state of every shard",
)
async def index_status(*, services: Services):
    shards = services.fleet.candidate_gen.all()
    return JSONBody({"shards": await asyncio.gather(*(_shard_status(d) for d in shards))})


def _health_name(downstream: Downstream[Any]) -> str:
    """How readiness's `not_serving` names a downstream: `name`, or `name:canary`."""
    return downstream.name if downstream.track == STABLE else f"{downstream.name}:{downstream.track}"


def _service_status(services: Gateway, service: str, downstreams: list[Downstream[Any]], down: set[str]) -> dict:
    tracks = []
    for track in sorted({d.track for d in downstreams}, key=lambda t: t != STABLE):
        calls = services.traffic.window.stats(service, track)
        endpoints = [
            {
                "name": d.name,
                "target": d.target,
                "serving": _health_name(d) not in down,
                "breaker": d.breaker.state.value,
            }
            for d in downstreams
            if d.track == track
        ]
        recent = {
            "requests": calls.requests,
            "errors": calls.errors,
            "error_rate": calls.error_rate,
            "p99_ms": calls.p99_seconds * 1000,
        }
        tracks.append({"track": track, "endpoints": endpoints, "recent": recent})
    return {"service": service, "weight": services.fleet.router.weight(service), "tracks": tracks}


@router.get(
    "/fleet",
    response_model=FleetStatus,
    responses=COMMON_ERRORS,
    summary="Every downstream service and track: health, circuit breakers, recent call failures",
)
async def fleet_status(*, services: Services):
    down = set(await services.fleet.not_serving())
    by_service: dict[str, list[Downstream[Any]]] = {service: [] for service in SERVICES}
    for downstream in services.fleet.downstreams():
        by_service[service_of(downstream.name)].append(downstream)
    return JSONBody(
        {
            "window_seconds": services.traffic.window.window_seconds,
            "services": [_service_status(services, s, by_service[s], down) for s in SERVICES],
        }
    )


MAX_ITEMS = 100
CATALOG_FEATURES = ("title", "categories", "creator")
ItemId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _catalog_item(item_id: str, row: features_pb2.FeatureRow | None) -> dict:
    values = row.values if row is not None else {}
    return {
        "item_id": item_id,
        "title": values["title"].text if "title" in values else "",
        "categories": list(values["categories"].strings.values) if "categories" in values else [],
        "creator": values["creator"].text if "creator" in values else "",
    }


@router.get(
    "/items",
    response_model=CatalogItems,
    responses={**COMMON_ERRORS, 503: PROBLEM},
    summary="Catalog attributes (title, categories, creator) of up to 100 items",
)
async def catalog_items(
    *,
    item_id: Annotated[
        list[ItemId], Query(min_length=1, max_length=MAX_ITEMS, description="An item id; repeat for up to 100.")
    ],
    services: Services,
):
    ids = list(dict.fromkeys(item_id))
    request = features_pb2.GetItemFeaturesRequest(item_ids=ids, feature_names=CATALOG_FEATURES)
    try:
        reply = await services.fleet.feature_store.stable.get_item_features(request, timeout=1.0)
    except grpc.aio.AioRpcError as error:
        raise Problem(
            503, f"the feature store is unavailable ({error.code().name})", headers={"Retry-After": "1"}
        ) from None
    except DOWNSTREAM_ERRORS:
        raise Problem(503, "the feature store is unavailable", headers={"Retry-After": "1"}) from None
    rows = {row.entity_id: row for row in reply.rows}
    return JSONBody({"items": [_catalog_item(i, rows.get(i)) for i in ids]})


@router.delete(
    "/cache/{user_id}",
    response_model=CacheFlushed,
    responses=COMMON_ERRORS,
    summary="Drop a user's cached recommendations",
)
async def flush_user_cache(
    *, user_id: Annotated[str, Path(pattern=ID_PATTERN)], services: Services, principal: AdminKey
):
    await services.cache.invalidate(user_id)
    await services.audit.record(principal, "cache.flush", user_id)
    return JSONBody({"user_id": user_id, "flushed": True})
