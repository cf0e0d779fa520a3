"""Operations endpoints (unauthenticated): liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..problems import Problem
from ..responses import JSONBody
from ..schemas import Liveness, Readiness
from .deps import PROBLEM, Services, reject_unknown_query

router = APIRouter(tags=["operations"], dependencies=[Depends(reject_unknown_query)])


@router.get("/healthz/live", response_model=Liveness, responses={400: PROBLEM}, summary="The process is up")
async def live():
    return JSONBody({"status": "live"})


@router.get(
    "/healthz/ready",
    response_model=Readiness,
    responses={400: PROBLEM, 503: PROBLEM},
    summary="Every downstream answers SERVING",
)
async def ready(*, services: Services):
    not_serving = await services.fleet.not_serving()
    # A canary that is down does not make the gateway unready: its users are served by
    # stable once the analysis or an operator sets its weight to 0.
    stable_down = [name for name in not_serving if not name.endswith(":canary")]
    if stable_down:
        raise Problem(
            503, f"not serving: {', '.join(not_serving)}", kind="not-ready", title="Not Ready", not_serving=not_serving
        )
    return JSONBody({"status": "ready", "downstreams": len(services.fleet.downstreams()), "not_serving": not_serving})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
async def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
