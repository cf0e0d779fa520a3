"""`/admin/v1`: model versions, batch jobs and API keys (scope `admin`). Every change
is recorded in the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path
from recfleet_store.registry import PromotionRefused

from ...adapters.api_keys import ApiKeyRecord, BootstrapState, KeyConflict
from ...deps import COMMON_ERRORS, PROBLEM, AdminKey, Services, authorize
from ...gateway import Gateway
from ...rest.auth import BOOTSTRAP_KEY_ID, Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..jobs import JOB_NAMES, JobAlreadyRunning
from ..schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyList,
    ApiKeyOut,
    ApiKeyRotated,
    BootstrapKeyOut,
    JobOut,
    ModelChange,
    ModelList,
    PromoteIn,
    RotateIn,
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
    summary="Serve a model version (409 when the promotion gates refuse it, unless forced)",
)
async def promote(*, kind: Kind, body: PromoteIn, services: Services, principal: AdminKey):
    return JSONBody(await _change(services, principal, "model.promote", kind, body.version, body.force))


@router.post(
    "/models/{kind}/rollback",
    response_model=ModelChange,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Serve the previously serving version again",
)
async def rollback(*, kind: Kind, services: Services, principal: AdminKey):
    return JSONBody(await _change(services, principal, "model.rollback", kind, None))


async def _change(
    services: Gateway, principal: Principal, action: str, kind: str, version: str | None, force: bool = False
) -> dict:
    try:
        change = await services.registry.change(kind, version, force)
    except LookupError as error:
        raise Problem(404, str(error)) from None
    except PromotionRefused as error:
        raise Problem(
            409, str(error), kind="promotion-refused", title="Promotion Refused", reasons=error.reasons
        ) from None
    except ValueError as error:
        raise Problem(409, str(error)) from None
    # This process keys cached lists by the new version at once; the others within a second.
    services.cache.models.changed(kind, change["serving"])
    after: dict[str, Any] = {"serving": change["serving"]}
    if version is not None:
        after["forced"] = change["forced"]
        if change["forced"]:
            after["overridden"] = change["overridden"]
    await services.audit.record(principal, action, kind, {"serving": change["previous"]}, after)
    return change


@router.post(
    "/jobs/{job}",
    status_code=202,
    response_model=JobOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Run a batch job now",
)
async def start_job(
    *,
    name: Annotated[Literal[JOB_NAMES], Path(alias="job", description="Job name.")],  # type: ignore[valid-type]
    services: Services,
    principal: AdminKey,
):
    try:
        job = await services.jobs.start(name)
    except JobAlreadyRunning as error:
        raise Problem(409, str(error), job_id=error.job_id) from None
    await services.audit.record(principal, "job.start", name, None, {"job_id": job["job_id"]})
    return JSONBody(job, status_code=202, headers={"Location": f"/admin/v1/jobs/{job['job_id']}"})


# One template for both job routes (`{job}`: a name to start, an id to read): OpenAPI
# counts paths that differ only in a parameter's name as one path.
@router.get("/jobs/{job}", response_model=JobOut, responses={**COMMON_ERRORS, 404: PROBLEM}, summary="A job's status")
async def get_job(
    *, job_id: Annotated[str, Path(alias="job", pattern=ID_PATTERN, description="Job id.")], services: Services
):
    job = await services.jobs.get(job_id)
    if job is None:
        raise Problem(404, f"no job {job_id!r}")
    return JSONBody(job)


def _key_status(record: ApiKeyRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


def _key_out(record: ApiKeyRecord) -> dict:
    return {
        "key_id": record.key_id,
        "name": record.name,
        "scopes": list(record.scopes),
        "status": _key_status(record),
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "expires_at": record.expires_at,
        "rotated_to": record.rotated_to,
    }


def _key_state(record: ApiKeyRecord) -> dict[str, Any]:
    """What the audit log keeps of a key's state (never its secret or hash)."""
    return {
        "status": _key_status(record),
        "revoked_at": record.revoked_at,
        "expires_at": record.expires_at,
        "rotated_to": record.rotated_to,
    }


KeyId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.post(
    "/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=COMMON_ERRORS,
    summary="Create an API key, optionally expiring",
)
async def create_key(*, body: ApiKeyIn, services: Services, principal: AdminKey):
    record, secret = await services.keys.create(body.name, list(body.scopes), body.expiry())
    after = {"name": record.name, "scopes": list(record.scopes), **_key_state(record)}
    await services.audit.record(principal, "api_key.create", record.key_id, None, after)
    return JSONBody({**_key_out(record), "secret": secret}, status_code=201)


@router.get("/api-keys", response_model=ApiKeyList, responses=COMMON_ERRORS, summary="List API keys")
async def list_keys(*, services: Services):
    return JSONBody({"keys": [_key_out(r) for r in await services.keys.list()]})


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses={**COMMON_ERRORS, 404: PROBLEM, 409: PROBLEM},
    summary="Revoke an API key",
)
async def revoke_key(*, key_id: KeyId, services: Services, principal: AdminKey):
    try:
        revoked = await services.keys.revoke(key_id)
    except KeyConflict as error:
        raise Problem(409, str(error)) from None
    if revoked is None:
        raise _no_key(key_id)
    before, after = revoked
    await services.audit.record(principal, "api_key.revoke", key_id, _key_state(before), _key_state(after))
    return JSONBody(_key_out(after))


@router.post(
    "/api-keys/{key_id}/rotate",
    status_code=201,
    response_model=ApiKeyRotated,
    responses={**COMMON_ERRORS, 404: PROBLEM, 409: PROBLEM},
    summary="Replace a key: a new one with the same name and scopes, the old one expiring after an overlap",
)
async def rotate_key(
    *, key_id: KeyId, services: Services, principal: AdminKey, body: Annotated[RotateIn | None, Body()] = None
):
    body = body or RotateIn()
    try:
        rotated = await services.keys.rotate(key_id, body.overlap_seconds, body.expiry())
    except KeyConflict as error:
        raise Problem(409, str(error)) from None
    if rotated is None:
        raise _no_key(key_id)
    rotation, secret = rotated
    await services.audit.record(
        principal, "api_key.rotate", key_id, _key_state(rotation.before), _key_state(rotation.previous)
    )
    return JSONBody(
        {**_key_out(rotation.created), "secret": secret, "previous": _key_out(rotation.previous)},
        status_code=201,
        headers={"Location": "/admin/v1/api-keys"},
    )


def _no_key(key_id: str) -> Problem:
    if key_id == BOOTSTRAP_KEY_ID:
        return Problem(
            404,
            "the bootstrap key is set in the environment (RECFLEET_BOOTSTRAP_ADMIN_KEY), not stored:"
            " change it there, or disable it with POST /admin/v1/api-keys/bootstrap/disable",
        )
    return Problem(404, f"no API key {key_id!r}")


def _bootstrap_out(state: BootstrapState) -> dict[str, Any]:
    return {"disabled": state.disabled, "disabled_at": state.disabled_at, "disabled_by": state.disabled_by}


@router.get(
    "/api-keys/bootstrap",
    response_model=BootstrapKeyOut,
    responses=COMMON_ERRORS,
    summary="Whether the bootstrap admin key is disabled",
)
async def bootstrap_state(*, services: Services):
    return JSONBody(_bootstrap_out(await services.keys.bootstrap_state()))


@router.post(
    "/api-keys/bootstrap/disable",
    response_model=BootstrapKeyOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Refuse the bootstrap admin key from now on (every replica within the key cache time)",
)
async def disable_bootstrap(*, services: Services, principal: AdminKey):
    try:
        before, after = await services.keys.disable_bootstrap(principal.key_id)
    except KeyConflict as error:
        raise Problem(409, str(error)) from None
    await services.audit.record(
        principal, "bootstrap_key.disable", BOOTSTRAP_KEY_ID, _bootstrap_out(before), _bootstrap_out(after)
    )
    return JSONBody(_bootstrap_out(after))


@router.post(
    "/api-keys/bootstrap/enable",
    response_model=BootstrapKeyOut,
    responses=COMMON_ERRORS,
    summary="Accept the bootstrap admin key again (needs another admin key while it is disabled)",
)
async def enable_bootstrap(*, services: Services, principal: AdminKey):
    before, after = await services.keys.enable_bootstrap()
    await services.audit.record(
        principal, "bootstrap_key.enable", BOOTSTRAP_KEY_ID, _bootstrap_out(before), _bootstrap_out(after)
    )
    return JSONBody(_bootstrap_out(after))
