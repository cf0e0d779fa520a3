"""User profile, export and erasure; erasure receipts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path
from recfleet.features.v1 import features_pb2

from ...adapters.events import user_events
from ...deps import COMMON_ERRORS, PROBLEM, Services, authorize
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..schemas import ErasureReceipt, ProfileIn, ProfileOut, UserExport
from .catalog import feature_store_write

router = APIRouter(tags=["users"])
ADMIN = "users:admin"
UserPath = Annotated[str, Path(pattern=ID_PATTERN)]


def profile_out(profile: features_pb2.UserProfile) -> dict:
    return {
        "user_id": profile.user_id,
        "preferred_categories": list(profile.preferred_categories),
        "blocked_categories": list(profile.blocked_categories),
        "liked_items": list(profile.liked_items),
        "age": profile.age or None,
        "country": profile.country or None,
    }


@router.put(
    "/v1/users/{user_id}/profile",
    response_model=ProfileOut,
    responses={**COMMON_ERRORS, 503: PROBLEM},
    summary="Onboarding preferences and constraints",
)
async def put_profile(
    *,
    user_id: UserPath,
    profile: ProfileIn,
    _: Annotated[Principal, Depends(authorize(ADMIN, user_from="user_id"))],
    services: Services,
):
    message = features_pb2.UserProfile(
        user_id=user_id,
        preferred_categories=profile.preferred_categories,
        blocked_categories=profile.blocked_categories,
        liked_items=profile.liked_items,
        age=profile.age or 0,
        country=profile.country or "",
    )
    client = services.fleet.feature_store.pick(services.fleet.router, user_id)
    reply = await feature_store_write(
        client.put_user_profile(
            features_pb2.PutUserProfileRequest(profile=message), timeout=services.settings.write_timeout
        )
    )
    # Constraints changed: cached lists may now break them.
    await services.cache.invalidate(user_id)
    return JSONBody(profile_out(reply.profile if reply.HasField("profile") else message))


@router.get(
    "/v1/users/{user_id}/export",
    response_model=UserExport,
    responses={**COMMON_ERRORS, 503: PROBLEM},
    summary="Everything stored about a user",
)
async def export_user(
    *, user_id: UserPath, _: Annotated[Principal, Depends(authorize(ADMIN, user_from="user_id"))], services: Services
):
    client = services.fleet.feature_store.pick(services.fleet.router, user_id)
    reply = await feature_store_write(
        client.export_user(features_pb2.ExportUserRequest(user_id=user_id), timeout=services.settings.write_timeout)
    )
    try:
        features = orjson.loads(reply.json) if reply.json else {}
    except orjson.JSONDecodeError:
        features = {"raw": reply.json}
    return JSONBody(
        {
            "user_id": user_id,
            "exported_at": datetime.now(UTC),
            "feature_store": features,
            "events": await user_events(services.pool, user_id),
        }
    )


@router.delete(
    "/v1/users/{user_id}",
    status_code=202,
    response_model=ErasureReceipt,
    responses={**COMMON_ERRORS},
    summary="Erase a user from every store",
)
async def erase_user(
    *,
    user_id: UserPath,
    principal: Annotated[Principal, Depends(authorize(ADMIN, user_from="user_id"))],
    services: Services,
):
    receipt = await services.erasures.request(user_id)
    await services.audit.record(principal, "user.erase", user_id, None, {"receipt_id": receipt["receipt_id"]})
    return JSONBody(receipt, status_code=202, headers={"Location": f"/v1/erasures/{receipt['receipt_id']}"})


@router.get(
    "/v1/erasures/{receipt_id}",
    response_model=ErasureReceipt,
    responses={**COMMON_ERRORS, 404: PROBLEM},
    summary="Status of an erasure",
)
async def get_erasure(
    *,
    receipt_id: Annotated[str, Path(pattern=ID_PATTERN)],
    _: Annotated[Principal, Depends(authorize(ADMIN))],
    services: Services,
):
    receipt = await services.erasures.get(receipt_id)
    if receipt is None:
        raise Problem(404, f"no erasure with receipt {receipt_id!r}")
    return JSONBody(receipt)
