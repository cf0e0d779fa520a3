"""`/admin/v1/traffic` and `/admin/v1/rollback`: canary weights and shadow shares
(scope `admin`). Changes go to the shared store every gateway replica follows."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path
from fastapi.responses import ORJSONResponse
from pydantic import BaseModel, Field
from recfleet_store.traffic import TrafficFrozen, recent_events, record_event

from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...downstream.tracks import MIRRORED, SERVICES
from ...gateway import Gateway
from ...rest.auth import Principal
from ...rest.problems import Problem

router = APIRouter(prefix="/admin/v1", tags=["traffic"], dependencies=[Depends(authorize("admin"))])
Service = Annotated[Literal[SERVICES], Path(description="Downstream service.")]  # type: ignore[valid-type]
Admin = Annotated[Principal, Depends(authorize("admin"))]


class TrafficIn(BaseModel):
    model_config = {"extra": "forbid"}
    # Strict: a boolean or a string is refused, not read as 0/1.
    weight: int = Field(
        strict=True, ge=0, le=100, description="Percent of users routed to the canary (sticky per user)."
    )
    shadow_percent: int = Field(0, strict=True, ge=0, le=100, description="Percent of calls mirrored to the canary.")


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
async def put_traffic(service: Service, body: TrafficIn, services: Services, principal: Admin):
    if body.shadow_percent and service not in MIRRORED:
        raise Problem(
            400,
            f"shadow_percent: {service} takes writes; mirroring them to a canary would store them twice",
            errors=[{"field": "body.shadow_percent", "message": f"must be 0 for {service}"}],
        )
    if (body.weight or body.shadow_percent) and not services.fleet.router.has_canary(service):
        raise Problem(409, f"{service} has no canary target; deploy one before routing traffic to it")
    try:
        await services.traffic.store.set(service, body.weight, body.shadow_percent, _actor(principal))
    except TrafficFrozen as error:
        raise Problem(409, str(error)) from None
    await record_event(services.pool, service, "set", body.weight, body.shadow_percent, "", _actor(principal))
    await services.traffic.refresh()
    return ORJSONResponse(_out(services, service))


@router.post(
    "/rollback/{service}", response_model=TrafficOut, responses=COMMON_ERRORS, summary="Canary weight to 0 at once"
)
async def rollback(
    service: Service, services: Services, principal: Admin, body: Annotated[RollbackIn | None, Body()] = None
):
    reason = (body or RollbackIn()).reason
    await services.traffic.store.rollback(service, reason, _actor(principal))
    await record_event(services.pool, service, "rollback", 0, None, reason, _actor(principal))
    await services.traffic.refresh()
    return ORJSONResponse(_out(services, service))


@router.post(
    "/traffic/{service}/ack",
    response_model=TrafficOut,
    responses=COMMON_ERRORS,
    summary="Acknowledge a rollback so the weight may be raised again",
)
async def ack(service: Service, services: Services, principal: Admin):
    await services.traffic.store.ack(service, _actor(principal))
    await record_event(services.pool, service, "ack", None, None, "", _actor(principal))
    await services.traffic.refresh()
    return ORJSONResponse(_out(services, service))
