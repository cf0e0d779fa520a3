"""Probes (unauthenticated): liveness and readiness. Metrics are served on a port of
their own (see `__main__.py`), which no route exposes."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...deps import PROBLEM, Services, reject_unknown_query
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ..schemas import Liveness, Readiness

router = APIRouter(tags=["operations"], dependencies=[Depends(reject_unknown_query)])


@router.get("/healthz/live", response_model=Liveness, responses={400: PROBLEM}, summary="The process is up")
async def live():
    return JSONBody({"status": "live"})


@router.get(
    "/healthz/ready",
    response_model=Readiness,
    responses={400: PROBLEM, 503: PROBLEM},
    summary="The gateway can answer: started and not draining",
)
async def ready(request: Request, *, services: Services):
    # Readiness says whether this gateway can answer at all. A downstream that is down
    # (a shard, ranking, the feature store, event-ingest) makes answers degraded, never
    # the gateway unready: otherwise one dead shard would take every gateway pod out of
    # its Service and the whole API dark. The body still names what is down.
    if request.app.state.drain.draining:
        raise Problem(503, "draining: this gateway is shutting down", kind="not-ready", title="Not Ready")
    not_serving = await services.fleet.not_serving()
    return JSONBody({"status": "ready", "downstreams": len(services.fleet.downstreams()), "not_serving": not_serving})
