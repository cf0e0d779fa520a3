"""`/admin/v1/traffic` and `/admin/v1/rollback`: canary weights and shadow shares
(scope `admin`). Changes go to the shared store every gateway replica follows, and to
the audit log."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, Field
from recfleet_store.traffic import TrafficFrozen, recent_events, record_event

from ...deps import COMMON_ERRORS, PROBLEM, AdminKey, Services, authorize
from ...downstream.tracks import MIRRORED, SERVICES
from ...gateway import Gateway
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.schemas import Integer

router = APIRouter(prefix="/admin/v1", tags=["traffic"], dependencies=[Depends(authorize("admin"))])
Service = Annotated[Literal[SERVICES], Path(description="Downstream service.")]  # type: ignore[valid-type]


class TrafficIn(BaseModel):
    model_config = {"extra": "forbid"}
    # Strict: a boolean or a string is refused, not read as 0/1.
    weight: Integer = Field(ge=0, le=100, description="Percent of users routed to the canary (sticky per user).")
    shadow_percent: Integer = Field(0, ge=0, le=100, description="Percent of calls mirrored to the canary.")


class RollbackIn(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str = Field(default="manual rollback", max_length=500)


class TrafficOut(BaseModel):
    service: str
    has_canary: bool
    weight: int
    shadow_percent: int
    source: str
    frozen: bool
    reason: str
    updated_at: float
    updated_by: str


class TrafficList(BaseModel):
    services: list[TrafficOut]
    events: list[dict]


def _out(services: Gateway, service: str) -> dict:
    state = services.traffic.states[service]
    return {**state.as_dict(), "has_canary": services.fleet.router.has_canary(service)}


def _actor(principal: Principal) -> str:
    return principal.name or principal.key_id or "admin"


# What the audit log keeps of a service's traffic state.
AUDITED = ("weight", "shadow_percent", "frozen", "reason")


async def _state(services: Gateway, service: str) -> dict:
    """The service's traffic state in the shared store now."""
    await services.traffic.refresh()
    state = services.traffic.states[service].as_dict()
    return {name: state[name] for name in AUDITED}


async def _changed(services: Gateway, principal: Principal, action: str, service: str, before: dict) -> dict:
    """Refreshes this replica's weights, records the change and returns the new state."""
    after = await _state(services, service)
    await services.audit.record(principal, action, service, before, after)
    return _out(services, service)


@router.get("/traffic", response_model=TrafficList, responses=COMMON_ERRORS, summary="Canary weights and history")
async def get_traffic(services: Services):
    await services.traffic.refresh()
    return ORJSONResponse(
        {"services": [_out(services, s) for s in SERVICES], "events": await recent_events(services.pool)}
    )


@router.put(
    "/traffic/{service}",
    response_model=TrafficOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Set a canary weight and shadow share",
)
async def put_traffic(service: Service, body: TrafficIn, services: Services, principal: AdminKey):
    if body.shadow_percent and service not in MIRRORED:
        raise Problem(
            400,
            f"shadow_percent: {service} takes writes; mirroring them to a canary would store them twice",
            errors=[{"field": "body.shadow_percent", "message": f"must be 0 for {service}"}],
        )
    if (body.weight or body.shadow_percent) and not services.fleet.router.has_canary(service):
        raise Problem(409, f"{service} has no canary target; deploy one before routing traffic to it")
    before = await _state(services, service)
    try:
        await services.traffic.store.set(service, body.weight, body.shadow_percent, _actor(principal))
    except TrafficFrozen as error:
        raise Problem(409, str(error)) from None
    await record_event(services.pool, service, "set", body.weight, body.shadow_percent, "", _actor(principal))
    return ORJSONResponse(await _changed(services, principal, "traffic.set", service, before))


@router.post(
    "/rollback/{service}", response_model=TrafficOut, responses=COMMON_ERRORS, summary="Canary weight to 0 at once"
)
async def rollback(
    service: Service, services: Services, principal: AdminKey, body: Annotated[RollbackIn | None, Body()] = None
):
    reason = (body or RollbackIn()).reason
    before = await _state(services, service)
    await services.traffic.store.rollback(service, reason, _actor(principal))
    await record_event(services.pool, service, "rollback", 0, None, reason, _actor(principal))
    return ORJSONResponse(await _changed(services, principal, "traffic.rollback", service, before))


@router.post(
    "/traffic/{service}/ack",
    response_model=TrafficOut,
    responses=COMMON_ERRORS,
    summary="Acknowledge a rollback so the weight may be raised again",
)
async def ack(service: Service, services: Services, principal: AdminKey):
    before = await _state(services, service)
    await services.traffic.store.ack(service, _actor(principal))
    await record_event(services.pool, service, "ack", None, None, "", _actor(principal))
    return ORJSONResponse(await _changed(services, principal, "traffic.ack", service, before))
