"""`/admin/v1`: model versions, batch jobs and API keys (scope `admin`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import psycopg
import redis
from fastapi import APIRouter, Depends, Path
from recfleet_store import registry

from ..jobs import JOB_NAMES, JobAlreadyRunning
from ..problems import Problem
from ..responses import JSONBody
from ..schemas import (
    ID_PATTERN,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    JobOut,
    ModelChange,
    ModelList,
    PromoteIn,
)
from .deps import COMMON_ERRORS, PROBLEM, Services, authorize

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(authorize("admin"))])
Kind = Annotated[Literal["als", "ranker"], Path(description="Model kind.")]


def _version_out(row: dict) -> dict:
    return {
        key: row.get(key)
        for key in ("version", "kind", "status", "artifact_uri", "metrics", "created_at", "promoted_at")
    }


class Registry:
    """The model registry through sync psycopg, run in a worker thread."""

    def __init__(self, dsn: str, redis_url: str):
        self._dsn = dsn
        self._redis_url = redis_url

    def _list(self) -> dict:
        with psycopg.connect(self._dsn) as conn:
            versions = registry.list_versions(conn)
            serving = {kind: registry.serving_version(conn, kind) for kind in registry.KINDS}
        return {"serving": serving, "versions": [_version_out(v) for v in versions]}

    def _change(self, kind: str, version: str | None) -> dict:
        client = redis.Redis.from_url(self._redis_url)
        try:
            with psycopg.connect(self._dsn) as conn:
                if version is None:
                    before = registry.serving_version(conn, kind)
                    now = registry.rollback(conn, kind, redis_client=client)
                    return {"kind": kind, "serving": now, "previous": before}
                if registry.get_version(conn, version) is None:
                    raise LookupError(f"unknown {kind} version {version!r}")
                previous = registry.promote(conn, kind, version, redis_client=client)
                return {"kind": kind, "serving": version, "previous": previous}
        finally:
            client.close()

    async def list(self) -> dict:
        return await asyncio.to_thread(self._list)

    async def change(self, kind: str, version: str | None) -> dict:
        try:
            return await asyncio.to_thread(self._change, kind, version)
        except LookupError as error:
            raise Problem(404, str(error)) from None
        except ValueError as error:
            raise Problem(409, str(error)) from None


@router.get("/models", response_model=ModelList, responses=COMMON_ERRORS, summary="Registered model versions")
async def list_models(*, services: Services):
    return JSONBody(await services.registry.list())


@router.post(
    "/models/{kind}/promote",
    response_model=ModelChange,
    responses={**COMMON_ERRORS, 404: PROBLEM, 409: PROBLEM},
    summary="Serve a model version",
)
async def promote(*, kind: Kind, body: PromoteIn, services: Services):
    return JSONBody(await services.registry.change(kind, body.version))


@router.post(
    "/models/{kind}/rollback",
    response_model=ModelChange,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Serve the previously serving version again",
)
async def rollback(*, kind: Kind, services: Services):
    return JSONBody(await services.registry.change(kind, None))


@router.post(
    "/jobs/{name}",
    status_code=202,
    response_model=JobOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Run a batch job now",
)
async def start_job(*, name: Annotated[Literal[JOB_NAMES], Path(description="Job name.")], services: Services):  # type: ignore[valid-type]
    try:
        job = await services.jobs.start(name)
    except JobAlreadyRunning as error:
        raise Problem(409, str(error), job_id=error.job_id) from None
    return JSONBody(job, status_code=202, headers={"Location": f"/admin/v1/jobs/{job['job_id']}"})


@router.get(
    "/jobs/{job_id}", response_model=JobOut, responses={**COMMON_ERRORS, 404: PROBLEM}, summary="A job's status"
)
async def get_job(*, job_id: Annotated[str, Path(pattern=ID_PATTERN)], services: Services):
    job = await services.jobs.get(job_id)
    if job is None:
        raise Problem(404, f"no job {job_id!r}")
    return JSONBody(job)


def _key_out(record) -> dict:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "scopes": list(record.scopes),
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


@router.post(
    "/api-keys", status_code=201, response_model=ApiKeyCreated, responses=COMMON_ERRORS, summary="Create an API key"
)
async def create_key(*, body: ApiKeyIn, services: Services):
    record, secret = await services.keys.create(body.name, list(body.scopes))
    return JSONBody({**_key_out(record), "secret": secret}, status_code=201)


@router.get("/api-keys", response_model=ApiKeyList, responses=COMMON_ERRORS, summary="List API keys")
async def list_keys(*, services: Services):
    return JSONBody({"keys": [_key_out(r) for r in await services.keys.list()]})


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses={**COMMON_ERRORS, 404: PROBLEM},
    summary="Revoke an API key",
)
async def revoke_key(*, key_id: Annotated[str, Path(pattern=ID_PATTERN)], services: Services):
    record = await services.keys.revoke(key_id)
    if record is None:
        raise Problem(404, f"no API key {key_id!r}")
    return JSONBody(_key_out(record))
