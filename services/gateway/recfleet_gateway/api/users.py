"""User profile, export and erasure; erasure receipts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path
from recfleet.features.v1 import features_pb2

from ..auth import Principal
from ..problems import Problem
from ..responses import JSONBody
from ..schemas import ID_PATTERN, ErasureReceipt, ProfileIn, ProfileOut, UserExport
from .catalog import call_feature_store
from .deps import COMMON_ERRORS, PROBLEM, Services, authorize

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
    reply = await call_feature_store(
        services, "PutUserProfile", features_pb2.PutUserProfileRequest(profile=message), user_id
    )
    # Constraints changed: cached lists may now break them.
    await services.cache.invalidate(user_id)
    return JSONBody(profile_out(reply.profile if reply.HasField("profile") else message))


async def user_events(pool, user_id: str) -> list[dict]:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT event_id::text, item_id, type, value, ts, context, received_at FROM events"
            " WHERE user_id = %s ORDER BY ts, event_id",
            (user_id,),
        )
        rows = await cur.fetchall()
    names = ("event_id", "item_id", "type", "value", "timestamp", "context", "received_at")
    return [dict(zip(names, row, strict=True)) for row in rows]


@router.get(
    "/v1/users/{user_id}/export",
    response_model=UserExport,
    responses={**COMMON_ERRORS, 503: PROBLEM},
    summary="Everything stored about a user",
)
async def export_user(
    *, user_id: UserPath, _: Annotated[Principal, Depends(authorize(ADMIN, user_from="user_id"))], services: Services
):
    reply = await call_feature_store(services, "ExportUser", features_pb2.ExportUserRequest(user_id=user_id), user_id)
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
    *, user_id: UserPath, _: Annotated[Principal, Depends(authorize(ADMIN, user_from="user_id"))], services: Services
):
    receipt = await services.erasures.request(user_id)
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
