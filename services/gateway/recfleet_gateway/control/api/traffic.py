"""`/admin/v1/traffic` and `/admin/v1/rollback`: canary weights and shadow shares, and
staged rollouts (scope `admin`). Changes go to the shared store every gateway replica
follows, and to the audit log."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, Field
from recfleet_runtime.rollout import MAX_HOLD_SECONDS, MAX_STAGES, Rollout, Schedule, schedule_problem
from recfleet_store.traffic import TrafficFrozen, recent_events, record_event

from ...deps import COMMON_ERRORS, PROBLEM, AdminKey, Services, authorize
from ...downstream.tracks import MIRRORED, SERVICES
from ...gateway import Gateway
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import FiniteNumber, Integer, JsonInteger, Text
from ..traffic import RolloutConflict

router = APIRouter(prefix="/admin/v1", tags=["traffic"], dependencies=[Depends(authorize("admin"))])
Service = Annotated[Literal[SERVICES], Path(description="Downstream service.")]  # type: ignore[valid-type]


class TrafficIn(BaseModel):
    model_config = {"extra": "forbid"}
    # Strict: a boolean or a string is refused, not read as 0/1.
    weight: Integer = Field(ge=0, le=100, description="Percent of users routed to the canary (sticky per user).")
    shadow_percent: Integer = Field(0, ge=0, le=100, description="Percent of calls mirrored to the canary.")


class RollbackIn(BaseModel):
    model_config = {"extra": "forbid"}
    reason: Text = Field(
        default="manual rollback", max_length=500, description="Kept in the traffic history and the audit log."
    )


# A stage's canary weight. The bounds sit on the int itself, inside the JSON-integer
# validator: put after it (`Annotated[Integer, Field(ge=1)]`) pydantic still checks them but
# writes `ge` / `le` into the schema, which JSON Schema does not know.
StageWeight = Annotated[int, Field(strict=True, ge=1, le=100), JsonInteger]


class RolloutIn(BaseModel):
    model_config = {"extra": "forbid"}
    stages: list[StageWeight] | None = Field(
        None,
        min_length=1,
        max_length=MAX_STAGES,
        description="Canary weights to move through, rising, each 1-100, e.g. [1, 10, 50, 100]; "
        "default RECFLEET_GATEWAY_CANARY_ROLLOUT_STAGES.",
    )
    hold_seconds: FiniteNumber | None = Field(
        None,
        ge=0,
        le=MAX_HOLD_SECONDS,
        description="Least time each stage is held, at most a week; "
        "default RECFLEET_GATEWAY_CANARY_ROLLOUT_HOLD_SECONDS.",
    )


class AbortIn(BaseModel):
    model_config = {"extra": "forbid"}
    reason: Text = Field(
        default="aborted by an operator",
        max_length=500,
        description="Kept in the rollout, its history and the audit log.",
    )


class GateReading(BaseModel):
    gate: str = Field(description="calls, error_rate, p99_seconds, ctr, empty_rate or coverage.")
    canary: float = Field(description="The canary's value (coverage: distinct items shown).")
    stable: float = Field(description="Stable's value over the same window.")
    verdict: Literal["pass", "hold", "breach"] = Field(description="hold: too little traffic, or not significant yet.")
    detail: str


class RolloutOut(BaseModel):
    service: str
    status: Literal["running", "complete", "rolled-back", "aborted"]
    stages: list[int]
    hold_seconds: float
    stage: int = Field(description="The current stage, 1-based.")
    weight: int = Field(description="The current stage's weight.")
    started_at: float
    started_by: str
    stage_started_at: float
    held_seconds: float = Field(description="How long the current stage has been held (until the rollout ended).")
    reason: str = Field(description="The last judgement while running; why it stopped once it has.")
    readings: list[GateReading] = Field(description="The gate readings of the last judgement.")
    checked_at: float


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
    rollout: RolloutOut | None = Field(description="The service's latest staged rollout, if it had one.")


class TrafficList(BaseModel):
    services: list[TrafficOut]
    events: list[dict]


def _rollout_out(rollout: Rollout | None, now: float) -> dict | None:
    if rollout is None:
        return None
    stored = rollout.as_dict()
    held = (now if rollout.running else max(rollout.checked_at, rollout.stage_started_at)) - rollout.stage_started_at
    return {**stored, "stage": rollout.stage + 1, "weight": rollout.weight, "held_seconds": round(max(0.0, held), 3)}


async def _out(services: Gateway, service: str, rollouts: dict[str, Rollout] | None = None) -> dict:
    state = services.traffic.states[service]
    if rollouts is None:
        rollout = await services.traffic.rollout_of(service)
    else:
        rollout = rollouts.get(service)
    return {
        **state.as_dict(),
        "has_canary": services.fleet.router.has_canary(service),
        "rollout": _rollout_out(rollout, time.time()),
    }


def _actor(principal: Principal) -> str:
    return principal.name or principal.key_id or "admin"


# What the audit log keeps of a service's traffic state, and of its rollout.
AUDITED = ("weight", "shadow_percent", "frozen", "reason")
AUDITED_ROLLOUT = ("status", "stages", "hold_seconds", "stage", "weight")


async def _state(services: Gateway, service: str) -> dict:
    """The service's traffic state in the shared store now, with its rollout's."""
    await services.traffic.refresh()
    state = services.traffic.states[service].as_dict()
    rollout = await services.traffic.rollout_of(service)
    audited = {name: state[name] for name in AUDITED}
    shown = _rollout_out(rollout, time.time())
    if shown is not None:
        audited["rollout"] = {name: shown[name] for name in AUDITED_ROLLOUT}
    return audited


async def _changed(services: Gateway, principal: Principal, action: str, service: str, before: dict) -> dict:
    """Refreshes this replica's weights, records the change and returns the new state."""
    after = await _state(services, service)
    await services.audit.record(principal, action, service, before, after)
    return await _out(services, service)


def _needs_canary(services: Gateway, service: str) -> None:
    if not services.fleet.router.has_canary(service):
        raise Problem(409, f"{service} has no canary target; deploy one before routing traffic to it")


@router.get(
    "/traffic", response_model=TrafficList, responses=COMMON_ERRORS, summary="Canary weights, rollouts and history"
)
async def get_traffic(services: Services):
    await services.traffic.refresh()
    rollouts = await services.traffic.all_rollouts()
    return JSONBody(
        {
            "services": [await _out(services, s, rollouts) for s in SERVICES],
            "events": await recent_events(services.pool),
        }
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
    if body.weight or body.shadow_percent:
        _needs_canary(services, service)
    rollout = await services.traffic.rollout_of(service)
    if rollout is not None and rollout.running:
        raise Problem(
            409,
            f"{service} is rolling out ({rollout.stage_label()}); abort the rollout before setting its weight",
        )
    before = await _state(services, service)
    try:
        await services.traffic.store.set(service, body.weight, body.shadow_percent, _actor(principal))
    except TrafficFrozen as error:
        raise Problem(409, str(error)) from None
    await record_event(services.pool, service, "set", body.weight, body.shadow_percent, "", _actor(principal))
    return JSONBody(await _changed(services, principal, "traffic.set", service, before))


@router.post(
    "/rollback/{service}", response_model=TrafficOut, responses=COMMON_ERRORS, summary="Canary weight to 0 at once"
)
async def rollback(
    service: Service, services: Services, principal: AdminKey, body: Annotated[RollbackIn | None, Body()] = None
):
    reason = (body or RollbackIn()).reason
    before = await _state(services, service)
    await services.traffic.store.rollback(service, reason, _actor(principal))
    await services.traffic.end_rollout(service, reason)
    await record_event(services.pool, service, "rollback", 0, None, reason, _actor(principal))
    return JSONBody(await _changed(services, principal, "traffic.rollback", service, before))


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
    return JSONBody(await _changed(services, principal, "traffic.ack", service, before))


@router.post(
    "/traffic/{service}/rollout",
    response_model=TrafficOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Start a staged rollout of the canary",
)
async def start_rollout(
    service: Service, services: Services, principal: AdminKey, body: Annotated[RolloutIn | None, Body()] = None
):
    body = body or RolloutIn()
    default = services.traffic.schedule
    stages = tuple(body.stages) if body.stages is not None else default.stages
    hold = body.hold_seconds if body.hold_seconds is not None else default.hold_seconds
    problem = schedule_problem(stages, hold)
    if problem:
        field = problem.split(":", 1)[0]
        raise Problem(400, problem, errors=[{"field": f"body.{field}", "message": problem.split(": ", 1)[1]}])
    _needs_canary(services, service)
    before = await _state(services, service)
    try:
        await services.traffic.start_rollout(service, Schedule(stages, hold), _actor(principal))
    except (TrafficFrozen, RolloutConflict) as error:
        raise Problem(409, str(error)) from None
    return JSONBody(await _changed(services, principal, "traffic.rollout", service, before))


@router.post(
    "/traffic/{service}/rollout/abort",
    response_model=TrafficOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Abort a staged rollout: canary weight to 0, not frozen",
)
async def abort_rollout(
    service: Service, services: Services, principal: AdminKey, body: Annotated[AbortIn | None, Body()] = None
):
    reason = (body or AbortIn()).reason
    before = await _state(services, service)
    try:
        await services.traffic.abort_rollout(service, reason, _actor(principal))
    except RolloutConflict as error:
        raise Problem(409, str(error)) from None
    return JSONBody(await _changed(services, principal, "traffic.rollout_abort", service, before))
