"""`/admin/v1/index` and `/admin/v1/cache/{user_id}`: what on-call needs beside models
and traffic (scope `admin`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel
from recfleet.candidates.v1 import candidates_pb2

from ...deps import COMMON_ERRORS, AdminKey, Services, authorize
from ...downstream.clients import CandidateClient
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN


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
