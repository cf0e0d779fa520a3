"""`/admin/v1`: model versions, batch jobs and API keys (scope `admin`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path

from ...adapters.api_keys import ApiKeyRecord
from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...gateway import Gateway
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..jobs import JOB_NAMES, JobAlreadyRunning
from ..schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    JobOut,
    ModelChange,
    ModelList,
    PromoteIn,
)

router = APIRouter(prefix="/admin/v1", tags=["admin"], dependencies=[Depends(authorize("admin"))])
Kind = Annotated[Literal["als", "ranker"], Path(description="Model kind.")]


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
    return JSONBody(await _change(services, kind, body.version))


@router.post(
    "/models/{kind}/rollback",
    response_model=ModelChange,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Serve the previously serving version again",
)
async def rollback(*, kind: Kind, services: Services):
    return JSONBody(await _change(services, kind, None))


async def _change(services: Gateway, kind: str, version: str | None) -> dict:
    try:
        return await services.registry.change(kind, version)
    except LookupError as error:
        raise Problem(404, str(error)) from None
    except ValueError as error:
        raise Problem(409, str(error)) from None


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


def _key_out(record: ApiKeyRecord) -> dict:
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
